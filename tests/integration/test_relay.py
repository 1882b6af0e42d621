"""Relay mode (issue 12): when the listener's one handler is a plain stdlib-wire
``SocketHandler``, workers write that wire's final frames and the listener forwards them
without decoding. What a receiver gets must not change, nor must levels, limits, the
data-only rule of a decoding listener, or the bound on a worker's wait."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import struct
import sys
import threading
import time
from typing import Any

import pytest

import mplog
from mplog._intake import HELLO, IntakeClient
from mplog._record import encode_pickle
from tests.helpers import IntakePeer, Receiver, wait_until

BIG = 2 * 1024 * 1024


class _Odd:
    def __str__(self) -> str:
        return "odd message object"

    def __repr__(self) -> str:
        return "<odd>"


def _records() -> list[logging.LogRecord]:
    """Record shapes a program logs: each takes another path through the encoders."""
    mk = logging.LogRecord
    recs = [
        mk("relay.t", logging.INFO, "/a/b.py", 10, "request %d handled in %.3f ms", (7, 1.5), None),
        mk("relay.t", logging.WARNING, "/a/b.py", 11, "héllo \ud800 wörld ✓", None, None),
        mk("relay.t", 300, "/a/b.py", 12, "custom level %s", ("x",), None),
        mk("relay.t", 70000, "/a/b.py", 13, "huge level", None, None),
        mk("relay.t", logging.INFO, "/a/b.py", 14, _Odd(), None, None),  # type: ignore[arg-type]
        mk("relay.t", logging.INFO, "/a/b.py", 15, {"event": "dict msg", "user": 3}, None, None),  # type: ignore[arg-type]
        mk("relay.t", logging.INFO, "/a/b.py", 16, "HEAD" + "x" * BIG + "TAIL", None, None),
    ]
    extra = mk("relay.t", logging.INFO, "/a/b.py", 17, "with extras", None, None)
    extra.__dict__.update(user="ann", n=[1, 2, {"a": None}], obj=_Odd())
    recs.append(extra)
    try:
        raise ValueError("boom")
    except ValueError:
        exc = mk("relay.t", logging.ERROR, "/a/b.py", 18, "failed", None, sys.exc_info())
    recs.append(exc)
    recs.append(mk("relay.t", logging.INFO, "/a/b.py", 19, "stack", None, None, sinfo="Stack (most recent call last):\n  here"))
    plain_extras = mk("relay.t", logging.INFO, "/a/b.py", 20, "plain extras %s", ("!",), None)
    plain_extras.__dict__.update(request_id="r-1", user_id=12, cached=True, took=0.25, none=None)
    recs.append(plain_extras)
    for extra in ({}, {"request_id": "r-2"}):  # formatted first by another handler
        formatted = mk("relay.t", logging.INFO, "/a/b.py", 21, "formatted %d", (5,), None)
        formatted.__dict__.update(extra)
        logging.Formatter("%(asctime)s %(message)s").format(formatted)
        recs.append(formatted)
    task = mk("relay.t", logging.INFO, "/a/b.py", 22, "in a task", None, None)
    task.taskName = "Task-3"  # what 3.12+ records inside an asyncio task
    recs.append(task)
    return recs


def _through(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, relay: bool,
             recs: list[logging.LogRecord]) -> tuple[list[dict[str, Any]], bool]:
    monkeypatch.setenv("MPLOG_RELAY", "1" if relay else "0")
    tmp_path.mkdir()
    rcv = Receiver(tmp_path)
    p = mplog.start([mplog.SocketHandler("127.0.0.1", rcv.port)], install=False)
    try:
        qh = mplog.QueueHandler(p.address)
        qh.handle(logging.LogRecord("relay.warm", 20, "", 0, "warm-up", None, None))
        assert p.flush(10)  # the greeting has been read: the mode is known from here on
        mode = qh.queue.relay
        for r in recs:
            qh.handle(r)
        assert p.flush(30)
        got = rcv.wait_records(len(recs), 30, where=lambda d: d["name"] == "relay.t")
        qh.close()
    finally:
        p.stop()
        rcv.stop()
    return got, mode


def test_a_relaying_listener_delivers_exactly_what_a_decoding_one_does(tmp_path, monkeypatch) -> None:
    recs = _records()
    relayed, on = _through(tmp_path / "r", monkeypatch, True, recs)
    decoded, off = _through(tmp_path / "d", monkeypatch, False, recs)
    assert on and not off  # the listener chose the mode, and the worker followed it
    assert len(relayed) == len(decoded) == len(recs)
    for a, b in zip(relayed, decoded, strict=True):
        assert a == b, {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    big = relayed[6]["msg"]
    assert big.startswith("HEAD") and big.endswith("TAIL") and "characters cut]" in big
    assert relayed[1]["msg"] == "héllo \ud800 wörld ✓"
    assert "ValueError: boom" in relayed[8]["exc_text"]
    assert relayed[10]["request_id"] == "r-1" and relayed[10]["cached"] is True
    assert relayed[11]["msg"] == "formatted 5" and "asctime" not in relayed[11]
    assert relayed[12]["request_id"] == "r-2"
    assert relayed[13]["taskName"] == "Task-3"


def test_a_relay_respects_the_handler_level_and_counts_what_it_handled(receiver, start_pipeline) -> None:
    h = mplog.SocketHandler("127.0.0.1", receiver.port)
    h.setLevel(logging.WARNING)
    p = start_pipeline([h])
    log = logging.getLogger("relay.level")
    log.setLevel(logging.DEBUG)
    for i in range(300):
        log.log((logging.INFO, logging.WARNING, 300)[i % 3], "r %d", i)
    assert p.flush(30)
    got = receiver.wait_records(200, 30, where=lambda d: d["name"] == "relay.level")
    assert sorted(int(d["msg"].split()[1]) for d in got) == [i for i in range(300) if i % 3]
    st = p.stats()
    assert st["handled"] >= 300 and st["sent"] == len(receiver.records())
    assert logging.getLogger().handlers[-1].queue.relay  # type: ignore[attr-defined]


@pytest.mark.parametrize("shape", ["two handlers", "a filter", "another wire"])
def test_no_relay_when_a_handler_needs_the_record(receiver, start_pipeline, tmp_path, shape) -> None:
    h = mplog.SocketHandler("127.0.0.1", receiver.port)
    handlers: list[logging.Handler] = [h]
    if shape == "two handlers":
        handlers.append(logging.FileHandler(tmp_path / "also.log", delay=True))
    elif shape == "a filter":
        h.addFilter(lambda r: r.getMessage() != "skip")
    else:
        h = mplog.SocketHandler("127.0.0.1", receiver.port, wire="jsonl")
        handlers = [h]
    p = start_pipeline(handlers)
    log = logging.getLogger("relay.shape")
    for m in ("one", "skip", "two"):
        log.warning(m)
    assert p.flush(10)
    assert not logging.getLogger().handlers[-1].queue.relay  # type: ignore[attr-defined]
    if shape != "another wire":
        got = receiver.wait_records(2, 10, where=lambda d: d["name"] == "relay.shape")
        msgs = [d["msg"] for d in got]
        assert msgs == (["one", "two"] if shape == "a filter" else ["one", "skip", "two"])


class _Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo pwned > /dev/null",))


def test_a_decoding_listener_takes_stdlib_frames_the_data_only_way(receiver, start_pipeline, tmp_path) -> None:
    # A worker's frames written to a relaying listener and resent to one that decodes:
    # they arrive. A frame that names a callable closes that connection, runs nothing.
    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port),
                        logging.FileHandler(tmp_path / "also.log", delay=True)])
    frame = encode_pickle(logging.LogRecord("relay.resent", 20, "/x.py", 1, "resent %d", (1,), None))
    evil = pickle.dumps({"levelno": 20, "x": _Evil()}, 1)
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(p.address)
        s.sendall(HELLO + frame)
        receiver.wait_records(1, 10, where=lambda d: d["name"] == "relay.resent")
        s.sendall(struct.pack(">L", len(evil)) + evil)
        s.settimeout(10)
        data = b""
        while chunk := s.recv(4096):  # the listener closes this connection
            data += chunk
    assert data.startswith(b"mplogI\x01R")  # greeted: "send compact records"
    st = wait_until(lambda: (s := p.stats())["bad_frames"] == 1 and s, 10, "the bad frame counted")
    assert st["received"] >= 1
    assert "resent 1" in (tmp_path / "also.log").read_text()


def test_a_worker_never_waits_past_its_bound_on_a_listener_that_stopped_reading(tmp_path, capfd) -> None:
    # A listener alive but stuck (accepts, never reads): a log call gives up after the
    # send timeout (kept by the kernel, SO_SNDTIMEO), retries within the outage budget,
    # then writes the record to stderr and counts it. Nothing blocks for ever.
    path = str(tmp_path / "stuck.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    try:
        client = IntakeClient(path, outage_budget=0.5, send_timeout=0.3)
        frame = encode_pickle(logging.LogRecord("stuck", 20, "", 0, "x" * 4000, None, None))
        worst = 0.0
        began = time.monotonic()
        sent = 0
        while client.lost_total == 0:
            t0 = time.monotonic()
            client.send(frame)
            worst = max(worst, time.monotonic() - t0)
            sent += 1
            assert time.monotonic() - began < 60, "no record was ever given up"
        assert sent > 10  # the socket buffers took records first
        # One call: the send timeout, then reconnect attempts (each bounded by it) until
        # the outage budget is spent.
        assert worst < 0.3 + 0.5 + 2 * 0.3 + 0.5, worst
        client.close()
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()
    assert "record not delivered: INFO stuck" in capfd.readouterr().err


def test_a_listener_slower_to_come_back_than_the_budget_costs_no_record(tmp_path, capfd) -> None:
    # A restart on a loaded machine can take longer than the 2 s outage budget. While the
    # socket file is there, records after the budget wait in the worker's memory (no more
    # blocking) and are written first on the next connection; none goes to stderr.
    from mplog._intake import GREETING, MODE_RECORD
    from mplog._record import decode_record, encode

    path = str(tmp_path / "intake.sock")
    first = socket.socket(socket.AF_UNIX)
    first.bind(path)
    first.listen(8)
    client = IntakeClient(path, outage_budget=0.2)

    def rec(i: int) -> bytes:
        return encode(logging.LogRecord("slow", 20, "", 0, "r %d", (i,), None))

    assert client.send(rec(0))  # connects (the backlog takes it), then writes
    conn, _ = first.accept()
    conn.close()
    first.close()  # the listener died; its socket file stays (as a SIGKILLed one's does)
    worst_after_budget = 0.0
    began = time.monotonic()
    for i in range(1, 201):
        t0 = time.monotonic()
        assert client.send(rec(i))  # True: held, not written to stderr
        if t0 - began > 0.3:
            worst_after_budget = max(worst_after_budget, time.monotonic() - t0)
        if i % 20 == 0:
            time.sleep(0.01)  # an application doing other things; the restart takes ~1 s
    assert time.monotonic() - began > 0.3
    assert worst_after_budget < 0.1, worst_after_budget  # past the budget: no blocking
    assert client.lost_total == 0

    os.unlink(path)  # the new listener replaces the socket file
    second = socket.socket(socket.AF_UNIX)
    second.bind(path)
    second.listen(8)
    got: list[str] = []

    def serve() -> None:
        second.settimeout(20)
        c, _ = second.accept()
        c.sendall(GREETING + MODE_RECORD)
        peer = IntakePeer(c)
        deadline = time.monotonic() + 20
        # Until the last record: record 0 may come first again, so 201 records read
        # need not include it.
        while "r 201" not in got and not peer.closed and time.monotonic() < deadline:
            for body in peer.poll(0.1):
                if body[:1] == b"R":
                    got.append(decode_record(body)["msg"])
        peer.close()

    t = threading.Thread(target=serve)
    t.start()
    # A holding worker tries to connect at most every RETRY_INTERVAL (20 ms); a record
    # sooner than that after its last try is held too, and nothing else would be sent.
    wait_until(lambda: time.monotonic() >= client._next_try, 5, "the worker's next try")
    assert client.send(rec(201))  # connects, writes the held records first, then this one
    t.join(20)
    second.close()
    client.close()
    # Record 0 may come again (the dead listener never acknowledged it): at least once.
    assert got[-201:] == [f"r {i}" for i in range(1, 202)], got[:5]
    assert "record not delivered" not in capfd.readouterr().err


def _listen(path: str) -> socket.socket:
    """A stand-in listener's socket at *path*, replacing the socket file there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(8)
    s.settimeout(20)
    return s


