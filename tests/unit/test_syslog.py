"""wire="syslog" (mplog._wires.syslog), pure: every message parses back under RFC 5424's ABNF."""

from __future__ import annotations

import datetime
import json
import logging
import re
import subprocess
import sys
import zoneinfo
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mplog
from mplog import ConfigError
from mplog._record import STANDARD_ATTRS, prepare_dict
from mplog._sender import drop_record
from mplog._text import Timestamps
from mplog._wires.syslog import DEFAULT_MAX_LENGTH, FACILITIES, SyslogWire, severity

# -- a strict RFC 5424 parser (RFC 5424 §6 ABNF), written for these tests -----------------

_HEADER = re.compile(
    rb"<(0|[1-9][0-9]{0,2})>(1) "
    rb"(-|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})) "
    rb"([\x21-\x7e]{1,255}) ([\x21-\x7e]{1,48}) ([\x21-\x7e]{1,128}) ([\x21-\x7e]{1,32}) "
)
_SD_NAME = re.compile(rb'[\x21-\x7e]{1,32}')
_BOM = b"\xef\xbb\xbf"


class Parsed(dict[str, Any]):
    pass


def _sd_name(buf: bytes, i: int) -> tuple[str, int]:
    j = i
    while j < len(buf) and 0x21 <= buf[j] <= 0x7E and buf[j:j + 1] not in (b"=", b"]", b'"', b" "):
        j += 1
    name = buf[i:j]
    assert _SD_NAME.fullmatch(name), (name, buf)
    return name.decode("ascii"), j


def parse_sd(buf: bytes, i: int) -> tuple[list[tuple[str, list[tuple[str, str]]]], int]:
    """STRUCTURED-DATA at buf[i:]: NILVALUE or 1*SD-ELEMENT; returns (elements, end)."""
    if buf[i:i + 1] == b"-":
        return [], i + 1
    elements = []
    while buf[i:i + 1] == b"[":
        sd_id, i = _sd_name(buf, i + 1)
        params = []
        while buf[i:i + 1] == b" ":
            name, i = _sd_name(buf, i + 1)
            assert buf[i:i + 2] == b'="', buf[i:]
            i += 2
            value = bytearray()
            while True:
                c = buf[i:i + 1]
                assert c, "unterminated PARAM-VALUE"
                if c == b"\\":
                    nxt = buf[i + 1:i + 2]
                    # RFC 5424 §6.3.3: '"', '\' and ']' MUST be escaped; this wire escapes
                    # every backslash, so a lone one is an error here.
                    assert nxt in (b'"', b"\\", b"]"), buf[i:i + 10]
                    value += nxt
                    i += 2
                elif c == b'"':
                    i += 1
                    break
                else:
                    assert c != b"]", "unescaped ']' in PARAM-VALUE"
                    value += c
                    i += 1
            params.append((name, value.decode("utf-8")))  # UTF-8-STRING: must decode
        assert buf[i:i + 1] == b"]", buf[i:]
        i += 1
        elements.append((sd_id, params))
    assert elements, "STRUCTURED-DATA is neither '-' nor an SD-ELEMENT"
    return elements, i


def parse(msg: bytes) -> Parsed:
    """Parse one SYSLOG-MSG strictly; AssertionError if it does not follow the ABNF."""
    m = _HEADER.match(msg)
    assert m, msg[:200]
    assert int(m[1]) <= 191
    sd, i = parse_sd(msg, m.end())
    p = Parsed(
        pri=int(m[1]), ts=m[3].decode(), hostname=m[4].decode(), app=m[5].decode(),
        procid=m[6].decode(), msgid=m[7].decode(), sd=sd, bom=False, msg=None,
    )
    if i < len(msg):
        assert msg[i:i + 1] == b" ", msg[i:]
        body = msg[i + 1:]
        if body.startswith(_BOM):
            p["bom"], body = True, body[3:]
        p["msg"] = body.decode("utf-8")  # MSG-UTF8 must be valid UTF-8
    if p["ts"] != "-":
        stamp = datetime.datetime.fromisoformat(p["ts"])
        assert stamp.utcoffset() is not None
    return p


