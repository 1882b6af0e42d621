"""The disk spool end to end: a listener SIGKILLed, a whole program SIGKILLed and run
again, a damaged spool file, a full spool. Real processes, real sockets, real files.

The receiver is down while records pile up in the spool; it comes back on the same port
afterwards. With ``wire="mplog"`` the collector's output must hold every record exactly
once, in order per process: the spool keeps its sender id and the sequence numbers keep
growing across restarts (``epoch << 40 | n``), so whatever is replayed twice is dropped by
the collector's de-duplication.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pathlib
import signal
import subprocess
import sys
from typing import Any

import mplog
from tests.helpers import ROOT, Receiver, Serve, env_with_root, wait_until

LOGGER = "spool.test"


def _handler(port: int, spool: pathlib.Path, **kw: Any) -> mplog.SocketHandler:
    h = mplog.SocketHandler("127.0.0.1", port, spool_dir=str(spool), **kw)
    h.retryStart, h.retryMax = 0.05, 0.3
    return h


def _log(tag: str, n: int) -> None:
    log = logging.getLogger(LOGGER)
    for i in range(n):
        log.info("%s %d", tag, i, extra={"tag": tag, "i": i})


def _worker(address: str, tag: str, n: int) -> None:
    mplog.worker_init(address)
    _log(tag, n)


def _by_tag(lines: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in lines:
        if r.get("name") == LOGGER:
            out.setdefault(r["tag"], []).append(r["i"])
    return out


def _down_serve(tmp: pathlib.Path) -> Serve:
    """A collector that ran once (so its port is known) and is now down."""
    srv = Serve(tmp / "out.jsonl")
    srv.kill()
    return srv


def test_listener_sigkilled_with_a_spool_loses_nothing(tmp_path: pathlib.Path, start_pipeline) -> None:
    srv = _down_serve(tmp_path)
    try:
        p = start_pipeline([_handler(srv.port, tmp_path / "spool", wire="mplog", spool_mode="all")])
        ctx = multiprocessing.get_context("spawn")
        workers = [ctx.Process(target=_worker, args=(p.address, f"w{k}", 1500)) for k in range(2)]
        for w in workers:
            w.start()
        _log("main", 1000)
        for w in workers:
            w.join(60)
            assert w.exitcode == 0
        total = 4000
        wait_until(lambda: p.stats()["spooled"] == total, 30, f"{total} records in the spool")
        old = p.pid
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: p.restarts == 1 and p.pid != old, 30, "the listener to be restarted")
        st = p.stats()
        assert st["spooled"] == total and st["spool_damaged"] == 0, st  # replayed from disk
        srv.start()
        wait_until(lambda: srv.count() >= total, 60, "every spooled record at the collector")
        assert p.flush(20)
        got = _by_tag(srv.lines())
        assert got == {"main": list(range(1000)), "w0": list(range(1500)), "w1": list(range(1500))}
        st = p.stats()
        assert st["sent"] == total and st["spooled"] == 0 and st["dropped"] == 0, st
        assert not [f for f in (tmp_path / "spool").glob("*.seg") if f.stat().st_size > 16], "segments left"
    finally:
        srv.stop()


PROGRAM = """
import logging, sys, time
import mplog


def main() -> None:
    port, spool, tag, n, wait_spooled = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    h = mplog.SocketHandler("127.0.0.1", port, wire="mplog", spool_dir=spool, spool_mode="all")
    h.retryStart, h.retryMax = 0.05, 0.3
    p = mplog.start([h])
    log = logging.getLogger("spool.test")
    for i in range(n):
        log.info("%s %d", tag, i, extra={"tag": tag, "i": i})
    if wait_spooled:
        deadline = time.monotonic() + 30
        while p.stats()["spooled"] < n and time.monotonic() < deadline:
            time.sleep(0.01)
        print("spooled", p.stats()["spooled"], flush=True)
        time.sleep(600)  # the test SIGKILLs this whole program now
    else:
        assert p.flush(30), p.stats()
        print("flushed", p.stats()["sent"], flush=True)
        p.stop()


if __name__ == "__main__":
    main()
