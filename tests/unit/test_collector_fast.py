"""The collector's passthrough of mplog-wire records (mplog/_collector.py, ``_passthrough``)
and the wire's unparsed receive (``ServerConnection.receive_batch``).

The rule under test: a record written as the sender's bytes (sender and seq spliced in)
is the same record the slow path (parse, ``_row``, re-encode) writes, and everything the
slow path would rewrite or refuse goes to the slow path. ``receive_batch`` refuses every
frame ``receive`` refuses, with the same words.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Any

import pytest

from mplog import _collector
from mplog._collector import Collector, _json_line, _passthrough, _strict_loads_stdlib
from mplog._errors import ProtocolError
from mplog._wires.mplog import (
    MAC_SIZE,
    UNSENT_KEYS,
    ClientSession,
    Close,
    Hello,
    Record,
    RecordBatch,
    ServerConnection,
    record_object,
    record_payload,
)
from tests.helpers import json_same as _same

SENDER = "fast-test"
SPLICE = f',"mplog_sender":"{SENDER}","mplog_seq":'.encode()

_BASE = {"name": "app", "levelno": 20, "levelname": "INFO", "msg": "hello", "created": 1.5}


def _deep(levels: int) -> dict[str, Any]:
    d: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        d = {"d": d}
    return d


#: How a sender encodes a record's JSON object (record_payload), keys and all: what
#: senders before UNSENT_KEYS sent (args, exc_info, message included).
_legacy_encoder = json.JSONEncoder(separators=(",", ":"), default=repr)


def _enc(rec: dict[str, Any]) -> bytes:
    return _legacy_encoder.encode(rec).encode("ascii")


#: (body, passed through?) for records a sender writes and records it should not (None:
#: either is right, as long as the line is the same: it depends on the validator).
CORPUS: list[tuple[bytes, bool | None]] = [
    (_enc(_BASE), True),
    (_enc({**_BASE, "msg": "caf\u00e9 \u2603 \U0001f600 \u2028"}), True),  # escaped: ASCII
    (_enc({**_BASE, "user": "ann", "n": 3, "tags": ["a", "b"], "ctx": {"k": [1, {"z": None}]}}),
     True),
    (_enc({**_BASE, "exc_text": "Traceback (most recent call last):\n  File \"x\"\nValueError: x"}),
     True),
    (_enc({**_BASE, "msg": 42}), False),  # non-str msg: _clean makes it "42"
    (_enc({**_BASE, "msg": {"a": 1}}), False),
    (_enc({**_BASE, "msg": None}), False),
    # The keys _clean drops, cut out of the bytes when that is exact:
    (_enc({**_BASE, "args": None, "exc_info": None, "message": "hello"}), True),
    (_enc({**_BASE, "args": None, "exc_info": None}), True),  # what a pipeline sends
    (_enc({"args": None, **_BASE}), False),  # the first member: no comma before it
    (_enc({**_BASE, "message": "caf\u00e9 \"q\" \\ \n", "exc_info": None}), True),
    (_enc({**_BASE, "args": [1, 2]}), False),  # not null or a string
    (_enc({**_BASE, "args": None, "ctx": {"a": 1}}), False),  # a container inside
    (_enc({**_BASE, "args": None, "note": '"args"'}), True),  # escaped quotes: not a key
    (_enc({**_BASE, "args": None, "note": ',"args":null'}), True),
    (_enc({**_BASE, "args": None, "note": '"args'}), True),  # '"args"' in a string
    (_enc({**_BASE, "args": None, "note": '"args, x'}), True),  # and a comma: searched
    (_enc({**_BASE, "args": None, "note": 'x, "args"'}), True),
    (_enc({**_BASE, "args": None, "note": 'x,"args":null'}), True),  # the member's bytes, escaped
    (b'{"msg":"a","args":null,"args":null}', None),  # a key twice, the same value
    (b'{"msg":"a","args":"x","args":null}', False),  # twice, another value: one left
    (b'{"msg":"a","args":null,"args":"x"}', False),
    (b'{"msg":"a","message":"x","message":"y"}', False),
    (b'{"msg":"a","args" : null}', False),  # not compact: not found, slow path
    (b'{"msg":"a","message":"\\u0041"}', False),  # not the stdlib's escaping
    (b'{"msg":"a","exc_info":null}', True),
    (b'{"msg":"a","exc_info":null,"b":2}', True),
    (b'{"msg":"a","exc_info":null,"b":2,"args":null}', True),  # apart: cut piece by piece
    (b'{"msg":"a","message":"m","b":2,"args":null,"exc_info":null}', True),
    (_enc({**_BASE, "mplog_sender": "forged"}), False),  # set by the collector
    (_enc({**_BASE, "mplog_seq": 7}), False),
    (_enc(_deep(32)), True),  # 32 levels, the record included: kept as it is
    (_enc(_deep(33)), False),  # the 33rd level becomes a placeholder
    (_enc({**_BASE, "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}), False),
    (_enc({**_BASE, "f": float("nan")}), False),  # NaN: written as "nan" by the slow path
    (_enc({**_BASE, "f": float("inf")}), False),
    (_enc({**_BASE, "f": float("-inf")}), False),
    (b'{"msg":"a","f":1e400}', False),  # overflows to inf in json.loads
    (b'{"msg":"a","f":-1E+309}', False),
    (b'{"msg":"a","f":' + b"9" * 320 + b'.5}', False),
    (b'{"msg":"a","f":1e308}', None),  # finite; the stdlib check is conservative
    (b'{"msg":"a","big":' + b"9" * 100 + b"}", True),  # a big int: exact either way
    (b'{"msg":"a","lone":"\\ud800"}', None),  # a lone surrogate: orjson refuses it
    (b"{}", False),  # nothing to splice into
    (b'{"msg":"a"} ', False),  # trailing space: not ending in "}"
    (b' {"msg":"a"}', False),
    (b'{"msg":\n"a"}', False),  # valid JSON on two lines: re-encoded on one
    (b'{"msg":\r"a"}', False),
    (b'{"msg":\t"a"}', True),  # a tab between tokens is JSON whitespace, on one line
    (b'{"msg" : "a" , "b" : 1 }', True),
    (b'{"msg":"caf\xc3\xa9"}', False),  # raw UTF-8: the slow path escapes it
    (b'{"msg":"a","msg":"b"}', True),  # duplicate keys: the last one wins either way
    (b'{"msg":1,"msg":"b"}', True),
    (b'{"msg":"b","msg":1}', False),
    (b'{"\\u006dplog_seq":1}', False),  # an escaped colliding key is still that key
    (b'{"a":"x\\u0000y\\"z\\\\"}', True),
]

#: Bodies that are not one JSON object: refused, in the wire's words, on either path.
INVALID = [
    b'{"msg":"a\nb"}',  # a raw newline inside a string
    b'{"a":1}{"b":2}',  # two objects
    b'{"a":1}\n{"b":2}',
    b'{"a":1},{"b":2}',
    b'{"a":1',
    b'{"a":1,}',
    b'{"a":"x\ty"}',  # a raw control character in a string
    b'{"a":01}',
    b'{"a":' + b"9" * 5000 + b"}",  # more digits than json.loads reads
    b"[1]",
    b'"x"',
    b"\xff\xfe",
]


def _slow_line(body: bytes, seq: int) -> dict[str, Any]:
    row = Collector._row(record_object(body))
    row["mplog_sender"] = SENDER
    row["mplog_seq"] = seq
    return json.loads(_json_line(row))


def _fast_line(body: bytes, seq: int) -> bytes:
    head = _passthrough(body)
    assert head is not None
    return b"%b%b%d}\n" % (head, SPLICE, seq)


@pytest.fixture(params=["default", "stdlib"])
def validator(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both validating parsers: orjson when installed (the default), and the stdlib one."""
    if request.param == "stdlib":
        monkeypatch.setattr(_collector, "_strict_loads", _strict_loads_stdlib)
    return str(request.param)


