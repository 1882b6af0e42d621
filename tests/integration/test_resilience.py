"""Resilience, end to end: outages, restarts, overflow, crashes, odd records, bad setups.

Everything here runs real processes and real sockets: the stdlib-wire receiver of
``tests/receiver.py`` (killed and restarted on the same port), the mplog listener (SIGKILLed
and restarted by its supervisor), a parent process SIGKILLed under its listener, and worker
processes that keep logging through it all. Each socket handler retries fast
(``retryStart`` 0.05 s, ``retryMax`` 0.3 s) so every scenario ends in a few seconds.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil
import pytest

import mplog
from mplog._intake import ORPHAN_CLOSE_TIMEOUT
from mplog._listener import ORPHAN_MARGIN
from tests.helpers import ROOT, Receiver, env_with_root, wait_until

LOGGER = "resilience"


# -- helpers ------------------------------------------------------------------------------


def _free_port() -> int:
    """A TCP port nobody listens on (yet): bound to port 0, read, released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _handler(port: int, **kw: Any) -> mplog.SocketHandler:
    h = mplog.SocketHandler("127.0.0.1", port, **kw)
    h.retryStart, h.retryMax = 0.05, 0.3  # shipped to the listener with the handler
    return h


def _log(tag: str, start: int, stop: int, *, width: int = 0) -> None:
    log = logging.getLogger(LOGGER)
    for i in range(start, stop):
        log.info("%s %0*d", tag, width, i, extra={"tag": tag, "i": i})


def _seq(records: list[dict[str, Any]], tag: str) -> list[int]:
    return [r["i"] for r in records if r.get("tag") == tag]


def _in_order_but_one_replay(seq: list[int], tag: str) -> None:
    """*seq* is in order, except that one block may come twice: records the listener
    handled in the moment between handling them and acknowledging them, when it was
    killed, are written again by their worker (docs/architecture.md says so). On an
    overloaded machine that moment can last a hundred milliseconds of a trickle. Anything
    else (a second replay, a record out of order, an acknowledged record resent) fails."""
    back = [k for k in range(1, len(seq)) if seq[k] <= seq[k - 1]]
    assert len(back) <= 1, f"{tag}: more than one replay or out of order at {back[:5]}"
    parts = [seq[: back[0]], seq[back[0] :]] if back else [seq]
    for part in parts:
        assert part == sorted(set(part)), f"{tag}: duplicated or out of order"
    if back:
        before, after = parts
        assert after[0] in before, f"{tag}: the replay starts at a record never delivered"


def _ours(receiver: Receiver) -> list[dict[str, Any]]:
    return [r for r in receiver.records() if r["name"] == LOGGER]


def _invariant(p: mplog.Pipeline, *, worker_losses_allowed: bool = False) -> dict[str, Any]:
    """The contract's quiet-moment invariant for a pipeline with one SocketHandler.

    ``dropped`` also counts records lost before the listener ever had them (a worker that
    could not reach it, a frame torn by a dying worker); those were never ``received``, so
    they are taken out of the handler's side of the equation where the scenario allows them.
    """
    st = p.stats()
    dropped = st["dropped"]
    if worker_losses_allowed:
        dropped -= st["worker_lost"] + st["torn_frames"]
    else:
        assert st["worker_lost"] == 0 and st["torn_frames"] == 0, st
    assert st["received"] == st["handled"] == st["sent"] + st["buffered"] + dropped, st
    assert st["bad_frames"] == 0 and st["handler_errors"] == 0, st
    return st


def _paced(address: str, tag: str, n: int, seconds: float) -> None:
    """A worker: *n* numbered records spread over *seconds* (the load pattern, not a wait)."""
    mplog.worker_init(address)
    log = logging.getLogger(LOGGER)
    t0 = time.monotonic()
    for i in range(n):
        log.info("%s %d", tag, i, extra={"tag": tag, "i": i})
        time.sleep(max(0.0, t0 + (i + 1) * seconds / n - time.monotonic()))


# -- 1. a receiver that starts 3 s late -----------------------------------------------------


