# Shared by scripts/demo and scripts/test: find Python 3.11+ and make .venv on first use.
set -eu
cd "$(dirname "$0")/.."

find_python() {
    # $1: a minor version such as 3.11; prints a matching interpreter, or nothing.
    for cand in "python$1" "$HOME/.pyenv/versions/$1"*/bin/python3 /usr/local/bin/python"$1" /usr/bin/python"$1"; do
        for exe in $cand; do
            if command -v "$exe" >/dev/null 2>&1 && "$exe" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$1'.split('.'))))" 2>/dev/null; then
                command -v "$exe"; return 0
            fi
        done
    done
    return 0
}

ensure_venv() {
    # $1: venv dir, $2: python minor version, $3: pip install target
    venv=$1
    if [ ! -x "$venv/bin/python" ]; then
        py=$(find_python "$2")
        if [ -z "$py" ]; then
            py=$(command -v python3)
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
                echo "mplog needs Python 3.11 or newer; none found" >&2; exit 1; }
        fi
        echo "setting up $venv with $py" >&2
        "$py" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip >&2
    fi
    stamp="$venv/.installed-$(cat pyproject.toml | cksum | cut -d' ' -f1)-$3"
    if [ ! -e "$stamp" ]; then
        "$venv/bin/python" -m pip install -q -e "$3" >&2
        touch "$stamp"
    fi
}
