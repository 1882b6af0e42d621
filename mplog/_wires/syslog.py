"""``wire="syslog"``: RFC 5424 messages with RFC 6587 framing (sans-IO).

Rules this module keeps (RFC 5424 §6, RFC 6587 §3.4, RFC 5425 §4.3.1; summarized in
``shared/reference/field-study.md`` §4; the user-facing version is ``docs/destinations.md``):

- A message is ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA SP MSG``.
- PRI = facility * 8 + severity. Severity from the level as the stdlib ``SysLogHandler``
  maps the standard levels (CRITICAL 2, ERROR 3, WARNING 4, INFO 6, DEBUG 7); any other
  level takes the severity of the nearest standard level *below* it (25 -> 6, 45 -> 3,
  100 -> 2; below DEBUG, and NOTSET, -> 7). A ``levelno`` that is not an int counts as
  WARNING (4), as the stdlib does for unknown level names.
- TIMESTAMP: RFC 3339 with microseconds and the UTC offset in force at ``created`` in the
  machine's local time zone (``tz=`` fixes another zone, e.g. ``datetime.timezone.utc``).
  A ``created`` that is not a representable time gives the NILVALUE ``-``.
- HOSTNAME (<= 255 octets), APP-NAME (<= 48), PROCID (<= 128) and MSGID (<= 32) hold
  printable US-ASCII only (``%d33-126``): every other character becomes ``_`` and a longer
  value is cut to the limit; an empty value is the NILVALUE ``-``. HOSTNAME is ``hostname=``
  (default: the machine's node name, looked up on first use), APP-NAME ``app_name=``
  (default: the record's ``processName``), PROCID the pid of the process that logged the
  record (``process``), MSGID the logger name. ``hostname=`` and ``app_name=`` given by
  the user must already be valid (ConfigError otherwise); record values are sanitized.
- STRUCTURED-DATA: the NILVALUE when the record has no ``extra=`` fields; else one element
  ``[mplog@32473 name="value" ...]`` (``sd_id=``; 32473 is the enterprise number RFC 5424
  reserves for documentation, so organizations put their own in). One parameter per extra,
  sorted by name: names are cut to 32 printable US-ASCII characters without ``= ] " SP``
  (others become ``_``); values are the string itself, or JSON for other types, with
  ``\\``, ``"`` and ``]`` escaped by a backslash (§6.3.3). Lone surrogates (undecodable
  bytes smuggled into a ``str``) are written as the text ``\\udcXX`` (in SD values, with
  the backslash escaped), and a pair of surrogate code points as the character it
  encodes, so every message is valid UTF-8.
- MSG: the UTF-8 BOM (``bom=False`` leaves it out, for receivers that do not want it), the
  message, then the traceback (``exc_text``) and the stack (``stack_info``), each after a
  LF as ``logging.Formatter`` joins them. Control characters are sent as they are (RFC
  5424 §6.4 allows them; a receiver may escape them: rsyslog writes NUL as ``#000``).
- Framing: ``"octet-counting"`` (default; ``MSG-LEN SP SYSLOG-MSG``, RFC 6587 §3.4.1; a
  multi-line message stays one message) or ``"newline"`` (``SYSLOG-MSG LF``, §3.4.2; a
  receiver splits a newline-framed stream at every LF, so each LF inside the message is
  written as ``#012``, the escape rsyslog itself uses for received control characters).
- Length: a message (without its framing) is at most ``max_length`` octets, default 8096,
  the largest message rsyslog's default configuration (``maxMessageSize``) takes whole;
  syslog-ng's default is 65536, and RFC 5425 §4.3.1 says receivers SHOULD take 8192.
  A longer message is cut by this rule, never silently. The header is never cut.
  STRUCTURED-DATA may keep what MSG leaves, or half of the room after the header if
  that is more: it keeps, in name order, each parameter that still fits, drops the
  others whole and ends with ``mplog_truncated="N"`` (N parameters dropped). Then, if
  MSG is still too long, its middle is replaced by `` [mplog: N bytes cut] ``, keeping
  its beginning (the message) and its end (the last lines of a traceback), both cut at
  character boundaries.
- Nothing here raises for any record dict: odd values degrade to text.
"""