def test_receiver_starts_3_s_after_logging_began(tmp_path: pathlib.Path, start_pipeline) -> None:
    port = _free_port()
    p = start_pipeline([_handler(port)])
    t0 = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_paced, args=(p.address, f"w{k}", 300, 1.5)) for k in range(3)]
    for w in workers:
        w.start()
    _log("main", 0, 300)
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))  # the scenario: the receiver is 3 s late
    wait_until(lambda: p.stats()["received"] == 1200, 20, "1200 records at the listener")
    st = _invariant(p)
    # Everything logged so far is waiting in the buffer; nothing was written anywhere.
    assert st["buffered"] == 1200 and st["sent"] == 0 and st["connected"] == 0, st
    assert st["reconnects"] == 0, st
    receiver = Receiver(tmp_path, port)
    try:
        # Nobody logs from here on: the sender's own back-off timer makes the connection.
        receiver.wait_records(1200, 10)
        assert p.flush(10)
        recs = receiver.records()
        assert len(recs) == 1200, "duplicates or extra records"
        for tag in ("main", "w0", "w1", "w2"):
            assert _seq(recs, tag) == list(range(300)), f"{tag}: lost, duplicated or out of order"
        assert not [r for r in recs if r["name"] == "mplog"], "a drop report, but nothing was dropped"
        st = _invariant(p)
        assert st["dropped"] == 0 and st["sent"] == 1200 and st["buffered"] == 0, st
        assert st["reconnects"] >= 1 and st["connected"] == 1, st
        assert receiver.connections() == 1  # one connection for four processes
    finally:
        receiver.stop()


# -- 2. the receiver SIGKILLed and restarted mid-stream --------------------------------------


@pytest.mark.parametrize("wait_for_probe", [True, False], ids=["idle-probe", "pre-write-check"])
def test_receiver_killed_and_restarted(receiver: Receiver, start_pipeline, wait_for_probe: bool) -> None:
    p = start_pipeline([_handler(receiver.port)])
    _log("s", 0, 500)
    assert p.flush(10)
    receiver.wait_records(500, 10)
    receiver.kill()  # SIGKILL, and waits until it is dead
    if wait_for_probe:
        # The idle connection is probed and found closed before anything else is logged.
        wait_until(lambda: p.stats()["connected"] == 0, 10, "the sender to notice the closed peer")
    # Else the records of phase 2 reach the sender while it still holds the dead connection:
    # it must see the closed peer before writing (a write would "succeed" and be lost).
    _log("s", 500, 1000)
    wait_until(
        lambda: (s := p.stats())["received"] == 1000 and s["connected"] == 0,
        10,
        "phase 2 at the listener, the sender disconnected",
    )
    st = _invariant(p)
    assert st["sent"] == 500 and st["buffered"] == 500 and st["dropped"] == 0, st
    receiver.start()  # same port, same output file
    assert p.flush(10)
    recs = receiver.wait_records(1000, 10)
    assert len(recs) == 1000, "duplicates or extra records"
    assert _seq(recs, "s") == list(range(1000))
    st = _invariant(p)
    assert st["dropped"] == 0 and st["sent"] == 1000 and st["buffered"] == 0, st
    assert st["reconnects"] == 1 and st["connected"] == 1, st
    assert receiver.connections() == 2


# -- 3. buffer overflow while the receiver is down --------------------------------------------

N_BUF = 20
M_LOG = 30


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        ("drop_oldest", range(M_LOG - N_BUF, M_LOG)),
        ("drop_newest", range(N_BUF)),
        ("block", range(N_BUF)),  # nobody makes room: each late record waits, then is dropped
    ],
)
def test_overflow_policy(policy: str, kept: range, tmp_path: pathlib.Path, start_pipeline) -> None:
    port = _free_port()
    p = start_pipeline([_handler(port, buffer_records=N_BUF, overflow=policy, block_timeout=0.2)])
    t0 = time.monotonic()
    _log("o", 0, M_LOG)
    wait_until(lambda: p.stats()["received"] == M_LOG, 20, f"{M_LOG} records at the listener")
    if policy == "block":
        # Each of the 10 records that found no room waited block_timeout (0.2 s) first.
        assert time.monotonic() - t0 >= (M_LOG - N_BUF) * 0.2 * 0.9
    st = _invariant(p)
    assert st["dropped"] == M_LOG - N_BUF and st["buffered"] == N_BUF and st["sent"] == 0, st
    receiver = Receiver(tmp_path, port)
    try:
        assert p.flush(10)
        receiver.wait_records(N_BUF + 1, 10)
        events = receiver.events()
        assert [e["event"] for e in events] == ["connect"] + ["record"] * (N_BUF + 1)
        report = events[1]  # the first thing on the new connection
        assert report["name"] == "mplog" and report["levelname"] == "WARNING", report
        assert f"dropped {M_LOG - N_BUF} records" in report["msg"] and policy in report["msg"], report
        assert report["mplog_dropped"] == M_LOG - N_BUF, report
        assert _seq(events[2:], "o") == list(kept)
        st = _invariant(p)
        assert st["sent"] == N_BUF and st["dropped"] == M_LOG - N_BUF and st["buffered"] == 0, st
        assert st["drop_reports"] == 1, st
    finally:
        receiver.stop()