"""


def test_whole_program_sigkilled_then_run_again(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    spool = tmp_path / "spool"
    srv = _down_serve(tmp_path)
    try:
        first = subprocess.Popen(
            [sys.executable, str(script), str(srv.port), str(spool), "run1", "3000", "1"],
            cwd=ROOT, env=env_with_root(), stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            assert first.stdout is not None
            assert first.stdout.readline().split() == ["spooled", "3000"]
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the program and its listener, at once
            first.wait()
            assert first.stdout is not None
            first.stdout.close()
        srv.start()
        second = subprocess.run(
            [sys.executable, str(script), str(srv.port), str(spool), "run2", "500", "0"],
            cwd=ROOT, env=env_with_root(), capture_output=True, text=True, timeout=90,
        )
        assert second.returncode == 0, second.stderr
        # run2 counts as sent what it delivered: the 3000 left by run1, then its own 500.
        assert second.stdout.split() == ["flushed", "3500"], second.stdout
        got = _by_tag(srv.lines())
        assert got == {"run1": list(range(3000)), "run2": list(range(500))}
    finally:
        srv.stop()


def test_damaged_spool_file_delivers_every_intact_record(tmp_path: pathlib.Path, start_pipeline) -> None:
    spool = tmp_path / "spool"
    receiver = Receiver(tmp_path)  # learn a free port, then free it
    port = receiver.port
    receiver.kill()
    p = mplog.start([_handler(port, spool, spool_mode="all")])
    try:
        _log("r", 200)
        wait_until(lambda: p.stats()["spooled"] == 200, 30, "200 records in the spool")
    finally:
        p.stop(timeout=0.5)  # receiver down: the records stay on disk
    assert p.stats()["spooled"] == 200 and p.stats()["dropped"] == 0
    seg = max(spool.glob("*.seg"))
    data = bytearray(seg.read_bytes())
    flip = data.index(b"r 57")
    data[flip + 1] ^= 0xFF  # a flipped byte inside record 57
    tear = data.index(b"r 199")
    seg.write_bytes(bytes(data[: tear + 2]))  # the last record torn mid-way
    receiver.start()
    try:
        p2 = start_pipeline([_handler(port, spool, spool_mode="all")])
        recs = receiver.wait_records(198, 30, where=lambda r: r.get("tag") == "r")
        assert [r["i"] for r in recs] == [i for i in range(199) if i != 57]
        assert p2.flush(10)
        st = p2.stats()
        assert st["spool_damaged"] == 2 and st["sent"] == 198 and st["spooled"] == 0, st
        _log("after", 10)  # the repaired spool keeps working
        assert [r["i"] for r in receiver.wait_records(10, 20, where=lambda r: r.get("tag") == "after")] == list(range(10))
    finally:
        receiver.stop()


def test_full_spool_applies_the_overflow_policy_and_counts(tmp_path: pathlib.Path, start_pipeline) -> None:
    receiver = Receiver(tmp_path)
    port = receiver.port
    receiver.kill()
    p = start_pipeline([_handler(port, tmp_path / "spool", buffer_records=50,
                                 spool_max_bytes=128 * 1024, overflow="drop_newest")])
    _log("r", 3000)
    st = wait_until(lambda: (s := p.stats())["handled"] == 3000 and s, 30, "3000 records handled")
    kept = st["buffered"]
    assert st["dropped"] > 0 and kept + st["dropped"] == 3000, st
    assert st["spool_bytes"] <= 128 * 1024 and st["spooled"] == kept - 50, st
    receiver.start()
    recs = receiver.wait_records(kept, 30, where=lambda r: r.get("tag") == "r")
    assert [r["i"] for r in recs] == list(range(kept))  # drop_newest: the first ones kept
    warn = receiver.wait_records(1, 20, where=lambda r: r["name"] == "mplog")
    assert str(st["dropped"]) in warn[0]["msg"], warn[0]["msg"]
    receiver.stop()


def test_standalone_handler_with_a_spool_in_use_counts_and_reports(tmp_path: pathlib.Path, capsys) -> None:
    from mplog._spool import Spool

    holder = Spool(str(tmp_path / "spool"), 1 << 20)  # another user holds the directory
    h = mplog.SocketHandler("127.0.0.1", 9, spool_dir=str(tmp_path / "spool"))
    try:
        h.emit(logging.makeLogRecord({"name": LOGGER, "msg": "m"}))  # never raises
        assert h.stats()["dropped"] == 1
        assert "is in use by another mplog handler" in capsys.readouterr().err
    finally:
        h.close()
        holder.close()