from __future__ import annotations

import datetime
import json
import platform
import re
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import ConfigError
from .._record import STANDARD_ATTRS
from .._text import Timestamps, cut_middle, safe_repr, valid_unicode

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_SD_ID",
    "FACILITIES",
    "FRAMINGS",
    "MIN_MAX_LENGTH",
    "SyslogWire",
    "severity",
]

#: Facility names (RFC 5424 §6.2.1, the names ``logging.handlers.SysLogHandler`` uses).
FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "ntp": 12, "security": 13, "console": 14, "solaris-cron": 15,
    **{f"local{i}": 16 + i for i in range(8)},
}
FRAMINGS = ("octet-counting", "newline")
#: rsyslog's default ``maxMessageSize`` (``dfltMaxLine``): imtcp takes 8096 octets whole
#: and splits a longer message into two (checked against rsyslog 8.2302).
DEFAULT_MAX_LENGTH = 8096
#: The smallest ``max_length`` accepted: the longest possible header (~510 octets: PRI,
#: a 32-character TIMESTAMP and fields of 255 + 48 + 128 + 32) plus room for SD and MSG.
MIN_MAX_LENGTH = 1024
#: 32473 is the private enterprise number RFC 5424 §7.2.2 / RFC 5612 set aside for examples.
DEFAULT_SD_ID = "mplog@32473"

_BOM = b"\xef\xbb\xbf"
_SD_ID = re.compile(r"[!#-\\^-~]{1,32}")  # PRINTUSASCII except '"' (34), ']' (93); no SP, '='
_PRIVATE_SD_ID = re.compile(r"[^@=]+@[0-9]+(\.[0-9]+)*")
_PRINTUSASCII = re.compile(r"[!-~]+")
_CACHE_MAX = 4096


def severity(levelno: object) -> int:
    """RFC 5424 severity for a logging level (rules in the module docstring)."""
    if not isinstance(levelno, int):
        return 4
    if levelno >= 50:
        return 2
    if levelno >= 40:
        return 3
    if levelno >= 30:
        return 4
    if levelno >= 20:
        return 6
    return 7


def _ascii_field(value: object, limit: int) -> str:
    """*value* as 1..limit printable US-ASCII characters, or the NILVALUE ``-``."""
    text = _text(value)
    if not (text.isascii() and _PRINTUSASCII.fullmatch(text)):
        text = "".join(c if "!" <= c <= "~" else "_" for c in text)
    return text[:limit] or "-"


def _sd_name(key: str) -> str:
    text = "".join(c if "!" <= c <= "~" and c not in '= ]"' else "_" for c in key)
    return text[:32] or "_"


def _sd_value(value: object) -> str:
    """PARAM-VALUE for an extra: escaped text, JSON text for what is not a string."""
    if isinstance(value, str):
        text = value
    elif value is None:
        return "null"
    elif value is True or value is False:
        return "true" if value else "false"
    else:
        try:
            return str(value) if type(value) is int else _escape(_to_json(value))
        except (ValueError, TypeError, RecursionError):  # e.g. an int over 4300 digits
            text = safe_repr(value)
    return _escape(text)


def _escape(text: str) -> str:
    text = valid_unicode(text)
    if "\\" in text or '"' in text or "]" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    return text


_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=safe_repr).encode


def _text(value: object) -> str:
    return value if isinstance(value, str) else safe_repr(value)


