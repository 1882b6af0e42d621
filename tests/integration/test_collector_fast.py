"""`mplog serve`'s passthrough of mplog-wire records, with a real collector process and
raw clients on real sockets.

The collector writes a record's own bytes (sender and seq spliced in) when that gives
the record the slow path (parse, ``_row``, re-encode) writes; these tests check the lines
it writes against the slow path's record for each, that a body which is not one JSON
object is refused exactly as before, that resent records are written once (also across
a restart, from the output's compact lines) and that a tampered signed frame is refused.
"""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys
from typing import Any

import pytest

import mplog
from mplog._collector import Collector, _json_line
from mplog._text import one_line
from mplog._wires.mplog import MAC_SIZE, record_object
from tests.helpers import ROOT, MplogWireClient, Serve, env_with_root, wait_until
from tests.helpers import json_same as _same

_SEQ = struct.Struct(">Q")
#: A record's JSON object as senders encode it, keys and all (senders before
#: UNSENT_KEYS sent args, exc_info and message too): the collector must take both.
_legacy_encoder = json.JSONEncoder(separators=(",", ":"), default=repr)


def _enc(rec: dict[str, Any]) -> bytes:
    return _legacy_encoder.encode(rec).encode("ascii")


KEY = b"fast-path-test-key-0123456789abcdef"


def _deep(levels: int) -> dict[str, Any]:
    d: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        d = {"d": d}
    return d


_BASE = {"name": "fast", "levelno": 20, "levelname": "INFO", "msg": "hello", "created": 1.25}

#: (body, written as the sender's bytes?) -- a variety of records a sender writes.
RECORDS: list[tuple[bytes, bool]] = [
    (_enc(_BASE), True),
    (_enc({**_BASE, "msg": "caf\u00e9 \u2603 \U0001f600 \u2028 \x1b[31m"}), True),
    (_enc({**_BASE, "user": "ann", "tags": ["a", 1, None],
                        "ctx": {"k": [1, {"z": 2.5}]}}), True),
    (_enc({**_BASE, "exc_text": 'Traceback:\n  File "x.py"\nValueError: "q"'}),
     True),
    (_enc({**_BASE, "args": None, "exc_info": None}), True),  # a pipeline's
    (_enc({**_BASE, "args": None, "exc_info": None, "message": "hello"}), True),
    (_enc({**_BASE, "msg": 42}), False),  # _clean: msg becomes "42"
    (_enc({**_BASE, "msg": ["a"]}), False),
    (_enc({**_BASE, "args": [1, 2]}), False),  # _clean drops it
    (_enc({**_BASE, "mplog_sender": "forged", "mplog_seq": 1}), False),
    (_enc({**_BASE, **_deep(40)}), False),  # past 32 levels: placeholder
    (_enc({**_BASE, "f": float("nan"), "g": float("-inf")}), False),
    (b'{"msg":"a","f":1e400}', False),  # inf once parsed: written as "inf"
    (b'{"msg":"b","s":"caf\xc3\xa9"}', False),  # raw UTF-8: escaped by the slow path
    (b'{"msg":\n"c", "n" : 1}', False),  # valid JSON on two lines: rewritten on one
    (b'{"msg":"d","args":null,"args":"x"}', False),  # a dropped key twice
]


def _expected(body: bytes, sender: str, seq: int) -> dict[str, Any]:
    """The record the slow path writes for *body* (the collector's own functions)."""
    row = Collector._row(record_object(body))
    row["mplog_sender"] = sender
    row["mplog_seq"] = seq
    return json.loads(_json_line(row))


def _raw_lines(out: pathlib.Path) -> list[bytes]:
    return out.read_bytes().splitlines() if out.exists() else []


def _mine(out: pathlib.Path, sender: str) -> list[tuple[bytes, dict[str, Any]]]:
    rows = [(line, json.loads(line)) for line in _raw_lines(out)]
    return [(line, r) for line, r in rows if r.get("mplog_sender") == sender]


@pytest.fixture
def serve(tmp_path: pathlib.Path) -> Any:
    made: list[Serve] = []

    def start(*extra: str, out: pathlib.Path | None = None) -> Serve:
        srv = Serve(out or tmp_path / "out.jsonl", 0, *extra)
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop()


def test_the_lines_written_are_the_slow_paths_records(tmp_path: pathlib.Path, serve: Any) -> None:
    srv = serve()
    client = MplogWireClient(srv.port, "fast-variety")
    for i, (body, _) in enumerate(RECORDS):
        client.send(2 * (i + 1), body)
    client.acked(len(RECORDS))
    client.close()
    mine = _mine(srv.out, "fast-variety")
    assert len(mine) == len(RECORDS)
    splice = b',"mplog_sender":"fast-variety","mplog_seq":'
    for (line, rec), (body, passed), seq in zip(mine, RECORDS, range(2, 1000, 2), strict=False):
        assert rec["mplog_seq"] == seq
        assert _same(rec, _expected(body, "fast-variety", seq)), (body, line)
        assert line.count(b'"mplog_sender"') == 1 and line.count(b'"mplog_seq"') == 1
        if passed and b"args" not in body and b"message" not in body:
            # Written as the sender's bytes: the fast path ran (the slow path's lines
            # have spaces after separators).
            assert line == body[:-1] + splice + b"%d}" % seq
        elif not passed:
            assert b'", "' in line or b": " in line, line  # the slow path wrote it
    assert srv.terminate() == 0


