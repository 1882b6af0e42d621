"""Children that multiprocessing starts with spawn or forkserver from a configured process
log into the pipeline with no initializer (the contract; forkserver is Python 3.14's
default), unless their own code configures the root logger; ``MPLOG_AUTOJOIN=0`` turns it
off. Each case is its own program (a fresh main module, forkserver started after start())."""

from __future__ import annotations

import collections
import pathlib
import subprocess
import sys

import pytest

from tests.helpers import ROOT, env_with_root

#: The worker functions live in a module other than __main__ (the usual layout).
WORKERS = '''
import logging, os

def work(i):
    logging.getLogger("child").info("info %d", i)
    logging.getLogger("child").debug("debug %d", i)
    return os.getpid()

def work_with_basic_config(args):
    i, path = args
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(filename=path, level=logging.INFO, format="own|%(message)s")
    logging.getLogger("child").info("own %d", i)
    return os.getpid()
'''

MAIN = '''
import concurrent.futures, logging, multiprocessing, sys
import mplog
import workers

if __name__ == "__main__":
    kind, out, own = sys.argv[1], sys.argv[2], sys.argv[3]
    h = logging.FileHandler(out)
    h.setFormatter(logging.Formatter("%(levelname)s|%(name)s|%(message)s|%(process)d"))
    with mplog.start([h], level=logging.INFO) as p:
        h.close()
        logging.getLogger("main").info("main")
        if kind == "executor-spawn":
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                pids = list(ex.map(workers.work, range(6)))
        elif kind == "multiprocess-spawn":
            import multiprocess
            with multiprocess.get_context("spawn").Pool(2) as pool:
                pids = pool.map(workers.work, range(6))
        elif kind.startswith("basic-config-"):
            with multiprocessing.get_context(kind.rsplit("-", 1)[1]).Pool(2) as pool:
                pids = pool.map(workers.work_with_basic_config, [(i, own) for i in range(6)])
        else:
            with multiprocessing.get_context(kind).Pool(2) as pool:
                pids = pool.map(workers.work, range(6))
        assert p.flush(10)
        print(len(set(pids)), flush=True)
'''


def _run(tmp_path: pathlib.Path, kind: str, **env_extra: str) -> tuple[list[str], list[str]]:
    (tmp_path / "workers.py").write_text(WORKERS)
    (tmp_path / "main.py").write_text(MAIN)
    out, own = tmp_path / "pipeline.log", tmp_path / "own.log"
    env = env_with_root()
    env.pop("MPLOG_ADDRESS", None)
    env.update(env_extra)
    run = subprocess.run(
        [sys.executable, str(tmp_path / "main.py"), kind, str(out), str(own)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = out.read_text().splitlines() if out.exists() else []
    own_lines = own.read_text().splitlines() if own.exists() else []
    return lines, own_lines


@pytest.mark.parametrize("kind", ["spawn", "forkserver", "fork", "executor-spawn", "multiprocess-spawn"])
def test_children_join_without_an_initializer(tmp_path: pathlib.Path, kind: str) -> None:
    lines, _ = _run(tmp_path, kind)
    child = sorted(ln.split("|")[2] for ln in lines if "|child|" in ln)
    assert child == [f"info {i}" for i in range(6)], lines  # INFO (the level start() set), no DEBUG
    assert all(ln.startswith("INFO|child|") for ln in lines if "|child|" in ln)
    [main] = [ln for ln in lines if "|main|" in ln]
    assert main.startswith("INFO|main|main|")
    procs = collections.Counter(ln.rsplit("|", 1)[1] for ln in lines if "|child|" in ln)
    assert main.rsplit("|", 1)[1] not in procs, procs  # logged by the workers themselves


@pytest.mark.parametrize("kind", ["spawn", "forkserver"])
def test_autojoin_off(tmp_path: pathlib.Path, kind: str) -> None:
    lines, _ = _run(tmp_path, kind, MPLOG_AUTOJOIN="0")
    assert [ln for ln in lines if "|child|" in ln] == [], lines
    assert [ln.rsplit("|", 1)[0] for ln in lines if "|main|" in ln] == ["INFO|main|main"]


@pytest.mark.parametrize("kind", ["basic-config-spawn", "basic-config-forkserver"])
def test_a_child_that_configures_logging_keeps_its_own_handler(tmp_path: pathlib.Path, kind: str) -> None:
    lines, own = _run(tmp_path, kind)
    assert sorted(own) == [f"own|own {i}" for i in range(6)], own
    assert [ln for ln in lines if "|child|" in ln] == [], lines  # not logged twice


def test_an_ordinary_process_with_the_address_is_left_alone(tmp_path: pathlib.Path) -> None:
    """Not a multiprocessing child (a plain subprocess): importing mplog changes nothing,
    even with MPLOG_ADDRESS in the environment."""
    code = (
        "import logging, sys\n"
        "before = (logging.lastResort, logging.getLogger().level, list(logging.getLogger().handlers))\n"
        "import mplog\n"
        "after = (logging.lastResort, logging.getLogger().level, list(logging.getLogger().handlers))\n"
        "sys.exit(0 if before == after else 1)\n"
    )
    env = env_with_root()
    env["MPLOG_ADDRESS"] = str(tmp_path / "intake.sock")
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=False)
    assert run.returncode == 0