def test_block_waits_for_room_when_the_receiver_comes_back(tmp_path: pathlib.Path, start_pipeline) -> None:
    port = _free_port()
    p = start_pipeline([_handler(port, buffer_records=N_BUF, overflow="block", block_timeout=10.0)])
    _log("b", 0, 3 * N_BUF)  # the listener blocks on record N_BUF + 1 (this process does not)
    receiver = Receiver(tmp_path, port)
    try:
        assert p.flush(15)
        recs = receiver.wait_records(3 * N_BUF, 10)
        assert len(recs) == 3 * N_BUF
        assert _seq(recs, "b") == list(range(3 * N_BUF))
        st = _invariant(p)
        assert st["dropped"] == 0 and st["sent"] == 3 * N_BUF, st
    finally:
        receiver.stop()


def test_buffer_bytes_bound(tmp_path: pathlib.Path, start_pipeline) -> None:
    port = _free_port()
    limit = 8000
    p = start_pipeline([_handler(port, buffer_bytes=limit)])  # default policy: drop_oldest
    _log("B", 0, 100, width=3)  # equal-sized records
    wait_until(lambda: p.stats()["received"] == 100, 20, "100 records at the listener")
    st = _invariant(p)
    kept, nbytes = st["buffered"], st["buffered_bytes"]
    assert 0 < kept < 100 and nbytes <= limit, st
    assert nbytes % kept == 0, st  # every frame the same size
    frame = nbytes // kept
    assert kept == limit // frame, st  # full: not one more frame would fit
    assert st["dropped"] == 100 - kept, st
    receiver = Receiver(tmp_path, port)
    try:
        assert p.flush(10)
        receiver.wait_records(kept + 1, 10)
        events = receiver.events()
        assert [e["event"] for e in events] == ["connect"] + ["record"] * (kept + 1)
        assert events[1]["name"] == "mplog" and events[1]["mplog_dropped"] == 100 - kept
        assert f"dropped {100 - kept} records" in events[1]["msg"]
        assert _seq(events[2:], "B") == list(range(100 - kept, 100))  # the newest survive
        st = _invariant(p)
        assert st["sent"] == kept and st["buffered"] == 0 and st["buffered_bytes"] == 0, st
    finally:
        receiver.stop()


# -- 4. the listener SIGKILLed ------------------------------------------------------------------


def _keep_logging(address: str, tag: str, counter: Any, slowest: Any, stop: Any) -> None:
    """Log numbered records until *stop*; *counter* = records logged, *slowest* = the
    longest a single log call took. Runs as a worker process and as a thread."""
    if address:
        mplog.worker_init(address)
    log = logging.getLogger(LOGGER)
    i = 0
    while not stop.is_set():
        t = time.monotonic()
        log.info("%s %d", tag, i, extra={"tag": tag, "i": i})
        slowest.value = max(slowest.value, time.monotonic() - t)
        i += 1
        counter.value = i
        time.sleep(0.002)  # a steady trickle, not a wait
    log.info("%s done", tag, extra={"tag": f"{tag}-done", "i": i})