def unframe(stream: bytes) -> list[bytes]:
    """Split an RFC 6587 octet-counting stream into messages."""
    out = []
    while stream:
        m = re.match(rb"([1-9][0-9]*) ", stream)
        assert m, stream[:20]
        n = int(m[1])
        out.append(stream[m.end():m.end() + n])
        assert len(out[-1]) == n
        stream = stream[m.end() + n:]
    return out


# -- helpers ----------------------------------------------------------------------------


def _rec(msg: str = "hello", level: int = logging.INFO, name: str = "app.db", **extra: object) -> dict[str, Any]:
    r = logging.getLogger(name).makeRecord(name, level, "/x/y.py", 3, msg, None, None, "f", extra or None)
    return prepare_dict(r)


W = SyslogWire(hostname="h1", app_name="web")


def _one(wire: SyslogWire, record: dict[str, Any]) -> Parsed:
    framed = wire.encode(record)
    if wire.framing == "newline":
        assert framed.endswith(b"\n") and framed.count(b"\n") == 1
        return parse(framed[:-1])
    (msg,) = unframe(framed)
    return parse(msg)


# -- header -----------------------------------------------------------------------------


def test_header_fields() -> None:
    r = _rec("hi", logging.ERROR)
    p = _one(SyslogWire(facility="local3", app_name="web", hostname="h1"), r)
    assert p["pri"] == 19 * 8 + 3
    assert (p["hostname"], p["app"], p["procid"], p["msgid"]) == ("h1", "web", str(r["process"]), "app.db")
    assert p["sd"] == [] and p["bom"] and p["msg"] == "hi"
    assert p["ts"] == datetime.datetime.fromtimestamp(r["created"]).astimezone().isoformat(timespec="microseconds")


@pytest.mark.parametrize(
    ("level", "sev"),
    [(50, 2), (40, 3), (30, 4), (20, 6), (10, 7), (0, 7), (25, 6), (45, 3), (35, 4), (15, 7), (100, 2), (5, 7), (-3, 7)],
)
def test_severity_map(level: int, sev: int) -> None:
    # stdlib SysLogHandler's map for the standard levels; others: the standard level below.
    assert severity(level) == sev
    assert _one(SyslogWire(facility=0, hostname="h"), _rec(level=level))["pri"] == sev


def test_severity_of_a_non_int_level_is_warning() -> None:
    assert severity(None) == severity("x") == severity(20.0) == 4


@pytest.mark.parametrize(("name", "num"), sorted(FACILITIES.items()))
def test_facility_names(name: str, num: int) -> None:
    assert _one(SyslogWire(facility=name, hostname="h"), _rec(level=logging.CRITICAL))["pri"] == num * 8 + 2
    assert _one(SyslogWire(facility=num, hostname="h"), _rec(level=logging.DEBUG))["pri"] == num * 8 + 7


def test_facility_names_match_the_stdlib() -> None:
    from logging.handlers import SysLogHandler

    for name, num in SysLogHandler.facility_names.items():
        assert FACILITIES[name] == num, name


def test_defaults_app_name_is_the_process_name_and_hostname_the_node() -> None:
    r = _rec()
    r["processName"] = "ForkPoolWorker-3"
    p = _one(SyslogWire(gethostname=lambda: "node.example"), r)
    assert (p["app"], p["hostname"], p["pri"]) == ("ForkPoolWorker-3", "node.example", 1 * 8 + 6)


def test_default_hostname_is_looked_up_once_lazily() -> None:
    calls = []

    def name() -> str:
        calls.append(1)
        return "h ö"

    w = SyslogWire(gethostname=name)
    assert calls == []
    assert [_one(w, _rec())["hostname"] for _ in range(3)] == ["h__"] * 3
    assert calls == [1]


def test_a_failing_hostname_lookup_gives_the_nilvalue() -> None:
    def broken() -> str:
        raise OSError("no name")

    assert _one(SyslogWire(gethostname=broken), _rec())["hostname"] == "-"


def test_header_fields_are_sanitized_and_cut_to_their_limits() -> None:
    r = _rec(name="app.ünï code/" + "x" * 40)
    r["processName"] = "Proc ess" + "p" * 60
    r["process"] = None
    p = _one(SyslogWire(hostname="h"), r)
    assert p["msgid"] == ("app._n__code/" + "x" * 40)[:32]
    assert p["app"] == ("Proc_ess" + "p" * 60)[:48]
    assert p["procid"] == "-"


