"""mplog._unpickle: the stdlib wire's records decode as pickle.loads would; attacks are
refused fast, with bounded memory, and only ever with ProtocolError."""

from __future__ import annotations

import logging
import logging.handlers
import pickle
import struct
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mplog._errors import ProtocolError
from mplog._unpickle import MAX_DEPTH, decode_record, jsonable, loads


def _record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("app.module", logging.WARNING, "/src/app.py", 42, "user %s did %d",
                            ("bob", 3), None, func="handler")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        rec.exc_text = logging.Formatter().formatException(sys.exc_info())
    rec.__dict__.update(extra)
    return rec


_EXTRAS: list[dict[str, object]] = [
    {},
    {"user": "bob", "req": 12345, "ratio": 0.25, "ok": True, "none": None},
    {"big": 2**63 + 5, "neg": -(2**40), "huge": 10**4000, "t": (1, "a", (2.5,)), "l": [1, [2, [3]]]},
    {"nested": {"a": {"b": {"c": [1, 2, {"d": None}]}}}, "ints": {1: "one", 2: "two"}},
    {"text": "é ü 中文 \U0001f600 \n\r\t \x1b[31m", "empty": "", "quote": "'\"\\"},
    {"same": "shared", "also": "shared", "lst": [0] * 3000},
]


@pytest.mark.parametrize("extra", _EXTRAS, ids=range(len(_EXTRAS)))
def test_socket_handler_records_decode_as_pickle_loads(extra: dict[str, object]) -> None:
    rec = _record(**extra)
    frame = logging.handlers.SocketHandler("127.0.0.1", 1).makePickle(rec)  # protocol 1
    (n,) = struct.unpack(">L", frame[:4])
    body = frame[4:]
    assert n == len(body)
    assert loads(body) == pickle.loads(body)
    d = dict(rec.__dict__)
    d["msg"], d["args"], d["exc_info"] = rec.getMessage(), None, None
    d.pop("message", None)
    for proto in range(6):
        data = pickle.dumps(d, proto)
        assert loads(data) == pickle.loads(data), proto
        row = decode_record(data)
        assert row["msg"] == "user bob did 3" and row["exc_text"] == rec.exc_text
        assert row["name"] == "app.module" and row["created"] == rec.created


def test_protocol_4_and_5_containers() -> None:
    value = {"s": {1, "a"}, "fs": frozenset({2}), "b": b"\x00\xff", "e": (), "t1": (1,),
             "t2": (1, 2), "t3": (1, 2, 3), "f": False}
    for proto in (4, 5):
        data = pickle.dumps(value, proto)
        assert loads(data) == pickle.loads(data)
    data = pickle.dumps({"ba": bytearray(b"xy")}, 5)
    assert loads(data) == {"ba": bytearray(b"xy")}
    row = decode_record(pickle.dumps(value, 4))
    assert sorted(row["s"], key=str) == [1, "a"] and row["b"] == "b'\\x00\\xff'"
    assert row["t3"] == [1, 2, 3] and row["e"] == []


def test_protocol_0_text_opcodes() -> None:
    value = {"i": 7, "big": 2**70, "f": 1.5, "s": "a\nb\\c é", "b": True, "n": None, "l": [1], "t": (2,)}
    data = pickle.dumps(value, 0)
    assert loads(data) == pickle.loads(data) == value
    assert loads(b"(dp0\nS'k'\np1\nS'v\\n'\np2\ns.") == {"k": "v\n"}  # STRING, PUT, SETITEM


def _tuple_key() -> bytes:
    # {"a": {(1, 2): 3}}: ~30 bytes; json.dumps raises TypeError on it.
    return pickle.dumps({"a": {(1, 2): 3}}, 1)


def _big_int() -> bytes:
    return b"}q\x00(X\x03\x00\x00\x00msgq\x01L" + b"9" * 5000 + b"L\nu."


def _deep_list(depth: int = 100_000) -> bytes:
    # ] ] ] ... then APPEND each into the one below: a list nested *depth* deep.
    return b"}X\x01\x00\x00\x00k" + b"]" * depth + b"a" * (depth - 1) + b"s."


def _deep_tuple_key(depth: int = 100_000) -> bytes:
    return b"}" + b"N" + b"\x85" * depth + b"Ns."  # {((((None,),),)...): None}


