"""Packaging users trust: a lazy ``import mplog``, a clean wheel build (SPDX licence, LICENSE
inside, dependencies and URLs declared) that installs into a fresh venv without warnings."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import ROOT, env_with_root

#: What a process that only logs must not load (the collector, psutil, the wire codecs,
#: the pickler that ships handlers, the process starter).
HEAVY = ("mplog._collector", "psutil", "dill", "multiprocess", "mplog._wires.mplog",
         "mplog._wires.syslog", "mplog._wires.relp", "mplog._wires.jsonl", "prometheus_client")


def _modules_after(code: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        cwd=ROOT, env=env_with_root(), capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_import_mplog_loads_only_mplog() -> None:
    loaded = _modules_after("import mplog")
    assert [m for m in loaded if m.startswith("mplog")] == ["mplog"]
    assert not [m for m in HEAVY if m in loaded]


def test_a_worker_loads_what_it_needs() -> None:
    loaded = _modules_after(
        "import logging, mplog\n"
        "h = mplog.QueueHandler.__name__, mplog.ConfigError, mplog.ENV_ADDRESS"
    )
    assert "mplog.handlers" in loaded and "mplog._intake" in loaded
    assert not [m for m in HEAVY if m in loaded]


def test_public_names_resolve() -> None:
    import mplog

    for name in mplog.__all__:
        assert getattr(mplog, name) is not None, name
    assert set(mplog.__all__) <= set(dir(mplog))
    assert mplog.Collector.__module__ == "mplog._collector"
    assert issubclass(mplog.ConfigError, ValueError)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        mplog.nothing_here


def _source_copy(tmp: pathlib.Path) -> pathlib.Path:
    """The files a wheel is built from, copied: the build writes egg-info next to them."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mplog", src / "mplog", ignore=shutil.ignore_patterns("__pycache__"))
    return src


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, str]:
    import setuptools

    if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (77, 0):
        pytest.fail(f"setuptools {setuptools.__version__} is too old to build mplog (needs 77)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp)
    out = tmp / "dist"
    # --no-build-isolation: build offline with this venv's setuptools; -v: show what the
    # build backend prints (pip hides it otherwise), deprecation warnings included
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         str(src), "-w", str(out)],
        cwd=tmp, capture_output=True, text=True, timeout=300,
    )
    log = build.stdout + build.stderr
    assert build.returncode == 0, log
    (whl,) = out.glob("mplog-*.whl")
    return whl, log


def test_wheel_build_is_clean(wheel: tuple[pathlib.Path, str]) -> None:
    whl, log = wheel
    assert "deprecat" not in log.lower(), [line for line in log.splitlines() if "eprecat" in line]
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = z.read(meta_name).decode()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "mplog/py.typed" in names
    assert "License-Expression: MIT" in meta
    for dep in ("multiprocess", "psutil", "dill"):
        assert f"Requires-Dist: {dep}" in meta, dep
    for extra in ("metrics", "proctitle", "docs", "test"):
        assert f"Provides-Extra: {extra}" in meta, extra
    assert "Requires-Dist: prometheus_client>=0.17; extra == \"metrics\"" in meta
    assert "Project-URL: Source," in meta and "Project-URL: Documentation," in meta
    assert not [n for n in names if n.startswith("tests/")]


def test_wheel_installs_in_a_clean_venv(wheel: tuple[pathlib.Path, str], tmp_path: pathlib.Path) -> None:
    whl, _ = wheel
    deps = tmp_path / "deps"
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(deps),
         "multiprocess>=0.70.15", "psutil>=5.9", "dill>=0.3.8"],
        capture_output=True, text=True, timeout=300,
    )
    if got.returncode != 0:
        pytest.skip(f"the runtime dependencies cannot be fetched here: {got.stderr.strip()[-300:]}")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # this venv's pip installs into the clean one, offline: only the wheel and its deps
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index",
         "--find-links", str(deps), str(whl)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    assert "warning" not in (install.stdout + install.stderr).lower(), install.stdout + install.stderr
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    check = subprocess.run(
        [str(py), "-W", "error", "-c",
         "import mplog, sys; print(mplog.__file__); print(mplog.QueueHandler, mplog.Collector)"],
        cwd=tmp_path, env=clean_env, capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert check.stderr == ""
    assert str(venv) in check.stdout.splitlines()[0]  # the installed copy, not the checkout
    cli = subprocess.run([str(venv / "bin" / "mplog"), "--version"], env=clean_env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.strip() == "mplog 0.1.0"