@pytest.mark.parametrize(("body", "fast"), CORPUS, ids=[str(i) for i in range(len(CORPUS))])
def test_passthrough_writes_what_the_slow_path_writes(validator: str, body: bytes,
                                                      fast: bool | None) -> None:
    passed = _passthrough(body) is not None
    if fast is not None:
        assert passed is fast
    slow = _slow_line(body, 12345)
    if passed:
        line = _fast_line(body, 12345)
        assert line.count(b"\n") == 1 and line.endswith(b"}\n")
        assert _same(json.loads(line), slow)
    # Whichever path, one record whose sender and seq are the collector's.
    assert slow["mplog_sender"] == SENDER and slow["mplog_seq"] == 12345


def test_a_record_as_mplog_sends_it_is_passed_through() -> None:
    import logging

    from mplog._record import prepare_dict

    rec = logging.getLogger("x").makeRecord("x", logging.INFO, "/a.py", 1, "n %d", (5,), None)
    d = prepare_dict(rec)
    assert "args" in d and "exc_info" in d and "message" in d
    body = record_payload(0, d)[8:]
    # Today's sender leaves out what the collector drops: nothing to cut, bytes as sent.
    assert b'"args"' not in body and b'"exc_info"' not in body and b'"message"' not in body
    assert _passthrough(body) == body[:-1]
    assert _same(json.loads(_fast_line(body, 7)), _slow_line(body, 7))
    # An older sender sent them: the collector writes the very same line for its record.
    legacy = _enc(d)
    assert b'"args":null' in legacy and b'"message":' in legacy
    assert _fast_line(legacy, 7) == _fast_line(body, 7)
    assert _slow_line(legacy, 7) == _slow_line(body, 7)