def _memo_bomb(levels: int = 60) -> bytes:
    # l0 = ["x" * 1000]; l(i+1) = [l(i), l(i)], each kept in the memo and popped: the
    # record's value has 2**60 references to l0 in ~1.3 KB.
    out = b"}X\x01\x00\x00\x00k]X\xe8\x03\x00\x00" + b"x" * 1000 + b"aq\x000"
    for i in range(levels):
        out += b"](h%ch%ceq%c0" % (i, i, i + 1)
    return out + b"h%cs." % levels


def _long_binput() -> bytes:
    return b"N" + b"r" + struct.pack("<I", 0x04000000) + b"."


def _global() -> bytes:
    return pickle.dumps({"x": logging.makeLogRecord({})}, 1)


ATTACKS = {
    "tuple_key": _tuple_key, "big_int": _big_int, "deep_list": _deep_list,
    "deep_tuple_key": _deep_tuple_key, "memo_bomb": _memo_bomb, "long_binput": _long_binput,
    "memo_bomb_shallow": lambda: _memo_bomb(25),  # 2**25 references, only 27 levels deep
    "global": _global,
    "reduce": lambda: b"cos\nsystem\n(S'true'\ntR.",
    "stack_global": lambda: pickle.dumps(struct.Struct, 4),
    "cycle": lambda: b"}q\x00X\x01\x00\x00\x00kh\x00s.",  # d["k"] = d
    "not_a_dict": lambda: pickle.dumps([1, 2], 1),
    "trailing": lambda: pickle.dumps({}, 1) + b"N",
    "no_stop": lambda: b"}",
    "huge_length": lambda: b"X\xff\xff\xff\xff",
    "marks": lambda: b"(" * 300_000,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_refused_fast_with_bounded_memory(name: str) -> None:
    data = ATTACKS[name]()
    assert len(data) < 400_000
    t0 = time.perf_counter()
    with pytest.raises(ProtocolError):
        decode_record(data)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"  # ~0.2 s at worst on this machine
    tracemalloc.start()  # again, measured (tracemalloc slows it ~15x)
    try:
        with pytest.raises(ProtocolError):
            decode_record(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"{name}: peak {peak} bytes"


def test_memo_bomb_is_small_and_stdlib_would_expand_it() -> None:
    data = _memo_bomb()
    assert len(data) < 2000
    value = pickle.loads(data)  # the stdlib happily builds the DAG (it is small shared)...
    depth, node = 0, value["k"]
    while isinstance(node, list) and len(node) == 2:
        assert node[0] is node[1]  # ...whose expansion has 2**60 leaves
        node, depth = node[0], depth + 1
    assert depth == 60


def test_memo_must_be_dense_and_bounded() -> None:
    with pytest.raises(ProtocolError, match="memo index"):
        loads(b"Nq\x05.")
    assert loads(b"Nq\x00q\x00h\x00\x86.") == (None, None)
    with pytest.raises(ProtocolError, match="never stored"):
        loads(b"h\x00.")


def test_depth_bound() -> None:
    ok: Any = "leaf"
    for _ in range(MAX_DEPTH - 1):
        ok = [ok]
    assert jsonable({"k": ok})["k"] is not None
    with pytest.raises(ProtocolError, match="deeper"):
        jsonable({"k": [ok]})
    relaxed = jsonable({"k": [ok]}, strict=False)
    node = relaxed["k"]
    while isinstance(node, list):
        node = node[0]
    assert node.startswith("<mplog: nested deeper")


def test_jsonable_output_is_json() -> None:
    import json

    row = jsonable({"n": float("nan"), "i": float("inf"), 1: 2, "d": {None: 1, True: 2, 1.5: 3}},
                   strict=False)
    text = json.dumps(row, allow_nan=False)
    assert json.loads(text) == {"n": "nan", "i": "inf", "1": 2, "d": {"null": 1, "true": 2, "1.5": 3}}


_valid = [pickle.dumps(dict(_record(**e).__dict__, args=None, exc_info=None), p)
          for e in _EXTRAS[:3] for p in (1, 2, 4)]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_valid), st.data())
def test_fuzz_mutated_pickles_raise_only_protocol_error(base: bytes, data: st.DataObject) -> None:
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if kind == "flip" and buf:
            buf[pos] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and buf:
            del buf[pos : pos + data.draw(st.integers(1, 8))]
        elif kind == "truncate":
            del buf[pos:]
    try:
        row = decode_record(bytes(buf))
    except ProtocolError:
        return
    import json

    json.dumps(row)  # whatever is accepted can be written


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        row = decode_record(data)
    except ProtocolError:
        return
    assert isinstance(row, dict)
