from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mplog import ConfigError
from mplog._jsonl import JsonlWire
from mplog._record import decode_record, encode
from mplog._syslog import SyslogWire, severity

# RFC 5424 HEADER + SD (NILVALUE or elements) + optional MSG, as this wire writes them.
RFC5424 = re.compile(
    rb"^<(\d{1,3})>1 (\S+) ([\x21-\x7e]{1,255}) ([\x21-\x7e]{1,48}) ([\x21-\x7e]{1,128}) "
    rb"([\x21-\x7e]{1,32}) (-|\[.*\]) \xef\xbb\xbf(.*)$",
    re.S,
)


def _rec(msg: str = "hello", level: int = logging.INFO, **extra: object) -> dict:
    r = logging.getLogger("app.db").makeRecord("app.db", level, "/x/y.py", 3, msg, None, None, "f", extra or None)
    return decode_record(encode(r)[4:])


def test_header_fields() -> None:
    w = SyslogWire(facility="local3", app_name="web", hostname="h1")
    msg = w.message(_rec("hi", logging.ERROR))
    m = RFC5424.match(msg)
    assert m, msg
    assert int(m[1]) == 19 * 8 + 3
    assert re.match(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$", m[2])
    assert (m[3], m[4], m[6], m[7], m[8]) == (b"h1", b"web", b"app.db", b"-", b"hi")


@pytest.mark.parametrize(("level", "sev"), [(10, 7), (20, 6), (25, 6), (30, 4), (40, 3), (50, 2), (5, 7)])
def test_severity_map(level: int, sev: int) -> None:
    assert severity(level) == sev


def test_structured_data_escaping() -> None:
    msg = SyslogWire(hostname="h").message(_rec(k='a"b\\c]d', n=3))
    assert b'[mplog@32473 ' in msg
    assert b'k="a\\"b\\\\c\\]d"' in msg and b'n="3"' in msg


def test_traceback_kept_and_octet_counting() -> None:
    r = _rec("boom")
    r["exc_text"] = "Traceback (most recent call last):\n  File x\nValueError: v"
    framed = SyslogWire(hostname="h").encode(r)
    n, _, rest = framed.partition(b" ")
    assert int(n) == len(rest) and b"boom\nTraceback" in rest


def test_newline_framing_escapes_lf() -> None:
    r = _rec("a\nb")
    framed = SyslogWire(hostname="h", framing="newline").encode(r)
    assert framed.count(b"\n") == 1 and framed.endswith(b"a#012b\n")


def test_over_long_message_is_marked_not_silently_cut() -> None:
    msg = SyslogWire(hostname="h", max_length=600).message(_rec("é" * 1000))
    assert len(msg) <= 600 and msg.endswith(b"bytes]") and b"[mplog: truncated " in msg
    msg.decode("utf-8")  # cut on a character boundary


@pytest.mark.parametrize("kw", [{"facility": "nope"}, {"facility": 99}, {"framing": "lf"}, {"max_length": 10}])
def test_bad_options(kw: dict) -> None:
    with pytest.raises(ConfigError):
        SyslogWire(**kw)


@given(st.text(), st.dictionaries(st.text(min_size=1), st.text() | st.integers(), max_size=4))
def test_any_record_one_valid_syslog_message(text: str, extras: dict) -> None:
    r = _rec(text)
    r.update({k: v for k, v in extras.items() if k not in r})
    msg = SyslogWire(hostname="h").message(r)
    assert RFC5424.match(msg)
    assert len(msg) <= 65536


def test_jsonl_fields() -> None:
    r = _rec("hi", logging.WARNING, user="u1")
    line = JsonlWire().encode(r)
    obj = json.loads(line)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert obj["level"] == "WARNING" and obj["logger"] == "app.db" and obj["message"] == "hi"
    assert obj["extra"] == {"user": "u1"} and obj["function"] == "f"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d$", obj["timestamp"])


@given(st.text(), st.text())
def test_jsonl_odd_characters_one_line(text: str, extra: str) -> None:
    r = _rec(text, odd=extra)
    r["exc_text"] = "line1\nline2\x00\"'"
    line = JsonlWire().encode(r)
    assert line.count(b"\n") == 1
    obj = json.loads(line)
    assert obj["message"] == text and obj["extra"]["odd"] == extra