class SyslogWire:
    """RFC 5424 messages, framed for a TCP stream (see the module docstring).

    Options (keyword-only):
        facility: a name from :data:`FACILITIES` or a number 0-23 (default ``"user"``).
        app_name: APP-NAME, 1-48 printable US-ASCII characters (default: the record's
            process name, sanitized).
        hostname: HOSTNAME, 1-255 printable US-ASCII characters (default: *gethostname*
            called once, on first use, sanitized).
        framing: ``"octet-counting"`` (default) or ``"newline"``.
        max_length: most octets per message without framing (default 8096, at least 1024).
        sd_id: the SD-ID of the element carrying the extras, ``name@<enterprise number>``
            (default ``"mplog@32473"``).
        bom: put the UTF-8 BOM before MSG (default True, as RFC 5424 §6.4 asks).
        tz: a ``datetime.tzinfo`` for TIMESTAMP (default None: the local time zone).
        gethostname: where the default hostname comes from (default ``platform.node``).

    Raises :class:`mplog.ConfigError` for a bad option.
    """

    def __init__(
        self,
        *,
        facility: str | int = "user",
        app_name: str | None = None,
        hostname: str | None = None,
        framing: str = "octet-counting",
        max_length: int = DEFAULT_MAX_LENGTH,
        sd_id: str = DEFAULT_SD_ID,
        bom: bool = True,
        tz: datetime.tzinfo | None = None,
        gethostname: Callable[[], str] = platform.node,
    ) -> None:
        if isinstance(facility, str):
            if facility not in FACILITIES:
                raise ConfigError(
                    f"unknown facility {facility!r}; one of {', '.join(FACILITIES)} or 0-23"
                )
            facility = FACILITIES[facility]
        if isinstance(facility, bool) or not isinstance(facility, int) or not 0 <= facility <= 23:
            raise ConfigError(f"facility must be a name or 0-23, got {facility!r}")
        if framing not in FRAMINGS:
            raise ConfigError(f"framing must be one of {', '.join(FRAMINGS)}; got {framing!r}")
        if (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or max_length < MIN_MAX_LENGTH
        ):
            raise ConfigError(f"max_length must be an int >= {MIN_MAX_LENGTH}, got {max_length!r}")
        for name, value, limit in (("app_name", app_name, 48), ("hostname", hostname, 255)):
            if value is not None and not (
                isinstance(value, str)
                and value.isascii()
                and len(value) <= limit
                and _PRINTUSASCII.fullmatch(value)
            ):
                raise ConfigError(
                    f"{name} must be 1-{limit} printable US-ASCII characters "
                    f"(RFC 5424 §6.2), got {value!r}"
                )
        if not (
            isinstance(sd_id, str)
            and sd_id.isascii()
            and _SD_ID.fullmatch(sd_id)
            and _PRIVATE_SD_ID.fullmatch(sd_id)
        ):
            raise ConfigError(
                "sd_id must be a private SD-ID, name@<enterprise number>, at most 32 "
                f"printable US-ASCII characters without '=', ']', '\"' or space; got {sd_id!r}"
            )
        if tz is not None and not isinstance(tz, datetime.tzinfo):
            raise ConfigError(f"tz must be a datetime.tzinfo or None, got {tz!r}")
        if not callable(gethostname):
            raise ConfigError("gethostname must be callable")
        self.facility = facility
        self.app_name = app_name
        self.framing = framing
        self.max_length = max_length
        #: The wire cuts every message to max_length itself; the frame adds the
        #: octet count and a space (or a LF), so nothing it makes is ever larger.
        self.max_payload = max_length + 16
        self.sd_id = sd_id
        self.bom = bom
        self.tz = tz
        self._hostname = hostname
        self._gethostname = gethostname
        self._newline = framing == "newline"
        self._bom = _BOM if bom else b""
        # Small caches for what repeats from record to record (bounded: cleared when full).
        self._fields: dict[tuple[object, object, object], str] = {}
        self._names: dict[str, str] = {}
        self._timestamp = Timestamps(tz)

    @property
    def hostname(self) -> str:
        """HOSTNAME as sent (the default is looked up on first use)."""
        if self._hostname is None:
            try:
                found = str(self._gethostname())
            except Exception:  # no name to be had: the NILVALUE, not a lost record
                found = ""
            self._hostname = _ascii_field(found, 255)
        return self._hostname

    # -- pieces ---------------------------------------------------------------------------

    def _header_fields(self, record: Mapping[str, Any]) -> str:
        """``HOSTNAME APP-NAME PROCID MSGID`` for *record* (cached per distinct value)."""
        key = (record.get("processName"), record.get("process"), record.get("name"))
        try:
            fields = self._fields.get(key)
        except TypeError:  # an unhashable value in a standard field
            fields, key = None, None  # type: ignore[assignment]
        if fields is None:
            app = self.app_name or _ascii_field(_text(_field(record, "processName")), 48)
            procid = _ascii_field(_text(_field(record, "process")), 128)
            msgid = _ascii_field(_text(_field(record, "name")), 32)
            fields = f"{self.hostname} {app} {procid} {msgid}"
            if key is not None:
                if len(self._fields) >= _CACHE_MAX:
                    self._fields.clear()
                self._fields[key] = fields
        return fields

    def _param_name(self, key: object) -> str:
        text = key if isinstance(key, str) else _text(key)
        name = self._names.get(text)
        if name is None:
            if len(self._names) >= _CACHE_MAX:
                self._names.clear()
            name = self._names[text] = _sd_name(text)
        return name

    def _params(self, record: Mapping[str, Any]) -> list[bytes]:
        keys = record.keys() - STANDARD_ATTRS
        if not keys:
            return []
        try:
            extras = sorted(keys)
        except TypeError:  # keys of mixed types (not from the pipeline): sort as text
            extras = sorted(keys, key=_text)
        out = []
        for k in extras:
            param = f'{self._param_name(k)}="{_sd_value(record[k])}"'.encode()
            out.append(param.replace(b"\n", b"#012") if self._newline else param)
        return out

    def _structured_data(self, params: list[bytes], budget: int | None) -> bytes:
        head = b"[" + self.sd_id.encode("ascii")
        if budget is None or len(head) + sum(len(p) + 1 for p in params) + 1 <= budget:
            return head + b"".join(b" " + p for p in params) + b"]"
        # Too long: keep, in order, each parameter that still fits beside the marker.
        kept: list[bytes] = []
        size = len(head) + 1 + len(f' mplog_truncated="{len(params)}"')
        for p in params:
            if size + 1 + len(p) <= budget:
                kept.append(p)
                size += 1 + len(p)
        marker = f'mplog_truncated="{len(params) - len(kept)}"'.encode("ascii")
        return head + b"".join(b" " + p for p in kept) + b" " + marker + b"]"

    def _msg(self, record: Mapping[str, Any]) -> bytes:
        text = _text(record.get("msg", ""))
        for key in ("exc_text", "stack_info"):
            more = record.get(key)
            if more:
                if text[-1:] != "\n":
                    text += "\n"
                text += _text(more)
        body = valid_unicode(text).encode("utf-8")
        return body.replace(b"\n", b"#012") if self._newline else body

    # -- the wire -------------------------------------------------------------------------

    def message(self, record: Mapping[str, Any]) -> bytes:
        """The RFC 5424 message for *record*, without framing. Never raises."""
        pri = self.facility * 8 + severity(record.get("levelno"))
        head = (
            f"<{pri}>1 {self._timestamp(record.get('created')) or '-'} "
            f"{self._header_fields(record)} "
        ).encode("ascii")
        params = self._params(record)
        body = self._bom + self._msg(record)
        room = self.max_length - len(head) - 1  # the SP between SD and MSG
        sd = self._structured_data(params, None) if params else b"-"
        if len(sd) + len(body) > room:
            if params:
                sd = self._structured_data(params, max(room - len(body), room // 2))
            if len(sd) + len(body) > room:
                bom = self._bom
                body = bom + cut_middle(body[len(bom):], room - len(sd) - len(bom))
        return head + sd + b" " + body

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """One framed message for *record*. Never raises."""
        msg = self.message(record)
        if self._newline:
            return msg + b"\n"
        return b"%d %b" % (len(msg), msg)


def _field(record: Mapping[str, Any], key: str) -> object:
    """``record[key]``, or the NILVALUE when it is missing or None."""
    value = record.get(key)
    return "-" if value is None else value