def test_record_payload_leaves_out_only_the_unsent_keys() -> None:
    rec = {**_BASE, "args": [1, 2], "exc_info": None, "message": "m", "user": "ann"}
    sent = json.loads(record_payload(9, rec)[8:])
    assert sent == {k: v for k, v in rec.items() if k not in UNSENT_KEYS}
    assert list(sent) == ["name", "levelno", "levelname", "msg", "created", "user"]
    assert "args" in rec  # the caller's dict is left as it was


def test_the_slow_path_rewrites_what_passthrough_refuses() -> None:
    # Each guard exists because the slow path changes the record: if it did not, the
    # guard would be dead weight. (Checked here so a change of _row shows up.)
    assert _slow_line(_enc({**_BASE, "msg": 42}), 1)["msg"] == "42"
    assert "args" not in _slow_line(_enc({**_BASE, "args": [1]}), 1)
    assert "message" not in _slow_line(_enc({**_BASE, "message": "x"}), 1)
    assert _slow_line(_enc({**_BASE, "mplog_sender": "forged"}), 1)["mplog_sender"] == SENDER
    assert _slow_line(_enc({**_BASE, "f": float("nan")}), 1)["f"] == "nan"
    assert _slow_line(b'{"f":1e400}', 1)["f"] == "inf"
    deep = _slow_line(_enc(_deep(33)), 1)
    for _ in range(31):
        deep = deep["d"]
    assert deep == {"d": "<mplog: nested deeper than 32 levels>"}


@pytest.mark.parametrize("body", INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_bodies_are_never_passed_through(validator: str, body: bytes) -> None:
    assert _passthrough(body) is None
    with pytest.raises(ProtocolError, match=r"^record is not (valid JSON|a JSON object)"):
        record_object(body)


def _mutants(n: int, seeds: list[bytes] | None = None, seed: int = 1234) -> list[bytes]:
    rng = random.Random(seed)
    seeds = seeds or [b for b, _ in CORPUS] + INVALID
    alphabet = b'{}[]",:\\ \t\n0123456789.eE+-abcnlrstuftrue\x00\x7f\xc3\xa9'
    out = []
    for _ in range(n):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(body) + 1)
            op = rng.random()
            if op < 0.4 and body:
                del body[min(i, len(body) - 1)]
            elif op < 0.8:
                body.insert(i, rng.choice(alphabet))
            else:
                body[i:i] = rng.choice(seeds)[: rng.randint(1, 12)]
        out.append(bytes(body))
    return out