def test_listener_sigkilled_is_restarted(receiver: Receiver, start_pipeline) -> None:
    p = start_pipeline([_handler(receiver.port)])
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    w_count, w_slow = ctx.Value("q", 0), ctx.Value("d", 0.0)
    worker = ctx.Process(target=_keep_logging, args=(p.address, "bg", w_count, w_slow, stop))
    m_count, m_slow = ctx.Value("q", 0, lock=False), ctx.Value("d", 0.0, lock=False)
    thread = threading.Thread(target=_keep_logging, args=("", "mt", m_count, m_slow, stop))
    worker.start()
    thread.start()
    try:
        for tag in ("bg", "mt"):
            receiver.wait_records(20, 20, where=lambda r, tag=tag: r.get("tag") == tag)
        old = p.pid
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: p.restarts == 1 and p.pid != old, 20, "the listener to be restarted")
        # Every record logged from now on goes to the new listener.
        w_from, m_from = w_count.value + 1, m_count.value + 1
        st = p.stats()
        assert st["restarts"] == 1 and st["pid"] == p.pid != old, st
        assert not psutil.pid_exists(old), "the killed listener was not reaped"
        t = time.monotonic()
        _log("after", 0, 100)
        assert time.monotonic() - t < 5
        for tag, start in (("bg", w_from), ("mt", m_from)):
            receiver.wait_records(
                1, 20, where=lambda r, tag=tag, start=start: r.get("tag") == tag and r["i"] >= start + 50
            )
    finally:
        stop.set()
        worker.join(20)
        thread.join(20)
    assert worker.exitcode == 0 and not thread.is_alive()
    assert p.flush(10)
    recs = receiver.wait_records(2, 10, where=lambda r: r.get("tag") in ("bg-done", "mt-done"))
    done = {r["tag"]: r["i"] for r in recs}
    recs = _ours(receiver)
    assert _seq(recs, "after") == list(range(100))
    for tag, start, count in (("bg", w_from, w_count.value), ("mt", m_from, m_count.value)):
        seq = _seq(recs, tag)
        _in_order_but_one_replay(seq, tag)
        assert done[f"{tag}-done"] == count
        missing = sorted(set(range(start, count)) - set(seq))
        assert not missing, f"{tag}: records logged after the restart were lost: {missing[:10]}"
    # Nothing hung: the longest log call (the one that met the dead listener) is bounded.
    assert w_slow.value < 3.0 and m_slow.value < 3.0, (w_slow.value, m_slow.value)
    st = _invariant(p, worker_losses_allowed=True)
    assert st["restarts"] == 1 and st["pid"] == p.pid, st
    assert receiver.connections() == 2  # the dead listener's, then the new one's


# -- 5. the parent SIGKILLed -------------------------------------------------------------------

PARENT = """
import logging, sys, threading
import mplog

if __name__ == "__main__":
    h = mplog.SocketHandler("127.0.0.1", int(sys.argv[1]))
    h.retryStart, h.retryMax = 0.05, 0.3
    p = mplog.start([h])
    log = logging.getLogger("orphan")
    for i in range(200):
        log.info("o %d", i, extra={"tag": "o", "i": i})
    print(p.pid, p.address, flush=True)
    threading.Event().wait(120)
"""