def _messages_until(peer: IntakePeer, wanted: str) -> list[str]:
    """The messages of the records *peer* reads, until *wanted* is among them (20 s at
    most, or until the worker closes its connection)."""
    from mplog._record import decode_record

    got: list[str] = []
    deadline = time.monotonic() + 20
    while wanted not in got and not peer.closed and time.monotonic() < deadline:
        got += [decode_record(b)["msg"] for b in peer.poll(0.1) if b[:1] == b"R"]
    return got


def _after_a_death(client: IntakeClient, way: str) -> None:
    """What the next log call needs to find the listener dead: with a pipe, nothing (its
    write fails); with a ring, whose writes cannot fail, LIVE_CHECK since the last look."""
    if way == "ring":
        from mplog._intake import LIVE_CHECK

        looked = time.monotonic()
        wait_until(lambda: time.monotonic() > looked + LIVE_CHECK, 5, "LIVE_CHECK")


def _way(way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mplog._ring import available

    if way == "ring" and not available():
        pytest.skip("record rings are for x86-64 Linux")
    monkeypatch.setenv("MPLOG_INTAKE_RING", "1" if way == "ring" else "0")


@pytest.mark.parametrize("way", ["ring", "pipe"])
def test_a_held_record_outlives_a_listener_that_takes_it_and_dies(tmp_path, way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker holds a record (its listener slower to come back than the budget) and
    logs nothing more; its own thread writes the record to the next listener. That
    listener takes it and dies before acknowledging it (a restart that failed after it
    bound): the thread must see the connection end and write it again to the one after,
    still without a log call."""
    from mplog._intake import GREETING, MODE_RECORD
    from mplog._record import encode

    path = str(tmp_path / "intake.sock")

    def listen() -> socket.socket:
        return _listen(path)

    def until_held(peer: IntakePeer) -> list[str]:
        return _messages_until(peer, "held")

    _way(way, monkeypatch)
    first = listen()
    client = IntakeClient(path, outage_budget=0.2)
    assert client.send(encode(logging.LogRecord("idle", 20, "", 0, "before", None, None)))
    first.accept()[0].close()
    first.close()  # the listener died; its socket file stays
    _after_a_death(client, way)
    assert client.send(encode(logging.LogRecord("idle", 20, "", 0, "held", None, None)))
    assert client._holding  # past the budget: held, and the caller did not wait for it
    doomed = listen()
    c, _ = doomed.accept()  # the worker's own thread connects
    c.sendall(GREETING + MODE_RECORD)
    peer = IntakePeer(c)
    assert "held" in until_held(peer)
    peer.close()  # gone before its acknowledgement
    doomed.close()
    second = listen()
    c, _ = second.accept()
    c.sendall(GREETING + MODE_RECORD)
    peer = IntakePeer(c)
    try:
        assert "held" in until_held(peer)  # written again, still with no log call
    finally:
        peer.close()
        second.close()
        client.close()


@pytest.mark.parametrize("way", ["ring", "pipe"])
def test_a_socket_file_missing_for_a_moment_late_in_an_outage_loses_nothing(tmp_path, way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart that unlinks the old socket file before it binds (bind() does so for an
    address too long for its temporary name) leaves a moment with no file. A worker that
    has waited for its listener longer than MISSING_FILE_GRACE and looks in that moment
    must give the file the grace from then on: it gave its record up at once (to stderr,
    "listener unreachable"), which a CI run saw mid-stream in the 5-kill test."""
    from mplog._intake import GREETING, MODE_RECORD
    from mplog._options import MISSING_FILE_GRACE
    from mplog._record import encode

    _way(way, monkeypatch)
    path = str(tmp_path / "intake.sock")
    first = _listen(path)
    client = IntakeClient(path, outage_budget=10.0)
    sent: list[bool] = []
    t = threading.Thread(target=lambda: sent.append(
        client.send(encode(logging.LogRecord("late", 20, "", 0, "late", None, None)))))
    try:
        assert client.send(encode(logging.LogRecord("late", 20, "", 0, "before", None, None)))
        first.accept()[0].close()
        first.close()  # the listener died; its socket file stays (refused)
        _after_a_death(client, way)
        t.start()
        began = wait_until(lambda: client._outage_deadline, 10, "the outage") - 10.0
        wait_until(lambda: time.monotonic() > began + 3 * MISSING_FILE_GRACE, 10, "a long outage")
        os.unlink(path)  # the restart's moment between unlink and bind...
        # ... seen by the worker (or it gave the record up: then the test fails below)
        wait_until(lambda: client._gone_since is not None or sent, 10, "the worker to look")
        second = _listen(path)
        t.join(10)
        assert sent == [True]  # written, not sent to stderr
        c, _ = second.accept()
        c.sendall(GREETING + MODE_RECORD)
        peer = IntakePeer(c)
        try:
            assert "late" in _messages_until(peer, "late")
        finally:
            peer.close()
            second.close()
    finally:
        t.join(10)
        client.close()


class _BrokenRelay(mplog.SocketHandler):
    def _relay(self, frames: list[bytes], respect_level: bool) -> None:
        raise RuntimeError("a handler bug")


def test_records_a_raising_handler_took_are_counted_as_dropped(receiver, start_pipeline, capfd) -> None:
    # The listener acknowledges them (they cannot be handled again): they must show in
    # dropped, not only in handler_errors. Said once with its traceback, not per batch.
    port = receiver.port
    p = start_pipeline(lambda: [_BrokenRelay("127.0.0.1", port)])
    log = logging.getLogger("relay.broken")
    for i in range(50):
        log.warning("r %d", i)
        p.flush(5)  # one batch per record: a line per batch would show
    st = wait_until(lambda: (s := p.stats())["received"] >= 50 and s, 20, "50 records received")
    assert st["handler_errors"] >= 50
    assert st["dropped"] >= 50 - st["sent"] - st["buffered"], st
    assert st["dropped"] >= 1
    err = capfd.readouterr().err
    assert err.count("mplog listener: <QueueListener of <_BrokenRelay (NOTSET)>> failed on a batch") == 1, err
    assert "RuntimeError: a handler bug" in err


@pytest.mark.parametrize("way", ["ring", "pipe"])
def test_a_worker_far_ahead_of_its_acknowledgements_waits_for_them(tmp_path, way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A listener that reads every record at once but acknowledges none (handlers slower
    # than its reads): the worker must not run further ahead than RETAIN_WAIT bytes, or
    # what it keeps for a resend would outgrow RETAIN_MAX and be dropped. The call that
    # crosses the bound waits, and returns as soon as the acknowledgement comes.
    from mplog._intake import ACK, ACK_READ_BYTES, GREETING, MODE_RECORD, RETAIN_WAIT

    _way(way, monkeypatch)
    path = str(tmp_path / "slow.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(4)
    frame = encode_pickle(logging.LogRecord("ahead", 20, "", 0, "x" * 4000, None, None))
    got = {"bytes": 0}
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(20)  # the writer connects at once; never wait for ever
        try:
            conn = srv.accept()[0]
        except TimeoutError:
            return
        conns.append(conn)
        conn.sendall(GREETING + MODE_RECORD)
        peer = IntakePeer(conn)
        while not stop.is_set() and not peer.closed:
            peer.poll(0.1)
            got["bytes"] = peer.record_bytes
        if peer.pipe >= 0:
            os.close(peer.pipe)  # the socket is closed by the test, after its last ack

    reader = threading.Thread(target=serve)
    reader.start()
    client = IntakeClient(path, send_timeout=30.0)
    returned = {"n": 0, "last": 0.0}
    total = RETAIN_WAIT * 3 // 2 // len(frame)  # after the ack, less than RETAIN_WAIT more

    def write() -> None:
        for _ in range(total):
            client.send(frame)
            returned["n"] += 1
            returned["last"] = time.monotonic()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # Blocked: with a pipe, the listener has one frame more than the writer's
        # returned calls (the waiting call wrote its frame, then waits for the
        # acknowledgement); with a ring, the call waits before it writes (LIVE_CHECK).
        ahead_by = 1 if way == "pipe" else 0
        wait_until(lambda: got["bytes"] == (returned["n"] + ahead_by) * len(frame)
                   and client._retained_bytes > RETAIN_WAIT, 20, "the writer to wait")
        ahead = client._retained_bytes
        assert RETAIN_WAIT < ahead <= RETAIN_WAIT + ACK_READ_BYTES + len(frame)
        n_blocked = returned["n"]
        released = time.monotonic()
        conns[0].sendall(ACK.pack(n_blocked + ahead_by))  # every frame so far handled
        wait_until(lambda: returned["n"] > n_blocked, 5, "the wait to end at the ack")
        assert returned["last"] - released < 2.0
        writer.join(30)
        assert not writer.is_alive()
        assert returned["n"] == total
    finally:
        stop.set()
        client.close()
        writer.join(30)
        reader.join(5)
        for c in conns:
            c.close()
        srv.close()


def test_the_last_ack_reaches_a_worker_that_read_none_for_a_while(tmp_path, start_pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker with a record pipe reads its acks every ACK_READ_BYTES written (one with a
    # ring also every LIVE_CHECK, so its socket does not fill: this is the pipe's case);
    # the listener sends one per turn.
    # Hundreds of turns of one record each fill the worker's socket, and the listener's
    # ack sends find no room. The last one used to be dropped for good: a worker that then
    # waited for it (its exit drain, flush()) waited 5 s and wrote its delivered records to
    # stderr as undeliverable (seen with gunicorn's gevent workers).
    import fcntl
    import termios

    from mplog._intake import ACK_READ_BYTES

    monkeypatch.setenv("MPLOG_INTAKE_RING", "0")
    fh = logging.FileHandler(tmp_path / "out.log")
    p = start_pipeline([fh])
    fh.close()  # the listener has its own
    qh = mplog.QueueHandler(p.address)
    client = qh.queue

    def record(i: int) -> logging.LogRecord:
        return logging.LogRecord("acks", logging.INFO, "", 0, "r %d", (i,), None)

    qh.handle(record(0))
    assert client.drain(10) and client._sock is not None  # connected and greeted
    sock = client._sock

    def queued() -> int:
        return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]

    def acked_after(before: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while queued() == before:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)  # the ack comes within the listener's next turn (~1 ms)
        return True

    i = 1
    while True:
        assert client._retained_bytes < ACK_READ_BYTES // 2, "the listener's ack sends never filled up"
        before = queued()
        qh.handle(record(i))
        i += 1
        if not acked_after(before, 1.5):
            break  # no room for this record's ack in this worker's socket
    qh.handle(record(i))  # and one more, whose ack has no room either
    t0 = time.monotonic()
    assert client.drain(5), f"the last ack never came ({len(client._retained)} records unacknowledged)"
    assert time.monotonic() - t0 < 2.0
    assert p.flush(10) and p.stats()["handled"] == i + 1
    qh.close()


@pytest.mark.parametrize("way", ["ring", "pipe"])
def test_an_acknowledgement_that_repeats_the_last_is_not_taken_for_the_listener_gone(tmp_path, way: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A listener acknowledges again, with the same count, a worker that waits for room in
    # its ring. A worker in drain() took "read, and nothing changed" for EOF: it dropped the
    # connection and wrote every unacknowledged record again to the same listener (the
    # two records of a test arrived 11 times at rsyslog).
    from mplog._intake import ACK, GREETING, MODE_RECORD
    from mplog._record import encode

    _way(way, monkeypatch)
    path = str(tmp_path / "intake.sock")
    srv = _listen(path)
    client = IntakeClient(path)
    result: list[bool] = []
    try:
        for i in range(3):
            assert client.send(encode(logging.LogRecord("rep", 20, "", 0, "r %d", (i,), None)))
        c, _ = srv.accept()
        c.sendall(GREETING + MODE_RECORD)
        peer = IntakePeer(c)
        got: list[bytes] = []
        wait_until(lambda: got.extend(b for b in peer.poll(0.05) if b[:1] == b"R") or len(got) >= 3,
                   10, "3 records")
        assert len(got) == 3
        drainer = threading.Thread(target=lambda: result.append(client.drain(20)))
        drainer.start()
        c.sendall(ACK.pack(2))
        wait_until(lambda: client._acked == 2, 10, "the first acknowledgement read")
        c.sendall(ACK.pack(2))  # the same count again
        srv.settimeout(1.0)
        with pytest.raises(TimeoutError):
            srv.accept()  # no second connection: the first was not given up
        c.sendall(ACK.pack(3))
        drainer.join(20)
        assert result == [True]
        assert [b for b in peer.poll(0.2) if b[:1] == b"R"] == []  # nothing written again
        peer.close()
    finally:
        client.close()
        srv.close()
