"""`mplog serve` and the mplog wire, with real processes and sockets."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import multiprocessing
import os
import pathlib
import pickle
import signal
import socket
import struct
import time

import pytest

import mplog
from tests.helpers import Serve, wait_until


def _log_numbered(n: int) -> int:
    log = logging.getLogger("collector.worker")
    for i in range(n):
        log.info("record %d", i, extra={"i": i})
    return os.getpid()


def _assert_exactly_once_in_order(lines: list[dict], per_process: int, processes: int) -> None:
    by_pid: dict[int, list[int]] = {}
    for rec in lines:
        if rec.get("name") == "collector.worker":
            by_pid.setdefault(rec["process"], []).append(rec["i"])
    assert len(by_pid) == processes, sorted(by_pid)
    for pid, seq in by_pid.items():
        assert seq == list(range(per_process)), f"process {pid}: {len(seq)} records, first gaps/dups at {[i for i, v in enumerate(seq) if v != i][:5]}"


def test_stdlib_socket_handler_into_serve(tmp_path: pathlib.Path) -> None:
    srv = Serve(tmp_path / "out.jsonl")
    try:
        h = logging.handlers.SocketHandler("127.0.0.1", srv.port)  # the real stdlib class
        log = logging.getLogger("stdlib.sender")
        log.addHandler(h)
        log.propagate = False
        try:
            for i in range(50):
                log.warning("plain %d", i, extra={"k": "v"})
        finally:
            log.removeHandler(h)
            h.close()
        lines = wait_until(lambda: (ls := srv.lines()) and len(ls) >= 50 and ls, what="50 lines")
        assert [r["msg"] for r in lines] == [f"plain {i}" for i in range(50)]
        r = lines[0]
        for key in ("name", "levelname", "levelno", "msg", "created", "process", "processName", "thread", "exc_text"):
            assert key in r, key
        assert r["k"] == "v" and r["levelname"] == "WARNING"
        assert srv.terminate() == 0
    finally:
        srv.stop()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.path, "w"))


def test_pickle_global_is_refused_without_side_effect(tmp_path: pathlib.Path) -> None:
    srv = Serve(tmp_path / "out.jsonl")
    target = tmp_path / "pwned"
    try:
        body = pickle.dumps({"msg": _Evil(str(target))}, 1)
        assert b"open" in body
        evil = socket.create_connection(("127.0.0.1", srv.port))
        evil.sendall(struct.pack(">L", len(body)) + body)
        # The collector closes that connection: we read EOF.
        evil.settimeout(10)
        assert evil.recv(10) == b""
        evil.close()
        # Everyone else is still served.
        h = logging.handlers.SocketHandler("127.0.0.1", srv.port)
        h.handle(logging.makeLogRecord({"msg": "after", "levelno": 20, "levelname": "INFO"}))
        h.close()
        wait_until(lambda: any(r["msg"] == "after" for r in srv.lines()), what="the good record")
        assert not target.exists()
        assert srv.terminate() == 0
        assert "refused" in srv.stderr()
    finally:
        srv.stop()


def _pipeline_log(start_pipeline, port: int, n: int, **kw: object) -> mplog.Pipeline:
    h = mplog.SocketHandler("127.0.0.1", port, wire="mplog", **kw)
    h.retryStart, h.retryMax = 0.05, 0.2
    p = start_pipeline([h])
    log = logging.getLogger("collector.main")
    for i in range(n):
        log.info("main %d", i)
    return p


def test_hmac_right_key_works_wrong_key_refused(tmp_path: pathlib.Path, start_pipeline) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_bytes(b"s3cret-key-for-tests\n")
    srv = Serve(tmp_path / "out.jsonl", 0, "--hmac-key-file", str(keyfile))
    try:
        p = _pipeline_log(start_pipeline, srv.port, 20, hmac_key_file=str(keyfile))
        assert p.flush(15)
        assert len([r for r in srv.lines() if r.get("name") == "collector.main"]) == 20
        p.stop()
        # Wrong key: refused, nothing written, the sender keeps the records.
        bad = _pipeline_log(start_pipeline, srv.port, 5, hmac_key=b"wrong-key")
        assert not bad.flush(1.5)
        st = bad.stats()
        assert st["sent"] == 0 and st["buffered"] == 5
        # Missing signature: refused too.
        none = _pipeline_log(start_pipeline, srv.port, 3)
        assert not none.flush(1.5)
        bad.stop(timeout=0.5)
        none.stop(timeout=0.5)
        # The stdlib wire cannot be signed: refused when the collector has a key.
        h = logging.handlers.SocketHandler("127.0.0.1", srv.port)
        try:
            h.emit(logging.makeLogRecord({"name": "collector.main", "msg": "unsigned"}))
            assert h.sock is not None
            h.sock.settimeout(10)
            said = b""
            while chunk := h.sock.recv(4096):  # until the collector closes the connection
                said += chunk
            # One ASCII line with the exact prefix mplog's SocketHandler recognises.
            assert said.startswith(b"mplog serve refused this connection: "), said
            assert said.endswith(b"\n") and said.count(b"\n") == 1 and said.isascii(), said
            assert b"HMAC" in said
        finally:
            h.close()
        assert srv.terminate() == 0
        err = srv.stderr()
        assert "wrong HMAC" in err and "requires HMAC" in err
        assert "stdlib-wire (pickle) connection, refused" in err
        assert len([r for r in srv.lines() if r.get("name") == "collector.main"]) == 20
    finally:
        srv.stop()


@pytest.mark.parametrize("keyed", [False, True], ids=["unsigned", "sealed"])
def test_collector_killed_5_times_exactly_once(tmp_path: pathlib.Path, start_pipeline, keyed: bool) -> None:
    # Keyed, the sessions are sealed (one MAC per batch): a kill lands between records and
    # their seal as often as not, and what was never sealed must come again, once.
    workers, per_worker = 8, 50_000 // 8
    keyfile = tmp_path / "key"
    keyfile.write_bytes(b"sealed-sessions-key")
    extra = ("--hmac-key-file", str(keyfile)) if keyed else ()
    srv = Serve(tmp_path / "out.jsonl", 0, *extra)
    try:
        kw = {"hmac_key_file": str(keyfile)} if keyed else {}
        h = mplog.SocketHandler("127.0.0.1", srv.port, wire="mplog", **kw)
        h.retryStart, h.retryMax = 0.05, 0.2
        p = start_pipeline([h])
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers, initializer=mplog.worker_init, initargs=(p.address,)) as pool:
            result = pool.map_async(_log_numbered, [per_worker] * workers)
            for _ in range(5):
                # Lines written after the last restart come through a new connection: each
                # kill then hits a live connection (counting from a fixed target could let
                # a kill land before the reconnect, the lines written between the check and
                # the previous kill having already passed it).
                target = srv.count() + 4000
                wait_until(lambda t=target: srv.count() >= t, timeout=60, what=f"{target} lines")
                srv.kill()
                srv.start()
            result.get(120)
        assert p.flush(60)
        st = p.stats()
        assert st["received"] == st["handled"] == st["sent"] == workers * per_worker
        assert st["dropped"] == 0 and st["buffered"] == 0
        assert st["reconnects"] >= 5
        _assert_exactly_once_in_order(srv.lines(), per_worker, workers)
        assert srv.terminate() == 0
    finally:
        srv.stop()


def test_a_keyed_collector_seals_a_real_senders_batches(tmp_path: pathlib.Path) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_bytes(b"sealed-sessions-key")
    srv = Serve(tmp_path / "out.jsonl", 0, "--hmac-key-file", str(keyfile))
    h = mplog.SocketHandler("127.0.0.1", srv.port, wire="mplog", hmac_key_file=str(keyfile))
    try:
        log = logging.getLogger("collector.sealed")
        log.addHandler(h)
        log.propagate = False
        log.setLevel(logging.INFO)
        for i in range(3000):  # several batches: more than a seal may cover
            log.info("sealed %d %s", i, "x" * 200)
        h.flush(30)
        wait_until(lambda: srv.count() >= 3000, 30, "3000 lines")
        assert [r["msg"] for r in srv.lines()] == [f"sealed {i} {'x' * 200}" for i in range(3000)]
        session = h._sender._session
        assert session is not None and session.sealed  # the collector granted it
        assert h.stats()["sent"] == 3000
    finally:
        log.removeHandler(h)
        h.close()
        srv.stop()


def test_torn_last_line_is_removed_on_restart(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"msg": "whole"}\n{"msg": "tor', encoding="utf-8")
    srv = Serve(out)
    try:
        h = logging.handlers.SocketHandler("127.0.0.1", srv.port)
        h.handle(logging.makeLogRecord({"msg": "next", "levelno": 20, "levelname": "INFO"}))
        h.close()
        wait_until(lambda: len(srv.lines()) == 2, what="2 lines")
        assert [r["msg"] for r in srv.lines()] == ["whole", "next"]
        assert srv.terminate() == 0
    finally:
        srv.stop()


def test_sigint_flushes_and_exits_0(tmp_path: pathlib.Path) -> None:
    srv = Serve(tmp_path / "out.jsonl")
    try:
        h = logging.handlers.SocketHandler("127.0.0.1", srv.port)
        for i in range(10):
            h.handle(logging.makeLogRecord({"msg": f"m{i}", "levelno": 20}))
        h.close()
        wait_until(lambda: len(srv.lines()) == 10, what="10 lines")
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(10) == 0
        srv._close_pipes()
    finally:
        srv.stop()


def test_collector_embedded(tmp_path: pathlib.Path) -> None:
    buf = io.BytesIO()
    c = mplog.Collector(port=0, output=buf)
    c.start()
    try:
        h = logging.handlers.SocketHandler("127.0.0.1", c.port)
        h.handle(logging.makeLogRecord({"msg": "embedded", "levelno": 20}))
        h.close()
        wait_until(lambda: b"embedded" in buf.getvalue(), what="the record")
    finally:
        c.stop()
    assert c.stats["records"] == 1
    from mplog._collector import REFUSAL_REASONS

    # The counters other code exports (Prometheus): every refusal reason has its key.
    assert all(c.stats[f"refusals_{r}"] == 0 for r in REFUSAL_REASONS)
    assert c.stats["connections"] == 1 and c.stats["open_connections"] == 0


def test_serve_bad_usage_is_one_line(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "mplog", "serve", "--port", "99999"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "mplog", "serve", "--port", "0", "--hmac-key-file", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "hmac_key_file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    for bad in (["--idle-timeout", "0"], ["--idle-timeout", "nan"], ["--max-connections", "0"],
                ["--max-frame-bytes", "10"]):
        r = subprocess.run([sys.executable, "-m", "mplog", "serve", "--port", "0", *bad],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (bad, r.stderr)
        assert bad[0] in r.stderr, (bad, r.stderr)
    _ = time


def _raw_mplog_client(port: int, sender: str, seqs: range) -> int:
    """Send records *seqs* of *sender* over a raw mplog-wire session; return the
    highest seq the collector said it had already written (from its welcome)."""
    from mplog._wires.mplog import ClientSession, record_payload

    session = ClientSession(sender, None, 4096)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(session.handshake())
        while not session.ready:
            session.receive(s.recv(65536))
        resume = session.resume_acked
        payloads = [record_payload(q, {"name": "raw", "msg": "x" * 200, "q": q}) for q in seqs]
        s.sendall(b"".join(session.frame(pl) for pl in payloads))
        acked = 0
        while acked < len(payloads):
            acked += session.receive(s.recv(65536))
    return resume


def test_output_rotates_by_size_and_dedupe_reads_the_backups(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out.jsonl"
    srv = Serve(out, 0, "--max-bytes", "20000", "--backup-count", "50")
    try:
        assert _raw_mplog_client(srv.port, "s1", range(1, 301)) == 0
        files = sorted(tmp_path.glob("out.jsonl*"), key=lambda f: -int(f.suffix[1:]) if f.suffix[1:].isdigit() else 0)
        assert len(files) >= 4, files
        lines: list[dict] = []
        for f in files:
            data = f.read_bytes()
            assert 0 < len(data) <= 20000, f"{f.name}: {len(data)} bytes"  # rotated at the bound
            lines += [json.loads(x) for x in data.splitlines()]
        assert [r["q"] for r in lines] == list(range(1, 301))
        # Restarted, the collector learns what it wrote from the backups too: a resend of
        # records 1..300 (as after a lost acknowledgement) writes nothing twice.
        srv.kill()
        srv.start()
        assert _raw_mplog_client(srv.port, "s1", range(1, 311)) == 300
        assert srv.terminate() == 0
        lines = [json.loads(x) for f in tmp_path.glob("out.jsonl*") for x in f.read_bytes().splitlines()]
        assert sorted(r["q"] for r in lines) == list(range(1, 311))
    finally:
        srv.stop()


def test_diagnostics_are_one_escaped_capped_line_and_rate_limited() -> None:
    from mplog._collector import DIAG_BURST, DIAG_LIMIT, DIAG_PERIOD, _Diagnostics

    now = [100.0]
    out = io.StringIO()
    diag = _Diagnostics(clock=lambda: now[0], stream=out)
    for i in range(DIAG_BURST + 25):
        diag.say("bad_pickle", f"peer said \n mplog serve: forged {i} \x1b[2J" + "A" * 5000)
    diag.say("connect", "connection from 127.0.0.1:1")  # another reason has its own budget
    lines = out.getvalue().splitlines()
    assert len(lines) == DIAG_BURST + 1
    assert all(line.startswith("mplog serve: ") for line in lines)
    assert all("\x1b" not in line and len(line) < DIAG_LIMIT + 60 for line in lines)
    assert "peer said \\n mplog serve: forged 0 \\x1b[2J" in lines[0]
    assert diag.suppressed == 25
    diag.tick()  # the window has not ended: nothing yet
    assert len(out.getvalue().splitlines()) == DIAG_BURST + 1
    now[0] += DIAG_PERIOD
    diag.tick()
    last = out.getvalue().splitlines()[-1]
    assert last == f"mplog serve: ... 25 more bad_pickle lines suppressed in {DIAG_PERIOD:g} s"
    diag.say("bad_pickle", "a new window")
    assert out.getvalue().splitlines()[-1] == "mplog serve: a new window"


def test_text_line_is_one_line_for_any_value() -> None:
    from mplog._collector import _text_line

    line = _text_line({
        "created": 1e17, "levelname": "INFO\nCRITICAL", "name": "a\rb", "processName": "p",
        "process": 1, "msg": "m\x1b[31m", "exc_text": "Trace\nback", "user": "x y", "n": [1, 2],
        "mplog_seq": 3,
    })
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line == ('- INFO\\nCRITICAL a\\rb [p:1] m\\x1b[31m user="x y" n=[1, 2] '
                    'exc_text=Trace\\nback')


def test_a_peer_speaking_another_wire_is_told_what_it_seems_to_speak(tmp_path: pathlib.Path) -> None:
    # A jsonl or syslog sender, a TLS client or curl pointed at serve by mistake: each was
    # refused as "frame of 2065855593 bytes exceeds the limit" (its first 4 bytes read as a
    # stdlib length prefix), counted as frame_too_large.
    import ssl

    serve = Serve(tmp_path / "out.jsonl")
    heads = {
        b'{"name": "app", "msg": "hello"}\n': 'JSON lines (wire="jsonl")',
        b"<14>1 2026-12-01T00:00:00Z host app 7 - - hello\n": 'syslog (wire="syslog")',
        b"47 <14>1 2026-12-01T00:00:00Z host app 7 - - hello": "octet-counted syslog",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n": "HTTP",
    }
    try:
        for head in heads:
            with socket.create_connection(("127.0.0.1", serve.port), 10) as c:
                c.settimeout(10)
                c.sendall(head)
                try:
                    rest = c.recv(100)
                except ConnectionResetError:  # closed with bytes of ours unread: also a close
                    rest = b""
                assert rest == b""  # serve closed it, and said nothing on this wire
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", serve.port), 10) as raw:
            raw.settimeout(10)
            with pytest.raises(OSError):  # ssl.SSLError is one
                ctx.wrap_socket(raw, server_hostname="collector")
        h = logging.handlers.SocketHandler("127.0.0.1", serve.port)  # the right wire still works
        h.handle(logging.makeLogRecord({"msg": "after", "levelno": 20}))
        h.close()
        wait_until(lambda: serve.count() == 1, what="the stdlib-wire record")
    finally:
        assert serve.terminate() == 0
    err = serve.stderr()
    for what in [*heads.values(), "a TLS handshake, and this collector serves plain TCP"]:
        assert f"look like {what}" in err, (what, err)
    assert "unknown_wire=5" in err and "frame_too_large" not in err, err
    assert [r["msg"] for r in serve.lines()] == ["after"]


def test_logrotate_moves_the_output_and_a_hup_reopens_it_under_load(tmp_path: pathlib.Path, start_pipeline) -> None:
    # logrotate's default ("create", then `postrotate kill -HUP`): the file is renamed while
    # records stream in, and the collector must write on in a new file at the same path,
    # with every line whole in one of the files and each record in exactly one.
    workers, per_worker = 4, 20_000 // 4
    out = tmp_path / "out.jsonl"
    srv = Serve(out, 0)
    try:
        h = mplog.SocketHandler("127.0.0.1", srv.port, wire="mplog")
        p = start_pipeline([h])
        ctx = multiprocessing.get_context("fork")
        rotated = []
        with ctx.Pool(workers, initializer=mplog.worker_init, initargs=(p.address,)) as pool:
            result = pool.map_async(_log_numbered, [per_worker] * workers)
            for k in range(3):
                wait_until(lambda: srv.count() >= 500, timeout=60, what="500 lines in the new file")
                moved = out.with_name(f"out.jsonl.{k + 1}")
                out.rename(moved)
                rotated.append(moved)
                assert srv.proc is not None
                srv.proc.send_signal(signal.SIGHUP)
                wait_until(out.exists, timeout=30, what="the reopened output")
            result.get(120)
        assert p.flush(60)
        assert srv.terminate() == 0
        lines = []
        for f in [*rotated, out]:
            data = f.read_bytes()
            assert data.endswith(b"\n"), f.name  # no line cut by the move
            lines += [json.loads(x) for x in data.splitlines()]
        _assert_exactly_once_in_order(sorted(lines, key=lambda r: r["mplog_seq"]), per_worker, workers)
        assert srv.stderr().count("reopened the output") == 3, srv.stderr()
        assert out.stat().st_size > 0  # records went on into the last new file
    finally:
        srv.stop()