def _ended(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _cmd(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()[:4]
    except psutil.Error:
        return []


@pytest.mark.parametrize("receiver_up", [True, False], ids=["receiver-up", "receiver-down"])
def test_parent_sigkilled_listener_exits(tmp_path: pathlib.Path, receiver_up: bool) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    receiver = Receiver(tmp_path) if receiver_up else None
    port = receiver.port if receiver is not None else _free_port()
    env = env_with_root()
    env["TMPDIR"] = str(tmp_path)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pid, address = line.split()
        listener = psutil.Process(int(pid))
        descendants = psutil.Process(parent.pid).children(recursive=True)
        assert listener in descendants
        assert os.path.exists(address)
        parent.kill()
        parent.wait()
        t0 = time.monotonic()
        # Ended means gone or a zombie: the orphans now belong to init, which reaps them
        # when it gets to it (here, pid 1 reaps lazily, up to seconds later). The bound is
        # the documented one (the watchdog ends the listener ORPHAN_CLOSE_TIMEOUT +
        # ORPHAN_MARGIN after the parent died), plus 1.5 s: the resource tracker ends only
        # once the listener's copy of its pipe is closed, and a loaded CI machine once
        # took 2.0 s for both with the receiver down.
        bound = ORPHAN_CLOSE_TIMEOUT + ORPHAN_MARGIN + 1.5
        try:
            wait_until(lambda: all(_ended(q) for q in descendants), bound, "the orphans to end")
        except AssertionError:
            alive = [(q.pid, _cmd(q)) for q in descendants if not _ended(q)]
            raise AssertionError(
                f"still running {time.monotonic() - t0:.2f} s after the parent died: {alive}"
            ) from None
        assert not os.path.exists(address), "the listener left its socket file behind"
        if receiver is not None:
            # It flushed before exiting: what the parent logged before dying arrived.
            recs = receiver.wait_records(200, 5, where=lambda r: r.get("tag") == "o")
            assert _seq(recs, "o") == list(range(200))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        if receiver is not None:
            receiver.stop()


# -- 6. exceptions, stacks and odd objects ------------------------------------------------------


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this")

    def __repr__(self) -> str:
        return "<Unpicklable>"


class _BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class _Capture(logging.Filter):
    """Keeps each record the handler sees, and a copy of its ``__dict__`` at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[logging.LogRecord, dict[str, Any]]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen.append((record, dict(record.__dict__)))
        return True


def test_exc_info_stack_info_and_odd_values(receiver: Receiver, start_pipeline, capfd) -> None:
    p = start_pipeline([_handler(receiver.port)])
    [qh] = [h for h in logging.getLogger().handlers if isinstance(h, mplog.QueueHandler)]
    capture = _Capture()
    qh.addFilter(capture)
    lock = threading.Lock()
    odd, broken = _Unpicklable(), _BrokenRepr()
    nested = {"a": [1, {"b": None, "c": "ü"}], "n": 2**70, "f": 0.5, "t": True}
    args = (odd, lock, "héllo ✓", 42)
    extra = {"nested": nested, "lock": lock, "broken": broken, "odd": odd, "aset": {3},
             "plain": "text", "num": 7, "none": None}
    try:
        try:
            {}["missing"]
        except KeyError:
            logging.getLogger(LOGGER).error(
                "failed %s %s %s %d", *args, exc_info=True, stack_info=True, extra=extra
            )
    finally:
        qh.removeFilter(capture)
    [(record, before)] = capture.seen
    # The caller's record is exactly as it was when the handler got it.
    assert record.__dict__ == before
    assert record.args == args and record.args[0] is odd and record.msg == "failed %s %s %s %d"
    assert isinstance(record.exc_info, tuple) and record.exc_text is None
    assert "message" not in record.__dict__

    assert p.flush(10)
    [rec] = receiver.wait_records(1, 10, where=lambda r: r["name"] == LOGGER)
    assert rec["msg"] == record.getMessage() == f"failed <Unpicklable> {lock!r} héllo ✓ 42"
    assert rec["args"] is None and rec["exc_info"] is None
    assert rec["exc_text"] == logging.Formatter().formatException(record.exc_info)
    assert rec["exc_text"].startswith("Traceback (most recent call last)")
    assert rec["exc_text"].endswith("KeyError: 'missing'")
    assert rec["stack_info"] == record.stack_info
    assert rec["stack_info"].startswith("Stack (most recent call last)")
    for k in ("name", "levelno", "levelname", "pathname", "filename", "module", "lineno",
              "funcName", "created", "msecs", "relativeCreated", "process", "processName",
              "thread", "threadName"):
        assert rec[k] == getattr(record, k), k
    # Extras: JSON-able ones as they were, the others as their repr (or a placeholder when
    # even repr fails).
    assert rec["nested"] == nested and rec["plain"] == "text" and rec["num"] == 7
    assert rec["none"] is None
    assert rec["lock"] == repr(lock) and rec["odd"] == "<Unpicklable>" and rec["aset"] == "{3}"
    assert isinstance(rec["broken"], str) and "_BrokenRepr" in rec["broken"]
    # A receiver's Formatter renders it exactly as it renders locally.
    fmt = logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s %(module)s:%(lineno)d %(funcName)s "
        "%(process)d %(processName)s %(threadName)s %(plain)s %(message)s"
    )
    remote = logging.makeLogRecord({k: v for k, v in rec.items() if k != "event"})
    assert fmt.format(remote) == fmt.format(copy.copy(record))
    # Logging did not fail anywhere.
    assert "Logging error" not in capfd.readouterr().err
    st = _invariant(p)
    assert st["sent"] == 1 and st["dropped"] == 0, st


# -- 7. bad configuration -----------------------------------------------------------------------


def _factory_that_raises() -> list[logging.Handler]:
    raise RuntimeError("factory exploded on purpose")


def _factory_of_junk() -> list[Any]:
    return ["not a handler"]


@pytest.fixture
def _no_side_effects(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    """A failed start() leaves the root logger, MPLOG_ADDRESS and the temp dir untouched."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(mplog.ENV_ADDRESS, raising=False)
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    yield
    assert (list(root.handlers), root.level) == before
    assert mplog.ENV_ADDRESS not in os.environ
    assert not list(tmp_path.glob("mplog-*")), "a failed start() left its temp dir behind"


@pytest.mark.usefixtures("_no_side_effects")
@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("unknown option", r"unknown option 'bogus'"),
        ("missing directory", r"cannot bind address .*/no/such/dir/x\.sock.*does not exist"),
        ("path too long", r"too long for a Unix socket"),
        ("not a socket", r"not a socket"),
        ("factory raises", r"RuntimeError: factory exploded on purpose"),
        ("factory returns junk", r"logging\.Handler.*'not a handler'"),
        ("list of junk", r"logging\.Handler instances, got 'not a handler'"),
        ("not a list", r"handlers must be a list of logging\.Handler .*got int"),
    ],
)
def test_bad_configuration(case: str, match: str, tmp_path: pathlib.Path) -> None:
    handlers: Any = [logging.NullHandler()]
    kw: dict[str, Any] = {}
    if case == "unknown option":
        kw["bogus"] = 1
    elif case == "missing directory":
        kw["address"] = str(tmp_path / "no" / "such" / "dir" / "x.sock")
    elif case == "path too long":
        kw["address"] = str(tmp_path / ("x" * 120 + ".sock"))
    elif case == "not a socket":
        (tmp_path / "plain-file").write_text("")
        kw["address"] = str(tmp_path / "plain-file")
    elif case == "factory raises":
        handlers = _factory_that_raises
    elif case == "factory returns junk":
        handlers = _factory_of_junk
    elif case == "list of junk":
        handlers = [logging.NullHandler(), "not a handler"]
    elif case == "not a list":
        handlers = 42
    with pytest.raises(mplog.ConfigError, match=match) as info:
        mplog.start(handlers, **kw)
    assert isinstance(info.value, ValueError) and isinstance(info.value, mplog.MplogError)