MUTANTS = _mutants(20000)


def test_fuzzed_bodies_passed_through_are_what_the_slow_path_writes(validator: str) -> None:
    passed = 0
    for data in MUTANTS:
        if _passthrough(data) is not None:
            passed += 1
            # record_object raises (and fails the test) if the slow path refuses it.
            assert _same(json.loads(_fast_line(data, 1)), _slow_line(data, 1)), data
    assert passed > 1000, passed  # the fuzz reached passed-through bodies often


def test_orjson_accepts_nothing_json_loads_refuses() -> None:
    """The default validator may be stricter than json.loads (those records take the
    slow path), never looser: fuzzed around the corpus."""
    orjson = pytest.importorskip("orjson")
    accepted = 0
    for data in MUTANTS:
        try:
            orjson.loads(data)
        except ValueError:
            continue
        accepted += 1
        json.loads(data)  # raises (fails the test) if json.loads refuses it
    assert accepted > 1000, accepted


# -- the wire: receive_batch against receive -------------------------------------------------


def _pair(key: bytes | None) -> tuple[ServerConnection, ClientSession]:
    server = ServerConnection(key, 1024, max_frame=4096)
    client = ClientSession(SENDER, key, 1024, nonce=b"c" * 16)
    events = server.receive_batch(client.handshake())
    assert isinstance(events.hello, Hello) and not events.seqs
    client.receive(server.welcome(0, 1024, nonce=b"s" * 16))
    assert client.ready
    return server, client


def _twin(key: bytes | None) -> tuple[ServerConnection, ServerConnection, ClientSession]:
    # Two servers in the same state: one read with receive, one with receive_batch.
    a = ServerConnection(key, 1024, max_frame=4096)
    b = ServerConnection(key, 1024, max_frame=4096)
    client = ClientSession(SENDER, key, 1024, nonce=b"c" * 16)
    hs = client.handshake()
    assert isinstance(a.receive(hs)[0], Hello)
    assert b.receive_batch(hs).hello is not None
    w = a.welcome(0, 1024, nonce=b"s" * 16)
    assert b.welcome(0, 1024, nonce=b"s" * 16) == w
    client.receive(w)
    return a, b, client


def _both(a: ServerConnection, b: ServerConnection, data: bytes) -> tuple[Any, Any]:
    """(events of receive, batch of receive_batch) or the error text of each."""
    try:
        ra: Any = a.receive(data)
    except ProtocolError as exc:
        ra = f"error: {exc}"
    try:
        rb: Any = b.receive_batch(data)
    except ProtocolError as exc:
        rb = f"error: {exc}"
    return ra, rb


def _as_events(batch: RecordBatch) -> list[Any]:
    out: list[Any] = [Record(s, record_object(body))
                      for s, body in zip(batch.seqs, batch.bodies, strict=True)]
    if batch.close:
        out.append(Close())
    return out


@pytest.mark.parametrize("key", [None, b"k" * 32], ids=["no-key", "hmac"])
def test_batch_gets_what_receive_gets_in_any_cut(key: bytes | None) -> None:
    a, b, client = _twin(key)
    stream = b"".join(client.frame(record_payload(seq, {"msg": f"m{seq}", "i": seq}))
                      for seq in range(2, 202, 2)) + client.close_frame()
    rng = random.Random(7)
    got_a: list[Any] = []
    got_b: list[Any] = []
    i = 0
    while i < len(stream):
        n = rng.choice([1, 3, 17, 200, 999, 5000])
        ra, rb = _both(a, b, stream[i : i + n])
        got_a += ra
        got_b += _as_events(rb)
        i += n
    assert got_a == got_b
    assert [e.seq for e in got_b if isinstance(e, Record)] == list(range(2, 202, 2))
    assert isinstance(got_b[-1], Close)


def _raw_frame(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">L", len(body) + 1) + kind + body


_SEQ = struct.Struct(">Q")


