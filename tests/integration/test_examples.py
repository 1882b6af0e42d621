"""The runnable examples of examples/ (pools, subprocess chain, dictConfig), each run as
its own program against a real receiver: every record arrives, over one connection."""

from __future__ import annotations

import collections
import pathlib
import re
import subprocess
import sys

from tests.helpers import ROOT, Receiver, env_with_root


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env_with_root(),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    return run


def test_every_pool_kind(receiver: Receiver) -> None:
    _run("examples/pools.py", "--port", str(receiver.port), "--tasks", "25")
    recs = receiver.wait_records(101, 30, where=lambda r: r["name"] == "examples.pools")
    count = collections.Counter(r["pool"] for r in recs)
    assert count == {"multiprocessing": 25, "executor": 25, "multiprocess": 25, "billiard": 25, "main": 1}
    for pool in ("multiprocessing", "executor", "multiprocess", "billiard"):
        assert sorted(r["i"] for r in recs if r["pool"] == pool) == list(range(25))
        assert len({r["process"] for r in recs if r["pool"] == pool}) >= 1
    assert receiver.connections() == 1


def test_subprocess_chain_three_levels_deep(receiver: Receiver) -> None:
    _run("examples/subprocess_chain.py", "--port", str(receiver.port), "--depth", "3")
    recs = receiver.wait_records(4, 30, where=lambda r: r["name"] == "examples.chain")
    assert sorted(r["level"] for r in recs) == [0, 1, 2, 3]
    assert len({r["process"] for r in recs}) == 4  # four different programs
    assert receiver.connections() == 1


def test_dictconfig_worker_and_listener(receiver: Receiver, tmp_path: pathlib.Path) -> None:
    logfile = tmp_path / "app.log"
    _run("examples/dictconfig.py", "--port", str(receiver.port), "--file", str(logfile), "--workers", "3")
    recs = receiver.wait_records(6, 30, where=lambda r: r["name"] == "examples.dictconfig")
    # The collector handler has no level: DEBUG and INFO from each of the 3 workers.
    assert sorted((r["i"], r["levelname"]) for r in recs) == [
        (i, lvl) for i in range(3) for lvl in ("DEBUG", "INFO")
    ]
    # The file handler was built as declared: its level (INFO) and its format.
    lines = logfile.read_text().splitlines()
    got = [re.fullmatch(r"INFO SpawnProcess-\d+ examples\.dictconfig: worker (\d): info", ln) for ln in lines]
    assert all(got) and sorted(int(m.group(1)) for m in got if m) == [0, 1, 2], lines
    assert receiver.connections() == 1


def test_pools_default_mode_prints_every_record_on_stderr() -> None:
    """The default mode ships a StreamHandler(sys.stderr) instance: the first program most
    users write (it used to deadlock the listener)."""
    run = _run("examples/pools.py", "--tasks", "5")
    lines = [ln for ln in run.stderr.splitlines() if " examples.pools: " in ln]
    count = collections.Counter(ln.rsplit(": ", 1)[1].split(" task ")[0] for ln in lines if " task " in ln)
    assert count == {"multiprocessing": 5, "executor": 5, "multiprocess": 5, "billiard": 5}, run.stderr
    assert any(ln.endswith(": done") for ln in lines), run.stderr


def test_subprocess_chain_default_mode_prints_every_level_on_stderr() -> None:
    run = _run("examples/subprocess_chain.py", "--depth", "2")
    got = sorted(int(m.group(1)) for m in re.finditer(r"^hello from level (\d), pid \d+$", run.stderr, re.M))
    assert got == [0, 1, 2], run.stderr