def test_procid_is_the_logging_process_not_this_one() -> None:
    r = _rec()
    r["process"] = 4242
    assert _one(W, r)["procid"] == "4242"


# -- timestamps -------------------------------------------------------------------------


def test_timestamp_has_microseconds_and_rounds_like_datetime() -> None:
    ts = Timestamps()
    for t in (0.0, 1.0000005, 1.9999995, 1764043300.123456, 1764043300.9999996, -1.5, 32503680000.5):
        assert ts(t) == datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="microseconds"), t


def test_timestamp_of_a_bad_created_is_the_nilvalue() -> None:
    for bad in (None, float("nan"), float("inf"), 1e20, "soon", [1]):
        r = _rec()
        r["created"] = bad
        assert _one(W, r)["ts"] == "-"


def test_timestamp_with_a_fixed_zone() -> None:
    r = _rec()
    r["created"] = 1_700_000_000.25
    tz = zoneinfo.ZoneInfo("Asia/Kolkata")
    assert _one(SyslogWire(hostname="h", tz=tz), r)["ts"] == "2023-11-15T03:43:20.250000+05:30"
    assert _one(SyslogWire(hostname="h", tz=datetime.UTC), r)["ts"] == "2023-11-14T22:13:20.250000+00:00"
    # Amsterdam in 1900 was UTC+00:19:32, which RFC 3339 cannot write: UTC instead.
    assert Timestamps(zoneinfo.ZoneInfo("Europe/Amsterdam"))(-2_208_988_800.5) == "1899-12-31T23:59:59.500000+00:00"


def test_timestamp_follows_local_daylight_saving_time() -> None:
    # In a child with its own TZ, so this process's time zone is left alone.
    code = (
        "import datetime\n"
        "from mplog._text import Timestamps\n"
        "ts = Timestamps()\n"
        "for t in (1772953199.5, 1772953200.5, 1793512799.25, 1793512800.25, 1700000000.0):\n"
        "    assert ts(t) == datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec='microseconds')\n"
        "    print(ts(t))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={"TZ": "America/New_York"}, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [
        "2026-03-08T01:59:59.500000-05:00",
        "2026-03-08T03:00:00.500000-04:00",
        "2026-11-01T01:59:59.250000-04:00",
        "2026-11-01T01:00:00.250000-05:00",
        "2023-11-14T17:13:20.000000-05:00",
    ]


# -- structured data --------------------------------------------------------------------


def test_extras_become_one_sd_element_with_escaped_values() -> None:
    r = _rec(k='a"b\\c]d é', n=3, f=1.5, b=True, z=None, lst=[1, "x"], obj={"a": "]"})
    p = _one(W, r)
    assert p["sd"] == [(
        "mplog@32473",
        [("b", "true"), ("f", "1.5"), ("k", 'a"b\\c]d é'), ("lst", '[1,"x"]'), ("n", "3"),
         ("obj", '{"a":"]"}'), ("z", "null")],
    )]
    raw = W.message(r)
    assert b'k="a\\"b\\\\c\\]d \xc3\xa9"' in raw


def test_sd_param_names_are_sanitized() -> None:
    r = _rec()
    r.update({'a b=c]"d': 1, "ünï": 2, "x" * 40: 3})
    names = [n for n, _ in _one(W, r)["sd"][0][1]]
    assert sorted(names) == sorted(["a_b_c__d", "_n_", "x" * 32])


def test_sd_value_with_lone_surrogates_stays_valid_utf8() -> None:
    r = _rec(path="/tmp/\udcff.txt")
    assert _one(W, r)["sd"][0][1] == [("path", "/tmp/\\udcff.txt")]


def test_sd_id_option() -> None:
    assert _one(SyslogWire(hostname="h", sd_id="app@12345.1"), _rec(k=1))["sd"][0][0] == "app@12345.1"