@pytest.mark.parametrize("bad", [
    _raw_frame(b"R", _SEQ.pack(4) + b'{"a":1}') + _raw_frame(b"R", _SEQ.pack(4) + b'{"a":1}'),
    _raw_frame(b"R", _SEQ.pack(9) + b'{"a":1}') + _raw_frame(b"R", _SEQ.pack(3) + b'{"a":1}'),
    _raw_frame(b"R", _SEQ.pack(0) + b'{"a":1}'),
    _raw_frame(b"R", _SEQ.pack(1 << 63) + b'{"a":1}'),
    _raw_frame(b"R", _SEQ.pack(5) + b"{"),
    _raw_frame(b"R", b"\x00" * 4),
    _raw_frame(b"X", b"whatever"),
    _raw_frame(b"H", b"{}"),
    _raw_frame(b"C", b"") + _raw_frame(b"R", _SEQ.pack(5) + b'{"a":1}'),
    struct.pack(">L", 0),
    struct.pack(">L", 4097) + b"R",
], ids=["seq-repeated", "seq-backwards", "seq-0", "seq-2**63", "too-short", "no-seq-room",
        "unknown-type", "second-hello", "after-close", "empty-frame", "too-large"])
def test_batch_refuses_what_receive_refuses_in_the_same_words(bad: bytes) -> None:
    a, b, _ = _twin(None)
    ra, rb = _both(a, b, bad)
    assert isinstance(rb, str) and rb.startswith("error: "), rb
    assert ra == rb


@pytest.mark.parametrize("where", ["type", "seq", "body", "mac", "position"])
def test_batch_refuses_a_tampered_or_moved_frame(where: str) -> None:
    a, b, client = _twin(b"k" * 32)
    frames = [client.frame(record_payload(seq, {"msg": "m"})) for seq in (2, 4)]
    f = bytearray(frames[0])
    if where == "type":
        f[4] = ord("C")
    elif where == "seq":
        f[12] ^= 1
    elif where == "body":
        f[-MAC_SIZE - 3] ^= 1
    elif where == "mac":
        f[-1] ^= 1
    data = frames[1] if where == "position" else bytes(f)  # frame 2 at frame 1's place
    ra, rb = _both(a, b, data)
    assert rb == ra
    assert isinstance(rb, str) and "wrong HMAC" in rb
    # Untouched, the same frames pass.
    _, b2, client2 = _twin(b"k" * 32)
    ok = b2.receive_batch(b"".join(client2.frame(record_payload(s, {"msg": "m"})) for s in (2, 4)))
    assert ok.seqs == [2, 4]


def test_batch_keeps_a_partial_frame_for_the_next_read_only() -> None:
    server, client = _pair(None)
    whole = client.frame(record_payload(2, {"msg": "m"}))
    first = server.receive_batch(whole[:7])
    assert not first.seqs and not first.close
    second = server.receive_batch(whole[7:] + client.frame(record_payload(4, {"msg": "n"}))[:3])
    assert second.seqs == [2] and second.bodies == [b'{"msg":"m"}']
    assert server.receive_batch(b"").close


# -- one validating parse per read: _passthrough_batch against _passthrough ------------------


def _valid_alone(body: bytes) -> bool:
    try:
        record_object(body)
    except ProtocolError:
        return False
    return True


def _check_batch(bodies: list[bytes]) -> bool:
    """_passthrough_batch gives what _passthrough gives each body, or None (then the
    caller takes them one by one); it never passes a body that is not valid alone.
    True if the batch was taken."""
    heads = _collector._passthrough_batch(bodies)
    if heads is None:
        return False
    assert all(_valid_alone(b) for b in bodies), bodies
    assert heads == [_passthrough(b) for b in bodies], bodies
    return True


def _flat(i: int) -> bytes:
    return record_payload(0, {**_BASE, "msg": f"m {i} }} , \t \\ \"", "i": i, "f": i / 3,
                              "ok": i % 2 == 0, "none": None})[8:]


