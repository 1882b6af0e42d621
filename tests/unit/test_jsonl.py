"""wire="jsonl" (mplog._wires.jsonl), pure: every record is exactly one line of strict JSON."""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import sys
import zoneinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mplog
from mplog import ConfigError
from mplog._record import STANDARD_ATTRS, prepare_dict
from mplog._wires.jsonl import FIELDS, JsonlWire

NAMES = [name for name, _ in FIELDS]
W = JsonlWire(hostname="h1")


def _rec(msg: str = "hello", level: int = logging.INFO, name: str = "app.db", **extra: object) -> dict[str, Any]:
    r = logging.getLogger(name).makeRecord(name, level, "/x/y.py", 3, msg, None, None, "f", extra or None)
    return prepare_dict(r)


def _reject_constant(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


def _strict_text(value: Any) -> None:
    """Every string in *value* is valid Unicode (no lone surrogate came out of an escape)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _strict_text(k)
            _strict_text(v)
    elif isinstance(value, list):
        for v in value:
            _strict_text(v)


def line_of(wire: JsonlWire, record: dict[str, Any]) -> dict[str, Any]:
    """Encode; check it is one ASCII line of strict JSON with the documented keys."""
    line = wire.encode(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line.isascii()
    assert b"\r" not in line
    obj = json.loads(line, parse_constant=_reject_constant)
    _strict_text(obj)
    assert list(obj) == NAMES
    # What a line-oriented reader in any language sees: no other line break either.
    assert len(line.decode("ascii").splitlines()) == 1
    return obj  # type: ignore[no-any-return]


def _clean_text(v: str) -> str:
    joined = v.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return joined.encode("utf-8", "backslashreplace").decode("utf-8")


def test_documented_fields_and_values() -> None:
    r = _rec("hi", logging.WARNING, user="u1", n=3, nested={"a": [1, None]})
    o = line_of(W, r)
    assert o == {
        "timestamp": datetime.datetime.fromtimestamp(r["created"]).astimezone().isoformat(timespec="microseconds"),
        "level": "WARNING",
        "levelno": 30,
        "logger": "app.db",
        "message": "hi",
        "hostname": "h1",
        "process": r["process"],
        "process_name": r["processName"],
        "thread": r["thread"],
        "thread_name": r["threadName"],
        "pathname": "/x/y.py",
        "lineno": 3,
        "function": "f",
        "exception": None,
        "stack": None,
        "extra": {"n": 3, "nested": {"a": [1, None]}, "user": "u1"},
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d", o["timestamp"])


def test_traceback_and_stack_are_kept_whole() -> None:
    log = logging.getLogger("app.exc")
    try:
        raise KeyError("multi\nline")
    except KeyError:
        rec = log.makeRecord("app.exc", logging.ERROR, __file__, 1, "failed", None, sys.exc_info(), "f")
    rec.stack_info = "Stack (most recent call last):\n  File x"
    d = prepare_dict(rec)
    o = line_of(W, d)
    assert o["exception"] == d["exc_text"] and o["exception"].startswith("Traceback (most recent call last):\n")
    assert o["stack"] == "Stack (most recent call last):\n  File x"


def test_hostname_default_and_timezone_option() -> None:
    r = _rec()
    r["created"] = 1_700_000_000.5
    o = line_of(JsonlWire(gethostname=lambda: "node.example", tz=zoneinfo.ZoneInfo("Asia/Kolkata")), r)
    assert o["hostname"] == "node.example" and o["timestamp"] == "2023-11-15T03:43:20.500000+05:30"

    def broken() -> str:
        raise OSError("no name")

    assert line_of(JsonlWire(gethostname=broken), r)["hostname"] is None


def test_bad_created_gives_a_null_timestamp() -> None:
    for bad in (None, float("nan"), 1e20, "later"):
        r = _rec()
        r["created"] = bad
        assert line_of(W, r)["timestamp"] is None


@pytest.mark.parametrize(
    "text",
    ["new\nline", "cr\rlf\r\n", 'quo"te', "back\\slash", "ctl\x00\x07\x1b\x7f", "c1 \x85 \u2028 \u2029",
     "lone \udcff surrogate", "high \ud800 alone", "pair \ud83d\ude00 as two", "ünïcödé ✓ 😀", "tab\tend", ""],
)
def test_odd_characters_still_make_one_line(text: str) -> None:
    r = _rec(text, odd=text, **{f"key {text}": 1})
    r["exc_text"] = text
    o = line_of(W, r)
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert o["message"] == o["exception"] == o["extra"]["odd"] == text
        assert o["extra"][f"key {text}"] == 1
    else:  # a pair is the character it encodes; a lone surrogate its \\uXXXX text
        expected = _clean_text(text)
        assert o["message"] == o["exception"] == o["extra"]["odd"] == expected
        assert "\U0001f600" in expected or "\\ud" in expected


def test_values_json_cannot_hold() -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    circ: dict[str, Any] = {}
    circ["me"] = circ
    deep: list[Any] = []
    cur = deep
    for _ in range(5000):
        cur.append([])
        cur = cur[0]
    r = _rec()
    r.update({
        "nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "big": 10**5000, "raw": b"\xff\xfe",
        "tuple": (1, 2), "set": {3}, "obj": BadRepr(), "circ": circ, "deep": deep, 7: "int key",
        "keys": {(1, 2): "tuple key", 1: "int key"},
    })
    r["msg"] = BadRepr()
    o = line_of(W, r)
    x = o["extra"]
    assert (x["nan"], x["inf"], x["ninf"]) == ("nan", "inf", "-inf")
    assert x["raw"] == "b'\\xff\\xfe'" and x["tuple"] == [1, 2] and x["set"] == "{3}"
    assert x["big"].startswith("<unrepresentable int") and x["obj"].startswith("<unrepresentable")
    assert x["circ"] == {"me": "<circular>"} and x["7"] == "int key"
    assert x["keys"] == {"(1, 2)": "tuple key", "1": "int key"}
    assert o["message"].startswith("<unrepresentable")


def test_an_empty_record_still_makes_a_line() -> None:
    o = line_of(W, {})
    assert o["message"] is None and o["extra"] == {} and o["hostname"] == "h1"


def test_the_record_codec_output_goes_through_unchanged() -> None:
    # What the pipeline hands the wire: extras already JSON-safe (odd ones repr'd).
    r = _rec("m", when=datetime.date(2020, 1, 2), data=b"\xff")
    assert line_of(W, r)["extra"] == {"data": "b'\\xff'", "when": "datetime.date(2020, 1, 2)"}


@pytest.mark.parametrize("kw", [{"hostname": 3}, {"tz": "UTC"}, {"gethostname": "x"}, {"framing": "newline"}])
def test_bad_options_are_config_errors(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        mplog.SocketHandler("127.0.0.1", 5170, wire="jsonl", **kw)


def test_cached_fields_follow_the_record() -> None:
    # The per-site cache must not mix up records that differ in a cached field.
    w = JsonlWire(hostname="h")
    a, b = _rec(level=logging.INFO), _rec(level=logging.ERROR)
    b2 = dict(b, thread=1, threadName="T-1", lineno=99)
    for r in (a, b, a, b2):
        assert line_of(w, r) == json.loads(json.dumps(w.to_object(r)))


# -- properties -------------------------------------------------------------------------

_SPECIAL = ["\udcff", "\ud800", "\n", "\r", '"', "\\", "\u2028", "\x85", "é", "\U0001f600", "\x00", "\\ud800"]
_any_text = st.lists(st.sampled_from(_SPECIAL) | st.characters(codec=None, exclude_categories=()), max_size=40).map("".join)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_any_text, inner, max_size=3)
    | st.dictionaries(st.integers() | st.none() | st.booleans(), inner, max_size=2),
    max_leaves=10,
)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    r = _rec()
    for key in ("msg", "name", "processName", "threadName", "exc_text", "stack_info", "levelname"):
        r[key] = draw(_any_text | st.none() | st.integers())
    r["created"] = draw(st.floats() | st.none() | st.integers(-10**12, 10**12))
    r["levelno"] = draw(st.integers() | st.none())
    r["process"] = draw(st.integers() | st.none())
    r.update(draw(st.dictionaries(_any_text.filter(lambda k: k not in STANDARD_ATTRS), _values, max_size=5)))
    return r




@settings(max_examples=200, deadline=None)
@given(records())
def test_any_record_is_exactly_one_valid_line(r: dict[str, Any]) -> None:
    o = line_of(W, r)
    for out, attr in (("message", "msg"), ("logger", "name"), ("exception", "exc_text"), ("stack", "stack_info")):
        v = r[attr]
        assert o[out] == (_clean_text(v) if isinstance(v, str) else v)
    extras = {k for k in r if k not in STANDARD_ATTRS}
    assert {k for k in o["extra"]} == {_clean_text(k) for k in extras}
    assert o["levelno"] == r["levelno"] and o["process"] == r["process"]


@settings(max_examples=40, deadline=None)
@given(st.lists(records(), min_size=1, max_size=5))
def test_a_stream_splits_back_into_its_records(rs: list[dict[str, Any]]) -> None:
    stream = b"".join(W.encode(r) for r in rs)
    lines = stream.split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == len(rs)
    for line, r in zip(lines, rs, strict=False):
        assert json.loads(line)["levelno"] == r["levelno"]