@pytest.mark.usefixtures("_no_side_effects")
def test_address_used_by_a_running_pipeline(tmp_path: pathlib.Path, start_pipeline) -> None:
    address = str(tmp_path / "intake.sock")
    p = start_pipeline([logging.NullHandler()], address=address, install=False)
    with pytest.raises(mplog.ConfigError, match=re.escape(address) + ".*already uses it"):
        mplog.start([logging.NullHandler()], address=address, install=False)
    # The running pipeline was not disturbed.
    assert os.path.exists(address)
    assert p.stats()["pid"] == p.pid


def test_worker_init_without_any_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mplog.ENV_ADDRESS, raising=False)
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(mplog.ConfigError, match=r"address=.*MPLOG_ADDRESS"):
        mplog.worker_init()
    assert root.handlers == before


# -- 8. a worker whose listener is gone for good ------------------------------------------------

CHILD = """
import json, logging, sys, time
import mplog

mplog.worker_init()  # from MPLOG_ADDRESS
log = logging.getLogger("gone")
log.warning("before")
print("ready", flush=True)
sys.stdin.readline()
took = []
for i in range(5):
    t = time.monotonic()
    log.warning("after %d", i)
    took.append(time.monotonic() - t)
print(json.dumps(took), flush=True)
"""


def test_worker_whose_listener_is_gone_for_good(receiver: Receiver, start_pipeline) -> None:
    p = start_pipeline([_handler(receiver.port)])
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], env=env_with_root(), cwd=ROOT, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        assert p.flush(10)
        receiver.wait_records(1, 10, where=lambda r: r["name"] == "gone" and r["msg"] == "before")
        p.stop()  # the listener is gone for good; the child keeps logging
        t0 = time.monotonic()
        out, err = child.communicate("go\n", timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    took = json.loads(out)
    assert len(took) == 5
    # No socket file: the pipeline is gone, not restarting, so not the 2 s outage budget
    # (a restart's unlink-then-bind gets MISSING_FILE_GRACE, 0.1 s).
    assert took[0] < 1.0, took
    assert max(took[1:]) < 0.5, took  # then at once
    assert elapsed < 10
    lines = [ln for ln in err.splitlines() if ln.startswith("mplog:")]
    assert len(lines) == 5, err
    for i, ln in enumerate(lines):
        assert ln.endswith(f"WARNING gone: after {i}"), ln
    assert not [r for r in receiver.records() if r["msg"].startswith("after")]


# -- supervision edge cases ---------------------------------------------------------------------


NESTED = """
import logging, sys
import multiprocess
import mplog

def child(port):
    h = mplog.SocketHandler("127.0.0.1", port)
    with mplog.start([h]):
        logging.getLogger("resilience").info("from a spawned child", extra={"tag": "child"})
    # stop() ran; it must leave alone the resource tracker this process inherited.

if __name__ == "__main__":
    p = multiprocess.get_context(sys.argv[2]).Process(target=child, args=(int(sys.argv[1]),))
    p.start()
    p.join(30)
    print(p.exitcode, flush=True)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_pipeline_inside_a_multiprocess_child(method: str, tmp_path: pathlib.Path, receiver: Receiver) -> None:
    script = tmp_path / "nested.py"
    script.write_text(NESTED)
    run = subprocess.run(
        [sys.executable, str(script), str(receiver.port), method],
        env=env_with_root(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0", run.stderr  # the child's exit code
    assert "Traceback" not in run.stderr, run.stderr
    recs = receiver.wait_records(1, 10, where=lambda r: r.get("tag") == "child")
    assert recs[0]["msg"] == "from a spawned child"


# -- 9. the counters survive listener restarts (issue 12) ----------------------------------------

#: Records a killed listener may take with it uncounted, per kill: those workers had
#: written into its intake socket that it had not read yet (the kernel's buffer: the
#: lead's intake handles these), and those it received in its last ``WATCHDOG_TICK``
#: (20 ms) before the SIGKILL, after its last published snapshot. At ~1000 records/s
#: that is ~20 records; the bound leaves room for a loaded machine.
UNCOUNTED_PER_KILL = 100


def test_counters_survive_listener_restarts(receiver: Receiver, start_pipeline) -> None:
    p = start_pipeline([_handler(receiver.port)])
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    counts = [ctx.Value("q", 0) for _ in range(2)]
    slow = [ctx.Value("d", 0.0) for _ in range(2)]
    workers = [
        ctx.Process(target=_keep_logging, args=(p.address, f"w{k}", counts[k], slow[k], stop))
        for k in range(2)
    ]
    for w in workers:
        w.start()
    try:
        for kill in range(3):
            seen = len(_ours(receiver))
            wait_until(lambda seen=seen: len(_ours(receiver)) >= seen + 200, 30, "records under load")
            old = p.pid
            os.kill(old, signal.SIGKILL)
            wait_until(lambda kill=kill, old=old: p.restarts == kill + 1 and p.pid != old, 20,
                       "the listener to be restarted")
        seen = len(_ours(receiver))
        wait_until(lambda: len(_ours(receiver)) >= seen + 200, 30, "records after the last restart")
    finally:
        stop.set()
        for w in workers:
            w.join(20)
    assert all(w.exitcode == 0 for w in workers)
    assert p.flush(10)
    logged = sum(c.value + 1 for c in counts)  # each worker's numbered records and its "done"
    delivered = len({(r["tag"], r["i"]) for r in _ours(receiver)})
    st = p.stats()
    uncounted = logged - delivered - st["dropped"]
    print(f"logged={logged} delivered={delivered} received={st['received']} sent={st['sent']} "
          f"dropped={st['dropped']} lost_in_dead_listener={st['lost_in_dead_listener']} uncounted={uncounted}")
    assert st["restarts"] == 3, st
    # The counters are the pipeline's, not the last listener's: it saw a quarter at most.
    assert st["received"] == st["handled"], st
    assert st["received"] >= delivered - 3 * UNCOUNTED_PER_KILL, st
    assert st["received"] >= 0.9 * logged, (logged, st)
    assert st["sent"] >= delivered - 3 * UNCOUNTED_PER_KILL, (delivered, st)
    # Every record is delivered, counted as dropped, or in the documented uncounted window.
    assert -3 * UNCOUNTED_PER_KILL <= uncounted <= 3 * UNCOUNTED_PER_KILL, (logged, delivered, st)
    p.stop()
    final = p.stats()
    assert final["received"] >= st["received"] and final["restarts"] == 3, final