def test_the_drop_report_carries_its_counts_as_structured_data() -> None:
    from mplog._buffer import DropReport

    rec = drop_record(DropReport(7, 1_700_000_000.0, 1_700_000_001.0), "127.0.0.1:514", "drop_oldest")
    p = _one(W, prepare_dict(rec))
    params = dict(p["sd"][0][1])
    assert params["mplog_dropped"] == "7" and p["msgid"] == "mplog" and p["pri"] == 8 + 4
    assert p["msg"].startswith("mplog dropped 7 records")


# -- MSG --------------------------------------------------------------------------------


def _exc_record() -> tuple[logging.LogRecord, dict[str, Any]]:
    log = logging.getLogger("app.exc")
    try:
        raise KeyError("multi\nline ü")
    except KeyError:
        r = log.makeRecord("app.exc", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info(), "f")
    r.stack_info = "Stack (most recent call last):\n  File x, line 1"
    return r, prepare_dict(r)


def test_msg_is_the_message_then_traceback_then_stack_as_a_formatter_joins_them() -> None:
    rec, d = _exc_record()
    p = _one(W, d)
    assert p["bom"]
    assert p["msg"] == logging.Formatter("%(message)s").format(rec)
    assert p["msg"].startswith("failed x\nTraceback (most recent call last):\n")
    assert "KeyError: 'multi\\nline ü'\nStack (most recent call last):" in p["msg"]


def test_bom_can_be_left_out() -> None:
    p = _one(SyslogWire(hostname="h", bom=False), _rec("plain"))
    assert not p["bom"] and p["msg"] == "plain"


def test_lone_surrogates_in_msg_are_written_as_text() -> None:
    assert _one(W, _rec("bad \udcff byte"))["msg"] == "bad \\udcff byte"
    r = _rec()
    r["msg"] = "pair \ud83d\ude00 high \ud800"
    assert _one(W, r)["msg"] == "pair \U0001f600 high \\ud800"


def test_control_characters_are_sent_as_they_are() -> None:
    assert _one(W, _rec("a\x00b\x07c\td\re"))["msg"] == "a\x00b\x07c\td\re"


# -- framing ----------------------------------------------------------------------------


def test_octet_counting_frames_concatenate_and_split_back() -> None:
    _, d = _exc_record()
    stream = b"".join(W.encode(r) for r in (_rec("one"), d, _rec("th\nree")))
    msgs = [parse(m)["msg"] for m in unframe(stream)]
    assert msgs[0] == "one" and msgs[1].count("\n") >= 3 and msgs[2] == "th\nree"


def test_newline_framing_escapes_every_lf() -> None:
    w = SyslogWire(hostname="h", framing="newline")
    r = _rec("a\nb", note="x\ny")
    r["exc_text"] = "Traceback\n  line"
    framed = w.encode(r)
    assert framed.count(b"\n") == 1 and framed.endswith(b"\n")
    p = parse(framed[:-1])
    assert p["msg"] == "a#012b#012Traceback#012  line"
    assert p["sd"][0][1] == [("note", "x#012y")]


# -- length -----------------------------------------------------------------------------


def test_default_max_length_is_rsyslogs_default_and_fits_exactly() -> None:
    assert DEFAULT_MAX_LENGTH == 8096
    head = len(W.message(_rec("")))
    exact = W.message(_rec("x" * (8096 - head)))
    assert len(exact) == 8096 and b"mplog:" not in exact


def test_over_long_msg_keeps_its_beginning_and_end_and_says_what_was_cut() -> None:
    text = "START " + "é" * 5000 + "ü" * 5000 + " END"
    msg = W.message(_rec(text))
    assert len(msg) <= DEFAULT_MAX_LENGTH and len(msg) > DEFAULT_MAX_LENGTH - 40
    body = parse(msg)["msg"]  # still valid UTF-8: cut at character boundaries
    m = re.fullmatch(r"(START é+) \[mplog: (\d+) bytes cut\] (ü+ END)", body)
    assert m, body[:100]
    assert len(m[1].encode()) + int(m[2]) + len(m[3].encode()) == len(text.encode())


def test_over_long_traceback_keeps_the_exception_line() -> None:
    _, d = _exc_record()
    d["exc_text"] = "Traceback (most recent call last):\n" + "  File f, line 1\n" * 2000 + "ValueError: the point"
    d["stack_info"] = None
    body = parse(SyslogWire(hostname="h", max_length=2048).message(d))["msg"]
    assert body.startswith("failed x\nTraceback") and body.endswith("ValueError: the point")
    assert "bytes cut]" in body