def test_a_read_of_flat_records_is_validated_in_one_parse(validator: str) -> None:
    bodies = [_flat(i) for i in range(300)]
    assert _check_batch(bodies)
    assert _check_batch(bodies[:1])
    # Older senders' dropped keys are cut as _passthrough cuts them.
    legacy = [_enc({**_BASE, "i": i, "args": None, "exc_info": None, "message": "x"})
              for i in range(50)]
    assert _check_batch(legacy)
    # A record _passthrough leaves to the slow path gets None in its place, the rest pass.
    mixed = [*bodies[:5], _enc({**_BASE, "msg": 42}), _enc({**_BASE, "mplog_seq": 1}),
             b"{}", *bodies[5:10]]
    heads = _collector._passthrough_batch(mixed)
    assert heads is not None and heads[5:8] == [None, None, None]
    assert _check_batch(mixed)


@pytest.mark.parametrize("bodies", [
    # Bodies that are not one JSON object each but join into a list of as many objects:
    # each must fail the batch (and be refused alone).
    [b'{"k":"}', b'{"}', b"{},{}"],  # a string across two bodies, two objects in one
    [b'{"k":[{}', b"{}]}", b"{},{}"],  # an array across two bodies
    [b'{"a":1', b'"b":2}', b"{},{}"],  # an object across two bodies
    [b'{"a":"x', b'{y"}'],  # a string across: the tab separator is refused in it
    [b'{"a":"}', b'{"}', b'{"x":1},"}"'],  # across, and one body of a dict and a str
    [b'{"a":1}', _enc({"x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})],
    [b'{"a":1}}', b'{"b":2}'],  # a brace too many
    [b'{"a":1},{"b":2}', b'{"c":3}'],  # two objects in one
    [b'{"a":1}', b'{"b":2}{'],
    [b'{"a":1}', b"{", b"}"],
    [b'{"a":1}', b"{}]"],
    [b'{"a":1}', b'{"b":2]'],
    [b'{"a":1}', b'{"b":"\t"}'],  # a raw tab inside a string
    [b'{"a":1}', b'{"b":1e400}'],  # would be inf
    [b'{"a":1}', b'{"b":NaN}'],
    [b'{"a":1}', b'{"b":"\\ud800"}'],  # a lone surrogate: orjson refuses the batch
    [b'{"a":1}', b'{"b":"caf\xc3\xa9"}'],  # not ASCII
    [b'{"a":1}', b'{"b":\n2}'],  # a line break: the slow path writes it on one line
    [b'{"a":1}', b'{"b":{"c":2}}'],  # nested: one by one
    [b'{"a":1}', b'{"b":"{"}'],  # a "{" in a string: one by one
    [b'{"a":1}', _enc({**_BASE, "msg": "x" * 250_000})],  # longer than _passthrough takes
], ids=["string-across", "array-across", "object-across", "string-tab", "string-across-2",
        "deep-array", "brace-too-many",
        "two-in-one", "open-brace", "split-object", "bracket", "bracket-in-object", "raw-tab",
        "overflow", "nan", "surrogate", "utf-8", "newline", "nested", "brace-in-string",
        "long"])
def test_a_batch_that_is_not_one_object_per_body_is_never_taken(
        validator: str, bodies: list[bytes]) -> None:
    heads = _collector._passthrough_batch(bodies)
    if all(_valid_alone(b) for b in bodies):
        assert heads is None or heads == [_passthrough(b) for b in bodies]
    else:
        assert heads is None
    _check_batch(bodies)


def test_fuzzed_batches_are_taken_only_when_each_body_is_right(validator: str) -> None:
    rng = random.Random(99)
    flat = [_flat(i) for i in range(40)] + [b for b, _ in CORPUS if b"[" not in b]
    # Flat bodies cut, spliced and mixed with each other: what could join wrongly.
    mutants = _mutants(4000, [*flat, b'{"a":"', b'"}', b"},{", b'{"b":[', b"]}"], seed=5)
    taken = 0
    for _ in range(4000):
        k = rng.randint(1, 6)
        bodies = [rng.choice(flat if rng.random() < 0.7 else mutants) for _ in range(k)]
        taken += _check_batch(bodies)
    assert taken > 500, taken  # the fuzz reached taken batches often
