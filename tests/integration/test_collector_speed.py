"""`mplog serve`'s one-parse-per-read path on the mplog wire (``_passthrough_batch``), and
the de-duplication of a read as a prefix (``bisect``), with real collectors on real sockets.

What a read of many records must give, whichever path each record takes: each line the
record the slow path (parse, ``_row``, re-encode) writes, today's senders' records (no
``args``/``exc_info``/``message``) written as their own bytes with the sender and seq
spliced in, older senders' records the very same lines, every record once (a resend in
the same read included, across spool epochs too), and a read with one body that is not
one JSON object neither written nor acknowledged.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

import mplog
from mplog import _collector
from mplog._collector import Collector, _json_line
from mplog._text import one_line
from mplog._wires.mplog import EPOCH_SHIFT, record_object, record_payload
from tests.helpers import MplogWireClient, Serve, wait_until
from tests.helpers import json_same as _same

_legacy_encoder = json.JSONEncoder(separators=(",", ":"), default=repr)
_BASE = {"name": "speed", "levelno": 20, "levelname": "INFO", "pathname": "/a/b.py",
         "lineno": 7, "created": 1796137497.78741, "exc_text": None, "stack_info": None}


def _new(i: int) -> bytes:
    """A record as today's sender encodes it."""
    return record_payload(0, {**_BASE, "msg": f"request {i} done }} , \"q\"", "i": i,
                              "args": None, "exc_info": None, "message": "x"})[8:]


def _legacy(i: int) -> bytes:
    """The same record as an older sender encoded it (args, exc_info, message sent)."""
    return _legacy_encoder.encode({**_BASE, "msg": f"request {i} done }} , \"q\"", "i": i,
                                   "args": None, "exc_info": None,
                                   "message": "x"}).encode("ascii")


def _expected(body: bytes, sender: str, seq: int) -> dict[str, Any]:
    row = Collector._row(record_object(body))
    row["mplog_sender"] = sender
    row["mplog_seq"] = seq
    return dict(json.loads(_json_line(row)))


def _lines(out: pathlib.Path) -> list[bytes]:
    return out.read_bytes().splitlines() if out.exists() else []


@pytest.fixture
def serve(tmp_path: pathlib.Path) -> Any:
    made: list[Serve] = []

    def start(*extra: str) -> Serve:
        srv = Serve(tmp_path / "out.jsonl", 0, *extra)
        made.append(srv)
        return srv

    yield start
    for srv in made:
        srv.stop()


