"""``mplog bench`` (issue 12), run as users run it: a subprocess, real workers, real receivers.

Every run carries a token in its environment; afterwards no live process may still have it
(the bench's workers, listeners, receivers, ``mplog serve`` and rsyslogd inherit it, and
orphans would not show up as children of the test).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import uuid

import psutil
import pytest

from mplog._bench import BEGIN_MARKER, END_MARKER, rsyslogd_path
from tests.helpers import ROOT, env_with_root, wait_until

SETUPS = ("mplog", "cookbook", "per-proc", "fmt-only")
NUM = r"[0-9][0-9,]*(?:\.[0-9]+)?"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _bench(*args: str, timeout: float = 200, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], str]:
    token = uuid.uuid4().hex
    env = dict(env or env_with_root())
    env["MPLOG_BENCH_TEST_TOKEN"] = token
    proc = subprocess.run(
        [sys.executable, "-m", "mplog", "bench", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    return proc, token


def _no_process_left(token: str) -> None:
    """No live process carries *token* (the forkserver notices its parent's exit a moment
    after it, so this waits a little)."""
    wait_until(lambda: not _left_behind(token), 15, f"no process left behind: {_left_behind(token)}")


def _left_behind(token: str) -> list[tuple[int, str]]:
    left = []
    for p in psutil.process_iter(["pid", "name", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get("MPLOG_BENCH_TEST_TOKEN") == token:
                left.append((p.pid, " ".join(p.cmdline())[:120]))
        except psutil.Error:
            continue
    return left


def _table_rows(md: str, heading: str) -> list[list[str]]:
    """The body rows of the first table after *heading*, split into cells."""
    after = md[md.index(heading):]
    rows = []
    started = False
    for line in after.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif started:
            break
    return rows[2:]  # header and separator


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_reports_every_setup_keeps_hand_written_text_and_leaves_nothing(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.md"
    out.write_text(f"# Hand-written\n\nkept above\n\n{BEGIN_MARKER}\nold results\n{END_MARKER}\n\nkept below\n")
    png = tmp_path / "bench.png"
    args = ["--quick", "--out", str(out)] + (["--plot", str(png)] if HAVE_MATPLOTLIB else [])
    proc, token = _bench(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    _no_process_left(token)
    # Progress: plain lines (stderr is not a tty), "[k/m] setup ..." then its result.
    assert re.search(r"^\[1/\d+\] mplog, N=4, 8,000 records \.\.\.$", proc.stderr, re.M), proc.stderr
    assert re.search(r"^\[4/\d+\] fmt-only, N=4, .*: worker " + NUM + " µs/call", proc.stderr, re.M)

    md = out.read_text()
    assert md.startswith("# Hand-written\n\nkept above\n\n" + BEGIN_MARKER)
    assert md.rstrip().endswith("kept below")
    assert "old results" not in md
    assert md.count(BEGIN_MARKER) == 1 and md.count(END_MARKER) == 1
    assert "`mplog bench --quick --out" in md
    assert f"Python {sys.version.split()[0]}" in md.replace("CPython ", "Python ")
    assert f"{os.cpu_count()} CPUs" in md

    rows = _table_rows(md, "### Side by side")
    assert [(r[0], r[1]) for r in rows] == [(s, "4") for s in SETUPS]
    for setup, _n, rate, worker, system, total, listener, rss, conns in rows:
        assert re.fullmatch(NUM, worker) and re.fullmatch(NUM, total), (setup, rows)
        assert float(worker) > 0 and float(total) >= float(worker)
        assert re.fullmatch(NUM, system) and float(system) <= float(worker), (setup, rows)
        if setup == "fmt-only":
            assert (rate, listener, rss, conns) == ("-", "-", "-", "0")
        else:
            assert re.fullmatch(NUM, rate) and float(rate.replace(",", "")) > 0, (setup, rate)
        if setup in ("mplog", "cookbook"):
            assert re.fullmatch(NUM, listener) and re.fullmatch(NUM + " MiB", rss), (setup, rss)
        expected_conns = {"mplog": "1", "cookbook": "1", "per-proc": "4"}.get(setup)
        if expected_conns:
            assert conns == expected_conns, (setup, conns)

    ratios = _table_rows(md, "### Ratios against the goals")
    assert [r[1] for r in ratios] == [
        "throughput, mplog / per-process SocketHandler",
        "throughput, mplog / cookbook",
        "total CPU per record, mplog / per-process",
        "worker CPU per call, mplog / fmt-only floor",
        "worker CPU per call outside the kernel, mplog / fmt-only floor",
        "mplog listener peak RSS",
    ]
    for n, _what, goal, measured, verdict in ratios:
        assert n == "4" and goal
        assert re.fullmatch(NUM + "(\N{MULTIPLICATION SIGN}| MiB)", measured), ratios
        # A context row is no goal: it has no verdict.
        assert verdict == "" if goal == "(context)" else verdict in ("met", "**missed**")

    coll = _table_rows(md, "### The collector")
    wires = [r[1] for r in coll]
    assert [w for w in wires if "mplog" in w or "stdlib" in w] == [
        "mplog (acks, de-duplication), HMAC off",
        "mplog (acks, de-duplication), HMAC on",
        "stdlib SocketHandler (pickle)",
    ]
    assert any(r[0].startswith("rsyslog") for r in coll) == (rsyslogd_path() is not None)
    for _receiver, _wire, size, rate, spread, cpu in coll:
        assert int(size) > 400, coll  # pre-built frames of one ~500-byte record
        assert re.fullmatch(NUM, rate) and re.fullmatch(NUM + "-" + NUM, spread) and re.fullmatch(NUM, cpu), coll

    if HAVE_MATPLOTLIB:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5000


def test_failed_setups_show_as_failed_exit_1_and_leave_nothing(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.md"
    proc, token = _bench("--quick", "--no-collector", "--timeout", "0.01", "--out", str(out), timeout=100)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    _no_process_left(token)
    rows = _table_rows(out.read_text(), "### Side by side")
    assert [r[0] for r in rows] == list(SETUPS)
    for r in rows:
        assert r[2].startswith("failed: timed out"), rows
    ratios = _table_rows(out.read_text(), "### Ratios against the goals")
    assert all(r[3] == "-" and r[4].startswith("not measured: ") for r in ratios), ratios
    assert "The collector part was not run (`--no-collector`)." in out.read_text()


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_mid_run_leaves_nothing(tmp_path: pathlib.Path, sig: signal.Signals) -> None:
    token = uuid.uuid4().hex
    env = env_with_root()
    env["MPLOG_BENCH_TEST_TOKEN"] = token
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mplog", "bench", "--no-collector", "--sizes", "16",
             "--records", "2000000", "--out", str(tmp_path / "bench.md")],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        # Mid-run: the first setup's 16 workers, its listener and its receiver are up.
        wait_until(lambda: len(_left_behind(token)) >= 18, 120, "the first setup's processes")
        assert "[1/12] mplog, N=16" in err.read_text()  # 4 setups x 3 rounds
        proc.send_signal(sig)
        rc = proc.wait(60)
    finally:
        proc.kill()
        proc.wait()
    assert rc == (143 if sig == signal.SIGTERM else -signal.SIGKILL), err.read_text()[-2000:]
    _no_process_left(token)
    assert "Traceback" not in err.read_text()
    assert not (tmp_path / "bench.md").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--sizes", "4,0"], "must be at least 1"),
        (["--records", "many"], "not a whole number"),
        (["--timeout", "-1"], "--timeout must be a positive number"),
        (["--sizes", "2000"], "worker counts must be 1-1024"),
        (["--sizes", "8", "--records", "4"], "fewer than one per worker"),
        (["--rounds", "21"], "--rounds must be 1-20"),
        (["--rounds", "0"], "must be at least 1"),
        (["--out", "/nonexistent-dir/x.md"], "does not exist"),
        (["--plot", "/nonexistent-dir/x.png"], "does not exist"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: list[str], says: str) -> None:
    proc, token = _bench(*args, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    # argparse prints its usage (maybe wrapped) above the one error line
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
    assert len(lines) == 1 and says in lines[0], proc.stderr
    assert proc.stdout == ""
    _no_process_left(token)


def test_one_marker_only_is_refused(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "doc.md"
    out.write_text(f"# doc\n{BEGIN_MARKER}\nno end marker\n")
    proc, _ = _bench("--out", str(out), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mplog bench: --out {out} has only one of the two mplog bench markers"]
    assert out.read_text() == f"# doc\n{BEGIN_MARKER}\nno end marker\n"


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path: pathlib.Path) -> None:
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib is hidden by this test')\n")
    env = env_with_root()
    env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), env["PYTHONPATH"]])
    proc, _ = _bench("--quick", "--plot", str(tmp_path / "x.png"), env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mplog bench: --plot needs matplotlib: pip install 'mplog[plot]'"]
    assert not (tmp_path / "x.png").exists()


def test_help_lists_the_options() -> None:
    proc, _ = _bench("--help", timeout=60)
    assert proc.returncode == 0
    for opt in ("--quick", "--out FILE.md", "--plot FILE.png", "--no-collector", "--rounds R"):
        assert opt in proc.stdout


def test_the_old_script_is_the_same_program() -> None:
    proc = subprocess.run([sys.executable, "benchmarks/bench_pipeline.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: mplog bench ")
    bad = subprocess.run([sys.executable, "benchmarks/bench_pipeline.py", "--sizes", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be at least 1" in bad.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rounds_interleave_the_setups_and_report_medians_and_ranges(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "bench.md"
    proc, token = _bench("--quick", "--no-collector", "--rounds", "2", "--records", "2000",
                         "--out", str(out), "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _no_process_left(token)
    # Every setup twice; round 2 starts with the second setup (the order rotates).
    begun = re.findall(r"^\[\d+/8\] (\S+), N=4, 2,000 records, round (\d)/2 \.\.\.$",
                       proc.stderr, re.M)
    assert begun == [(s, "1") for s in SETUPS] + [(s, "2") for s in SETUPS[1:] + SETUPS[:1]], proc.stderr
    md = out.read_text()
    assert "2 rounds, the setups' order rotated each round" in md
    data = json.loads((tmp_path / "b.json").read_text())
    assert len(data["pipeline_rounds"]) == 8 and len(data["pipeline"]) == 4
    rows = {r[0]: r for r in _table_rows(md, "### Side by side")}
    for r in data["pipeline"]:  # the table shows the medians of the two rounds
        two = [x for x in data["pipeline_rounds"] if x["setup"] == r["setup"]]
        mid = (two[0]["worker_us"] + two[1]["worker_us"]) / 2
        assert abs(r["worker_us"] - mid) < 1e-9
        assert rows[r["setup"]][3] == f"{mid:.2f}"
        # The worker's system time is a part of its CPU time, for every setup.
        assert 0 <= r["worker_sys_us"] <= r["worker_us"], r
        assert rows[r["setup"]][4] == f"{r['worker_sys_us']:.2f}"
    ratios = _table_rows(md, "### Ratios against the goals")
    for _n, what, _goal, measured, _verdict in ratios:
        if "RSS" in what:
            continue
        m = re.fullmatch(f"({NUM})\u00d7 \\(({NUM})-({NUM})\\)", measured)
        assert m, measured
        mid, lo, hi = (float(x) for x in m.groups())
        assert lo <= mid <= hi