def test_over_long_structured_data_drops_params_and_counts_them() -> None:
    extras = {f"k{i:03d}": "v" * 100 for i in range(200)}
    msg = W.message(_rec("short", **extras))
    assert len(msg) <= DEFAULT_MAX_LENGTH
    p = parse(msg)
    params = p["sd"][0][1]
    dropped = int(params[-1][1])
    assert params[-1][0] == "mplog_truncated" and len(params) - 1 + dropped == 200
    assert [n for n, _ in params[:-1]] == [f"k{i:03d}" for i in range(len(params) - 1)]
    assert p["msg"] == "short"


def test_long_structured_data_and_long_msg_share_the_room() -> None:
    extras = {f"k{i:03d}": "v" * 100 for i in range(200)}
    w = SyslogWire(hostname="h", max_length=4000)
    msg = w.message(_rec("m" * 10000, **extras))
    p = parse(msg)
    assert len(msg) <= 4000
    assert p["sd"][0][1][-1][0] == "mplog_truncated" and "bytes cut]" in p["msg"]


def test_a_single_huge_extra_is_dropped_not_cut() -> None:
    p = parse(W.message(_rec("m", blob="b" * 100_000, small=1)))
    assert p["sd"][0][1] == [("small", "1"), ("mplog_truncated", "1")]


# -- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"facility": "nope"}, {"facility": 24}, {"facility": -1}, {"facility": True}, {"facility": 1.0},
        {"framing": "lf"}, {"max_length": 1023}, {"max_length": "8k"}, {"max_length": True},
        {"app_name": "my app"}, {"app_name": "x" * 49}, {"app_name": "äpp"}, {"app_name": ""},
        {"hostname": "a b"}, {"hostname": "h" * 256}, {"hostname": 5},
        {"sd_id": "mplog"}, {"sd_id": "a b@1"}, {"sd_id": 'x"@1'}, {"sd_id": "x@abc"},
        {"sd_id": "x" * 30 + "@12"}, {"sd_id": "x]@1"}, {"sd_id": "x=@1"},
        {"tz": "UTC"}, {"gethostname": "host"},
    ],
)
def test_bad_options_are_config_errors(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SyslogWire(**kw)
    with pytest.raises(ConfigError):
        mplog.SocketHandler("127.0.0.1", 514, wire="syslog", **kw)


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad options for wire='syslog'"):
        mplog.SocketHandler("127.0.0.1", 514, wire="syslog", colour="red")


def test_handler_built_with_options_ships_to_the_listener() -> None:
    import pickle

    h = mplog.SocketHandler("127.0.0.1", 514, wire="syslog", facility="local0", app_name="a", framing="newline",
                            max_length=2048, sd_id="x@1", bom=False, tz=datetime.UTC)
    h2 = pickle.loads(pickle.dumps(h))
    try:
        w = h2._wire
        assert isinstance(w, SyslogWire)
        assert (w.facility, w.app_name, w.framing, w.max_length, w.sd_id, w.bom, w.tz) == (
            16, "a", "newline", 2048, "x@1", False, datetime.UTC)
    finally:
        h.close()
        h2.close()


# -- properties -------------------------------------------------------------------------

# Any code point, lone surrogates included, with the characters that matter here made common.
_SPECIAL = ["\udcff", "\ud800", "\n", "\r", '"', "\\", "]", "[", "=", " ", "é", "\U0001f600", "\x00", "\ufeff", "-"]
_any_text = st.text(st.sampled_from(_SPECIAL) | st.characters(codec=None, exclude_categories=()), max_size=60)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_any_text, inner, max_size=3),
    max_leaves=8,
)
_odd = st.sampled_from([object(), b"\xff\xfe", (1, 2), {1, 2}, 10**5000, float("nan")])
_extra_keys = _any_text.filter(lambda k: k not in STANDARD_ATTRS)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    r: dict[str, Any] = _rec()
    r["msg"] = draw(_any_text | st.integers() | st.none())
    r["name"] = draw(_any_text | st.none())
    r["processName"] = draw(_any_text | st.none())
    r["process"] = draw(st.integers() | st.none() | _any_text)
    r["levelno"] = draw(st.integers() | st.none() | _any_text)
    r["created"] = draw(st.floats() | st.none() | st.integers(-10**12, 10**12) | _any_text)
    r["exc_text"] = draw(st.none() | _any_text)
    r["stack_info"] = draw(st.none() | _any_text)
    r.update(draw(st.dictionaries(_extra_keys, _json_values | _odd, max_size=5)))
    return r