def test_a_big_read_gives_the_slow_paths_records_in_the_senders_bytes(serve: Any) -> None:
    srv = serve()
    records: list[tuple[int, bytes]] = []
    for i in range(1, 1501):
        body = _new(i) if i % 3 else _legacy(i)
        if i % 250 == 0:
            body = _legacy_encoder.encode({**_BASE, "msg": i}).encode()  # msg not a str
        records.append((2 * i, body))
    client = MplogWireClient(srv.port, "speed-big", window=100_000)
    client.send_all(records)
    client.acked(len(records))
    client.close()
    assert srv.terminate() == 0
    lines = _lines(srv.out)
    assert len(lines) == len(records)
    splice = b',"mplog_sender":"speed-big","mplog_seq":'
    for line, (seq, body) in zip(lines, records, strict=True):
        rec = json.loads(line)
        assert _same(rec, _expected(body, "speed-big", seq)), line
        if rec["msg"] == str(seq // 2):  # the slow path's record: re-encoded
            assert b'", "' in line
        else:  # the sender's bytes, what was dropped cut out: one line whatever the sender
            assert line == _new(seq // 2)[:-1] + splice + b"%d}" % seq
            assert b'"args"' not in line and b'"message"' not in line


def test_a_resend_in_one_read_is_written_once(serve: Any) -> None:
    srv = serve()
    first = MplogWireClient(srv.port, "speed-resend", window=100_000)
    first.send_all([(2 * i, _new(i)) for i in range(1, 301)])
    first.acked(300)
    first.close()
    # A reconnect resends the 300 (acknowledged, but the sender may not know) and more.
    again = MplogWireClient(srv.port, "speed-resend", window=100_000)
    assert again.session.resume_acked == 600
    again.send_all([(2 * i, _new(i)) for i in range(1, 701)])
    again.acked(700)
    again.close()
    wait_until(lambda: srv.count() == 700, 20, "700 lines")
    assert srv.terminate() == 0
    assert [json.loads(x)["mplog_seq"] for x in _lines(srv.out)] == list(range(2, 1401, 2))
    assert "300 duplicates suppressed" in srv.stderr()


def test_a_read_across_spool_epochs_is_deduplicated_per_epoch(serve: Any) -> None:
    srv = serve()
    e1, e2 = 1 << EPOCH_SHIFT, 2 << EPOCH_SHIFT
    first = MplogWireClient(srv.port, "speed-epochs", window=100_000)
    first.send_all([(e2 + 2 * i, _new(i)) for i in range(1, 11)])  # epoch 2 up to e2+20
    first.acked(10)
    first.close()
    # One read: epoch 1 (older, never written: all new), then epoch 2 from its start
    # (the first 10 are written already).
    sent = [(e1 + 2 * i, _new(i)) for i in range(1, 21)] + [
        (e2 + 2 * i, _new(i)) for i in range(1, 31)]
    second = MplogWireClient(srv.port, "speed-epochs", window=100_000)
    second.send_all(sent)
    second.acked(len(sent))
    second.close()
    wait_until(lambda: srv.count() == 10 + 20 + 20, 20, "50 lines")
    assert srv.terminate() == 0
    seqs = [json.loads(x)["mplog_seq"] for x in _lines(srv.out)]
    assert seqs == ([e2 + 2 * i for i in range(1, 11)] + [e1 + 2 * i for i in range(1, 21)]
                    + [e2 + 2 * i for i in range(11, 31)])
    assert "10 duplicates suppressed" in srv.stderr()


def test_one_bad_body_in_a_big_read_refuses_the_read(serve: Any) -> None:
    srv = serve()
    bad = b'{"msg":"a"},{"msg":"b"}'
    with pytest.raises(mplog.ProtocolError) as expected:
        record_object(bad)
    client = MplogWireClient(srv.port, "speed-bad", window=100_000)
    records = [(2 * i, _new(i)) for i in range(1, 41)]
    records[20] = (42, bad)
    client.send_all(records)
    assert client.refusal() == one_line(str(expected.value), 500)
    client.close()
    assert srv.terminate() == 0
    # What was read with the bad body is not written; a read before it may have been
    # (a collector reads what the socket has), each of those whole and in order.
    lines = _lines(srv.out)
    assert [json.loads(x)["mplog_seq"] for x in lines] == list(range(2, 2 * len(lines) + 1, 2))
    assert len(lines) < 20
    assert "refusals: protocol=1" in srv.stderr()


def test_flat_records_take_the_one_parse_path(tmp_path: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch path is what runs for today's flat records (else this speed-up is not
    there): the per-record validator is never called for them; a nested record in a
    read sends that read one record at a time, with the same lines."""
    calls: list[bytes] = []
    per_record = _collector._passthrough

    def counted(body: bytes) -> bytes | None:
        calls.append(body)
        return per_record(body)

    monkeypatch.setattr(_collector, "_passthrough", counted)
    out = tmp_path / "out.jsonl"
    collector = mplog.Collector(port=0, output=str(out))
    collector.start()
    try:
        client = MplogWireClient(collector.port, "speed-inproc", window=100_000)
        client.send_all([(2 * i, _new(i)) for i in range(1, 501)])
        client.acked(500)
        assert calls == []
        nested = _legacy_encoder.encode({**_BASE, "msg": "n", "ctx": {"k": [1]}}).encode()
        client.send_all([(1002, nested)])
        client.acked(1)
        assert calls == [nested]
        client.close()
    finally:
        collector.stop()
    lines = _lines(out)
    assert len(lines) == 501
    assert _same(json.loads(lines[-1]), _expected(nested, "speed-inproc", 1002))
    assert collector.stats["records"] == 501