@pytest.mark.parametrize("body", [
    b'{"msg":"a\nb"}',  # a raw newline inside a string
    b'{"msg":"a"}{"msg":"b","mplog_sender":"x"}',  # two objects
    b'{"msg":"a"}\n{"msg":"b"}',  # two lines
    b'{"msg":"a"},{"msg":"b"}',
    b'{"msg":"a",}',  # invalid JSON
    b'{"msg":"a\x01"}',  # a raw control character
    b'["not", "an", "object"]',
    b'{"msg":"caf\xe9"}',  # not UTF-8
], ids=["newline-in-string", "two-objects", "two-lines", "comma-joined", "trailing-comma",
        "control-char", "array", "latin-1"])
def test_a_body_that_is_not_one_json_object_is_refused_as_before(
        tmp_path: pathlib.Path, serve: Any, body: bytes) -> None:
    with pytest.raises(mplog.ProtocolError) as expected:
        record_object(body)  # the wire's words for it, as the slow path said them
    srv = serve()
    bad = MplogWireClient(srv.port, "fast-hostile")
    bad.send(2, body)
    assert bad.refusal() == one_line(str(expected.value), 500)
    bad.close()
    # Served on, nothing of the bad record written, the next client's record written.
    good = MplogWireClient(srv.port, "fast-next")
    good.send(2, b'{"msg":"fine"}')
    good.acked(1)
    good.close()
    assert srv.terminate() == 0
    assert [r["msg"] for _, r in _mine(srv.out, "fast-next")] == ["fine"]
    assert _mine(srv.out, "fast-hostile") == []
    assert len(_raw_lines(srv.out)) == 1
    assert "refusals: protocol=1" in srv.stderr()
    assert one_line(str(expected.value), 300)[:60] in srv.stderr()


def test_a_colliding_key_cannot_forge_the_sender_or_seq(serve: Any) -> None:
    srv = serve()
    client = MplogWireClient(srv.port, "fast-honest")
    client.send(2, b'{"msg":"x","mplog_sender":"someone-else","mplog_seq":99}')
    client.send(4, b'{"msg":"y","mplog_s\\u0065q":98}')  # the same key, escaped
    client.acked(2)
    client.close()
    assert srv.terminate() == 0
    lines = _raw_lines(srv.out)
    assert len(lines) == 2
    for line, seq in zip(lines, (2, 4), strict=True):
        rec = json.loads(line)
        assert (rec["mplog_sender"], rec["mplog_seq"]) == ("fast-honest", seq)
        # One of each key in the bytes too: a reader that keeps the first one is not fooled.
        assert line.count(b'"mplog_sender"') == 1
        assert line.count(b'"mplog_seq"') == 1 and b"mplog_s\\u0065q" not in line


def test_resent_records_are_written_once_across_reconnects_and_restarts(
        tmp_path: pathlib.Path, serve: Any) -> None:
    out = tmp_path / "out.jsonl"
    srv = serve(out=out)

    def send(seqs: list[int]) -> int:
        client = MplogWireClient(srv.port, "fast-resend")
        resume = client.session.resume_acked
        for seq in seqs:
            client.send(seq, _enc({**_BASE, "args": None, "i": seq}))
        client.acked(len(seqs))
        client.close()
        return resume

    assert send([2, 4, 6]) == 0
    assert send([2, 4, 6, 8, 10]) == 6  # a reconnect resends what was acknowledged
    wait_until(lambda: srv.count() == 5, 20, "5 lines")
    assert srv.terminate() == 0
    assert "3 duplicates suppressed" in srv.stderr()
    # A new collector on the same file reads the marks back from the compact lines.
    srv = serve(out=out)
    assert send([2, 4, 6, 8, 10, 12]) == 10
    assert srv.terminate() == 0
    assert "5 duplicates suppressed" in srv.stderr()
    assert [r["i"] for _, r in _mine(out, "fast-resend")] == [2, 4, 6, 8, 10, 12]
    assert all(b'"args"' not in line for line in _raw_lines(out))


@pytest.mark.parametrize("where", ["body", "seq", "mac"])
def test_hmac_on_a_tampered_frame_is_refused_and_not_written(
        tmp_path: pathlib.Path, serve: Any, where: str) -> None:
    keyfile = tmp_path / "key"
    keyfile.write_bytes(KEY)
    srv = serve("--hmac-key-file", str(keyfile))
    client = MplogWireClient(srv.port, "fast-signed", KEY)
    client.send(2, b'{"msg":"signed"}')
    client.acked(1)
    frame = bytearray(client.session.frame(_SEQ.pack(4) + b'{"msg":"tampered"}'))
    at = {"body": 4 + 1 + 8 + 9, "seq": 4 + 1 + 7, "mac": len(frame) - MAC_SIZE}[where]
    frame[at] ^= 0x01
    client.sock.sendall(bytes(frame))
    assert "wrong HMAC" in client.refusal()
    client.close()
    assert srv.terminate() == 0
    assert [r["msg"] for _, r in _mine(srv.out, "fast-signed")] == ["signed"]
    assert "hmac=1" in srv.stderr()


def test_bench_collector_only(tmp_path: pathlib.Path) -> None:
    """``mplog bench --collector-only`` runs part 2 alone (here with --quick)."""
    out = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", "mplog", "bench", "--collector-only", "--quick", "--out", str(out)],
        cwd=ROOT, env=env_with_root(), capture_output=True, text=True, timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = out.read_text()
    assert "The pipeline part was not run (`--collector-only`)." in report
    assert "### Side by side" not in report
    rows = [x for x in report.splitlines() if x.startswith("| mplog serve | mplog")]
    assert len(rows) == 2 and not any("failed" in r for r in rows), rows
    both = subprocess.run(
        [sys.executable, "-m", "mplog", "bench", "--collector-only", "--no-collector"],
        cwd=ROOT, env=env_with_root(), capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert both.returncode == 2
    assert both.stderr.strip().splitlines() == [
        "mplog bench: --collector-only and --no-collector leave nothing to run"]