def _clean(s: str) -> str:
    s = s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _expected_msg(r: dict[str, Any]) -> str:
    def text(v: object) -> str:
        return _clean(v if isinstance(v, str) else repr(v))

    out = text(r["msg"])
    for key in ("exc_text", "stack_info"):
        if r.get(key):
            if out[-1:] != "\n":
                out += "\n"
            out += text(r[key])
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records(), st.sampled_from(["octet-counting", "newline"]), st.integers(1024, 3000))
def test_any_record_is_one_frame_that_parses_back(r: dict[str, Any], framing: str, max_length: int) -> None:
    w = SyslogWire(hostname="h", framing=framing, max_length=max_length, facility="local7")
    p = _one(w, r)  # exactly one frame, strict ABNF, valid UTF-8 SD values and MSG
    msg = w.message(r)
    assert len(msg) <= max_length
    assert p["pri"] == 23 * 8 + severity(r["levelno"])
    procid = "-" if r["process"] is None else re.sub(r"[^!-~]", "_", str(r["process"]))[:128]
    assert p["procid"] == (procid or "-")
    extras = sorted(k for k in r if k not in STANDARD_ATTRS)
    if not extras:
        assert p["sd"] == []
    else:
        ((sd_id, params),) = p["sd"]
        assert sd_id == "mplog@32473"
        names = [n for n, _ in params]
        if names and names[-1] == "mplog_truncated" and "mplog_truncated" not in extras:
            assert int(params[-1][1]) + len(names) - 1 == len(extras)
        else:
            assert len(names) == len(extras)
            by_name = [(re.sub(r'[^!-~]|[= \]"]', "_", k)[:32] or "_", r[k]) for k in extras]
            assert names == [n for n, _ in by_name]
            for (_, got), (_, value) in zip(params, by_name, strict=True):
                if isinstance(value, str):
                    want = _clean(value)
                    assert got == (want.replace("\n", "#012") if framing == "newline" else want)
    expected = _expected_msg(r)
    if framing == "newline":
        expected = expected.replace("\n", "#012")
    assert p["bom"]
    if "bytes cut] " not in p["msg"] or p["msg"] == expected:
        assert p["msg"] == expected
    else:
        head, _, tail = p["msg"].partition(" [mplog: ")
        tail = tail.split("bytes cut] ", 1)[1]
        assert expected.startswith(head) and expected.endswith(tail)


@settings(deadline=None)
@given(records())
def test_any_record_encodes_the_same_twice(r: dict[str, Any]) -> None:
    # Caches (fields, names, timestamps) never change what is written.
    w = SyslogWire(hostname="h")
    assert w.encode(r) == w.encode(r) == SyslogWire(hostname="h").encode(r)


def test_many_odd_values_never_raise() -> None:
    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    deep: list[Any] = []
    cur = deep
    for _ in range(5000):
        cur.append([])
        cur = cur[0]
    circ: dict[str, Any] = {}
    circ["me"] = circ
    r = _rec()
    r.update({"bad": BadRepr(), "deep": deep, "circ": circ, "msg": BadRepr(), "name": BadRepr(), 3: "int key"})
    for framing in ("octet-counting", "newline"):
        p = _one(SyslogWire(hostname="h", framing=framing), r)
        assert p["msg"].startswith("<unrepresentable test_many_odd_values_never_raise.<locals>.BadRepr")
        assert p["msgid"] == "<unrepresentable_test_many_odd_v"
    assert parse(W.message({}))["msg"] == ""


def test_json_rendering_of_extras_matches_json() -> None:
    v = {"a": [1, 2.5, None, True], "b": "ü"}
    p = _one(W, _rec(v=v))
    assert json.loads(p["sd"][0][1][0][1]) == v
