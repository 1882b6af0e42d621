from __future__ import annotations

import json
import logging
import sys
import threading

from hypothesis import given
from hypothesis import strategies as st

from mplog import ProtocolError
from mplog._record import (
    decode_control,
    decode_record,
    decode_records,
    encode,
    make_record,
    prepare_dict,
)


def _record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("unit.record")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 10, msg, args, None, "fn", extra or None)


def _roundtrip(rec: logging.LogRecord) -> dict[str, object]:
    frame = encode(rec)
    return dict(make_record(decode_record(frame[4:])).__dict__)


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
    body = encode(_record(ok=1))[4:]
    forged = body.replace(b'{"ok":1}', b'{"levelno":99,"ok":1}')
    assert forged != body
    d = decode_record(forged)
    assert d["levelno"] == logging.INFO and d["ok"] == 1


def test_times_are_exact() -> None:
    rec = _record()
    d = _roundtrip(rec)
    assert (d["created"], d["msecs"], d["relativeCreated"]) == (rec.created, rec.msecs, rec.relativeCreated)


def test_batch_decode_stops_at_the_bad_frame() -> None:
    good = [encode(_record("m%d", (i,)))[4:] for i in range(3)]
    out, err = decode_records(good)
    assert err is None and [d["msg"] for d in out] == ["m0", "m1", "m2"]
    out, err = decode_records([good[0], b"R" + b"\0" * 24 + b"[1,2]", good[2]])
    assert [d["msg"] for d in out] == ["m0"]
    assert isinstance(err, ProtocolError)


def test_extras_path_and_plain_path_agree() -> None:
    plain = _roundtrip(_record())
    with_extra = _roundtrip(_record(k="v"))
    with_extra.pop("k")
    for key in ("created", "msecs", "relativeCreated", "thread", "lineno"):
        plain.pop(key), with_extra.pop(key)
    assert plain == with_extra


def test_non_ascii_and_surrogates() -> None:
    d = _roundtrip(_record("héllo %s", ("\udcff wörld ✓",)))
    assert d["msg"] == "héllo \udcff wörld ✓"


def test_prepare_dict_matches_the_wire() -> None:
    rec = _record(x={"y": 1})
    assert prepare_dict(rec) == _roundtrip(rec)
    assert "message" not in decode_record(encode(rec)[4:])  # as the stdlib pickles it


def test_control_messages_decode_as_dicts() -> None:
    assert decode_control(json.dumps({"op": "stats"}).encode()) == {"op": "stats"}


@given(st.binary(max_size=500))
def test_fuzz_decode_only_protocol_error(data: bytes) -> None:
    for fn in (decode_record, decode_control):
        try:
            fn(data)
        except ProtocolError:
            continue
    out, err = decode_records([data, data])
    assert err is not None or len(out) == 2


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(), c, max_size=5), max_leaves=20))
def test_fuzz_json_shaped_garbage_only_protocol_error(value: object) -> None:
    text = json.dumps(value).encode()
    for body in (text, b"R" + bytes(24) + text):
        try:
            decode_record(body)
        except ProtocolError:
            continue
    try:
        decode_control(text)
    except ProtocolError:
        return


# -- a dict as msg (structlog's ProcessorFormatter.wrap_for_formatter) ----------------------


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def _dict_record(event: dict[object, object], **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("unit.record")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 10, event, (), None, "fn", extra or None)


def test_dict_msg_travels_as_fields() -> None:
    event: dict[object, object] = {
        "event": "user logged in", "user": "bob", "n": 3, "tags": ["a", "b"],
        "obj": _Opaque(), "name": "not the logger", 7: "seven",
    }
    rec = _dict_record(event)
    before, event_before = dict(rec.__dict__), dict(event)
    d = _roundtrip(rec)
    assert d["msg"] == d["message"] == "user logged in"
    assert (d["user"], d["n"], d["tags"], d["obj"]) == ("bob", 3, ["a", "b"], "<opaque>")
    assert "event" not in d  # it is the message
    assert d["name"] == "unit.record" and d["name_"] == "not the logger"  # renamed, not lost
    assert d["7"] == "seven"
    assert rec.__dict__ == before and event == event_before  # the caller's objects untouched
    fmt = logging.Formatter("%(levelname)s %(message)s user=%(user)s")
    assert fmt.format(make_record(decode_record(encode(rec)[4:]))) == "INFO user logged in user=bob"


def test_dict_msg_without_event_keeps_the_stdlib_message() -> None:
    d = _roundtrip(_dict_record({"a": 1, "b": "x"}))
    assert d["msg"] == "{'a': 1, 'b': 'x'}"  # what getMessage() renders locally
    assert (d["a"], d["b"]) == (1, "x")


def test_dict_msg_drops_structlog_local_plumbing() -> None:
    # wrap_for_formatter passes extra={"_logger": <logger>, "_name": "info"}: meaningful
    # only to a ProcessorFormatter in the same process.
    d = _roundtrip(_dict_record({"event": "hi", "k": "v"}, _logger=_Opaque(), _name="info", other=1))
    assert "_logger" not in d and "_name" not in d
    assert d["other"] == 1 and d["k"] == "v"
    # the same extras on an ordinary record are ordinary extras
    d = _roundtrip(_record(_logger=_Opaque(), _name="info"))
    assert d["_logger"] == "<opaque>" and d["_name"] == "info"


def test_dict_msg_exc_info_becomes_exc_text() -> None:
    try:
        raise KeyError("boom")
    except KeyError as exc:
        now = _roundtrip(_dict_record({"event": "failed", "exc_info": True}))
        given_exc = _roundtrip(_dict_record({"event": "failed", "exc_info": exc}))
    for d in (now, given_exc):
        assert d["msg"] == "failed"
        assert isinstance(d["exc_text"], str) and "KeyError: 'boom'" in d["exc_text"]
        assert d["exc_info"] is None and "exc_info_" not in d


def test_dict_msg_with_args_is_an_ordinary_message() -> None:
    # logging.info({"a": 1}, "x") is not structlog: the dict stays the (odd) format string
    rec = _dict_record({"a": 1})
    rec.args = ("x",)
    d = _roundtrip(rec)
    assert "a" not in d and "mplog: message formatting failed" in str(d["msg"])
