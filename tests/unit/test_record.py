from __future__ import annotations

import json
import logging
import sys
import threading

from hypothesis import given
from hypothesis import strategies as st

from mplog import ProtocolError
from mplog._record import decode, encode, make_record, prepare_dict, record_dict


def _record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("unit.record")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 10, msg, args, None, "fn", extra or None)


def _roundtrip(rec: logging.LogRecord) -> dict[str, object]:
    frame = encode(rec)
    fields = decode(frame[4:])
    assert isinstance(fields, list)
    return record_dict(fields)


def test_standard_fields_survive() -> None:
    rec = _record()
    d = _roundtrip(rec)
    assert d["msg"] == d["message"] == "hello world"
    assert d["args"] is None and d["exc_info"] is None
    for k in ("name", "levelno", "levelname", "created", "msecs", "process", "processName",
              "thread", "threadName", "pathname", "filename", "lineno", "funcName", "module"):
        assert d[k] == getattr(rec, k), k


def test_receiver_formatter_renders_as_locally() -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(funcName)s %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 5, "failed %d", (3,), sys.exc_info())
    local = fmt.format(logging.makeLogRecord(dict(rec.__dict__)))
    remote = fmt.format(make_record(_roundtrip(rec)))
    assert remote == local
    assert "ValueError: boom" in remote


def test_caller_record_is_not_modified() -> None:
    try:
        raise KeyError("k")
    except KeyError:
        rec = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 5, "m %s", (1,), sys.exc_info())
    before = dict(rec.__dict__)
    encode(rec)
    prepare_dict(rec)
    assert rec.__dict__ == before


def test_extras_json_kept_others_repr() -> None:
    lock = threading.Lock()

    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    rec = _record(nested={"a": [1, 2, {"b": None}]}, lock=lock, bad=BadRepr(), n=1.5)
    d = _roundtrip(rec)
    assert d["nested"] == {"a": [1, 2, {"b": None}]}
    assert d["n"] == 1.5
    assert d["lock"] == repr(lock)
    assert isinstance(d["bad"], str) and d["bad"].startswith("<unrepresentable ")
    assert "BadRepr" in d["bad"] and "RuntimeError" in d["bad"]


def test_bad_format_args_do_not_raise() -> None:
    rec = _record("%d items", ("not a number",))
    d = _roundtrip(rec)
    assert "'%d items'" in str(d["msg"]) and "formatting failed" in str(d["msg"])


def test_unpicklable_args_are_merged() -> None:
    lock = threading.Lock()
    d = _roundtrip(_record("lock: %s", (lock,)))
    assert d["msg"] == f"lock: {lock}"


def test_an_extra_never_overrides_a_standard_field() -> None:
    fields = decode(encode(_record())[4:])
    assert isinstance(fields, list)
    fields[-1] = {"levelno": 99, "ok": 1}
    d = record_dict(fields)
    assert d["levelno"] == logging.INFO and d["ok"] == 1


def test_non_ascii_and_surrogates() -> None:
    d = _roundtrip(_record("héllo %s", ("\udcff wörld ✓",)))
    assert d["msg"] == "héllo \udcff wörld ✓"


def test_prepare_dict_matches_the_wire() -> None:
    rec = _record(x={"y": 1})
    assert prepare_dict(rec) == _roundtrip(rec)


def test_control_messages_decode_as_dicts() -> None:
    assert decode(json.dumps({"op": "stats"}).encode()) == {"op": "stats"}


@given(st.binary(max_size=500))
def test_fuzz_decode_only_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        return


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(), c, max_size=5), max_leaves=20))
def test_fuzz_json_shaped_garbage_only_protocol_error(value: object) -> None:
    try:
        decode(json.dumps(value).encode())
    except ProtocolError:
        return
