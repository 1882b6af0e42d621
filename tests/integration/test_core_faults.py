"""Issue 2: what happens when things fail (receiver, listener, parent, buffer, input)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import mplog
from tests.helpers import ROOT, Receiver, env_with_root, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fast_handler(port: int, **kw: object) -> mplog.SocketHandler:
    h = mplog.SocketHandler("127.0.0.1", port, **kw)  # type: ignore[arg-type]
    h.retryStart, h.retryMax = 0.05, 0.3
    return h


def _invariant(p: mplog.Pipeline) -> dict:
    st = p.stats()
    assert st["received"] == st["handled"] == st["sent"] + st["buffered"] + st["dropped"], st
    return st


def log_range(tag: str, start: int, stop: int) -> None:
    log = logging.getLogger("faults")
    for i in range(start, stop):
        log.info("%s %d", tag, i, extra={"tag": tag, "i": i})


def _seq(receiver: Receiver, tag: str) -> list[int]:
    return [r["i"] for r in receiver.records() if r.get("tag") == tag]


def test_receiver_starts_3_s_late(tmp_path: pathlib.Path, start_pipeline) -> None:
    port = _free_port()
    p = start_pipeline([_fast_handler(port)])
    ctx = multiprocessing.get_context("fork")
    t0 = time.monotonic()
    workers = [ctx.Process(target=log_range, args=(f"w{k}", 0, 500)) for k in range(3)]
    for w in workers:
        w.start()
    log_range("main", 0, 500)
    for w in workers:
        w.join(30)
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))  # the scenario: a receiver 3 s late
    assert p.stats()["connected"] == 0
    receiver = Receiver(tmp_path, port)
    try:
        assert p.flush(30)
        receiver.wait_records(2000)
        for tag in ("main", "w0", "w1", "w2"):
            assert _seq(receiver, tag) == list(range(500))
        st = _invariant(p)
        assert st["dropped"] == 0 and st["reconnects"] >= 1 and st["sent"] == 2000
    finally:
        receiver.stop()


def test_receiver_killed_and_restarted_mid_stream(receiver: Receiver, start_pipeline) -> None:
    p = start_pipeline([_fast_handler(receiver.port)])
    log_range("s", 0, 1000)
    assert p.flush(20)
    receiver.wait_records(1000)
    receiver.kill()
    log_range("s", 1000, 2000)  # while the receiver is down
    wait_until(lambda: p.stats()["connected"] == 0, what="the sender to notice")
    receiver.start()
    assert p.flush(30)
    receiver.wait_records(2000)
    assert _seq(receiver, "s") == list(range(2000))
    st = _invariant(p)
    assert st["dropped"] == 0 and st["reconnects"] >= 1


@pytest.mark.parametrize(
    ("policy", "kept"),
    [("drop_oldest", range(150, 200)), ("drop_newest", range(0, 50)), ("block", range(0, 50))],
)
def test_overflow_policies(policy: str, kept: range, tmp_path: pathlib.Path, start_pipeline) -> None:
    port = _free_port()
    h = _fast_handler(port, buffer_records=50, overflow=policy, block_timeout=0.01)
    p = start_pipeline([h])
    log_range("o", 0, 200)
    wait_until(lambda: p.stats()["received"] == 200, what="200 records received")
    st = _invariant(p)
    assert st["dropped"] == 150 and st["buffered"] == 50
    receiver = Receiver(tmp_path, port)
    try:
        assert p.flush(30)
        recs = receiver.wait_records(51)
        assert recs[0]["name"] == "mplog" and recs[0]["levelname"] == "WARNING"
        assert "dropped 150 records" in recs[0]["msg"] and policy in recs[0]["msg"]
        assert _seq(receiver, "o") == list(kept)
        st = _invariant(p)
        assert st["sent"] == 50 and st["dropped"] == 150
    finally:
        receiver.stop()


def test_buffer_bytes_bound(tmp_path: pathlib.Path, start_pipeline) -> None:
    port = _free_port()
    p = start_pipeline([_fast_handler(port, buffer_bytes=20_000)])
    log_range("b", 0, 200)
    wait_until(lambda: p.stats()["received"] == 200, what="200 records received")
    st = _invariant(p)
    assert st["buffered_bytes"] <= 20_000 and st["dropped"] > 0
    assert st["buffered"] + st["dropped"] == 200


def keep_logging(address: str, stop_file: str) -> None:
    mplog.worker_init(address)
    i = 0
    while not os.path.exists(stop_file):
        log_range("bg", i, i + 1)
        i += 1
        time.sleep(0.002)  # a steady trickle, not a wait
    log_range("bg-done", 0, 1)


def test_listener_sigkilled_is_restarted(tmp_path: pathlib.Path, receiver: Receiver, start_pipeline) -> None:
    p = start_pipeline([_fast_handler(receiver.port)])
    stop_file = tmp_path / "stop"
    w = multiprocessing.get_context("spawn").Process(target=keep_logging, args=(p.address, str(stop_file)))
    w.start()
    try:
        receiver.wait_records(20, where=lambda r: r.get("tag") == "bg")
        old = p.pid
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: p.restarts == 1 and p.pid != old, what="the restart")
        assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
        log_range("after", 0, 100)
        assert p.flush(30)
        receiver.wait_records(100, where=lambda r: r.get("tag") == "after")
        assert _seq(receiver, "after") == list(range(100))
        stop_file.touch()
        w.join(30)
        assert w.exitcode == 0
        assert p.flush(30)
        receiver.wait_records(1, where=lambda r: r.get("tag") == "bg-done")
        assert p.stats()["restarts"] == 1
    finally:
        stop_file.touch()
        w.join(30)


def test_parent_sigkilled_listener_exits(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import logging, sys, threading
        import mplog
        if __name__ == "__main__":
            p = mplog.start([logging.NullHandler()])
            print(p.pid, flush=True)
            threading.Event().wait(120)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env_with_root(), cwd=ROOT)
    try:
        assert parent.stdout is not None
        listener = psutil.Process(int(parent.stdout.readline()))
        assert listener.is_running()
        parent.kill()
        parent.wait()
        t0 = time.monotonic()
        _gone, alive = psutil.wait_procs([listener], timeout=2.0)
        assert not alive, f"listener still alive {time.monotonic() - t0:.2f} s after its parent died"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout:
            parent.stdout.close()


class _Unpicklable:
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("not picklable")

    def __repr__(self) -> str:
        return "<Unpicklable>"


def test_exc_stack_and_odd_values(receiver: Receiver, start_pipeline) -> None:
    p = start_pipeline([_fast_handler(receiver.port)])
    log = logging.getLogger("faults")
    lock = threading.Lock()
    seen: list[dict] = []

    class Snapshot(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(dict(record.__dict__))
            return True

    snap = Snapshot()
    logging.getLogger().handlers[0].addFilter(snap)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.error("failed %s %s", _Unpicklable(), lock, exc_info=True, stack_info=True,
                      extra={"odd": _Unpicklable(), "nested": {"a": [1, {"b": None}]}, "lock": lock})
    finally:
        logging.getLogger().handlers[0].removeFilter(snap)
    assert p.flush(20)
    rec = receiver.wait_records(1, where=lambda r: r.get("name") == "faults")[0]
    assert rec["msg"] == f"failed <Unpicklable> {lock}"
    assert rec["args"] is None and rec["exc_info"] is None
    assert "Traceback (most recent call last)" in rec["exc_text"] and "ValueError: boom" in rec["exc_text"]
    assert rec["stack_info"].startswith("Stack (most recent call last)")
    assert rec["odd"] == "<Unpicklable>" and rec["lock"] == repr(lock)
    assert rec["nested"] == {"a": [1, {"b": None}]}
    assert rec["levelname"] == "ERROR" and rec["funcName"] == "test_exc_stack_and_odd_values"
    # The caller's record was not modified by the handler.
    assert len(seen) == 1 and seen[0]["exc_text"] is None and seen[0]["args"] is not None


def _boom() -> list[logging.Handler]:
    raise RuntimeError("factory exploded")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"handlers": [logging.NullHandler()], "bogus": 1}, "unknown option 'bogus'"),
        ({"handlers": [logging.NullHandler()], "address": "/nonexistent-dir/x.sock"}, "does not exist"),
        ({"handlers": [logging.NullHandler()], "address": "/tmp/" + "x" * 120}, "too long"),
        ({"handlers": _boom}, "factory exploded"),
        ({"handlers": ["not a handler"]}, "logging.Handler"),
        ({"handlers": [logging.NullHandler()], "start_method": "teleport"}, "start_method"),
    ],
)
def test_bad_configuration(kwargs: dict, match: str) -> None:
    handlers = kwargs.pop("handlers")
    with pytest.raises(mplog.ConfigError, match=match):
        mplog.start(handlers, install=False, **kwargs)


def test_address_in_use(start_pipeline) -> None:
    p = start_pipeline([logging.NullHandler()], install=False)
    with pytest.raises(mplog.ConfigError, match="already uses it"):
        mplog.start([logging.NullHandler()], address=p.address, install=False)


def test_worker_init_without_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPLOG_ADDRESS", raising=False)
    with pytest.raises(mplog.ConfigError, match=r"address=.*MPLOG_ADDRESS"):
        mplog.worker_init()


def test_worker_whose_listener_is_gone_does_not_hang(start_pipeline) -> None:
    p = start_pipeline([logging.NullHandler()])
    env = env_with_root()
    code = textwrap.dedent("""
        import logging, sys, time, mplog
        mplog.worker_init()
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        sys.stdin.readline()
        t = time.monotonic()
        for i in range(5):
            logging.getLogger("gone").warning("lost %d", i)
        print(round(time.monotonic() - t, 2))
    """)
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        p.stop()
        out, err = child.communicate("go\n", timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    assert float(out.strip()) < 5.0  # ~2 s for the first record of the outage, then fast
    lines = [ln for ln in err.splitlines() if ln.startswith("mplog:")]
    assert len(lines) == 5 and "lost 4" in lines[-1]
