"""``wire="syslog"``: RFC 5424 messages with RFC 6587 framing (sans-IO).

Rules this module keeps (facts from RFC 5424 §6 and RFC 6587 §3.4, via
``shared/reference/field-study.md`` §4):

- ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA BOM MSG``.
- PRI = facility * 8 + severity. Severity from the level, as the stdlib ``SysLogHandler``
  maps it: CRITICAL 2, ERROR 3, WARNING 4, INFO 6, DEBUG 7; a level between two standard
  ones takes the severity of the standard level below it (e.g. 25 -> 6, informational).
- TIMESTAMP: RFC 3339 with microseconds and the local UTC offset, from ``created``.
- HOSTNAME (<= 255), APP-NAME (<= 48), PROCID (<= 128), MSGID (<= 32): printable US-ASCII
  only; other characters become ``_``, longer values are cut to the limit, an empty value is
  the NILVALUE ``-``. PROCID is the pid of the process that logged the record; MSGID the
  logger name; APP-NAME the ``app_name`` option, else the record's process name.
- STRUCTURED-DATA: one element ``[mplog@32473 ...]`` (32473 is the example enterprise
  number RFC 5424 reserves for documentation: replace it with your own ``sd_id``) holding
  the ``extra=`` fields: names cut to 32 printable characters without ``= ] " SP``, values
  as text (JSON for non-strings) with ``\\``, ``"`` and ``]`` escaped by a backslash.
- MSG: the UTF-8 BOM, the message, then the traceback and stack text, each after a LF.
- Framing: ``"octet-counting"`` (default: ``LEN SP MSG``, multi-line messages intact) or
  ``"newline"`` (``MSG LF``; each LF inside the message is written as ``#012``, rsyslog's
  own escape, because a receiver splits a newline-framed stream at every LF).
- ``max_length`` (default 65536 bytes, the message without framing): a longer message has
  its MSG cut at a character boundary and ends with ``[mplog: truncated N bytes]``.
"""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError
from ._record import STANDARD_ATTRS

__all__ = ["FACILITIES", "SyslogWire", "severity"]

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
_FRAMINGS = ("octet-counting", "newline")
_BOM = b"\xef\xbb\xbf"
_OWN = STANDARD_ATTRS | {"mplog_sender", "mplog_seq", "mplog_dropped",
                         "mplog_dropped_first", "mplog_dropped_last"}


def severity(levelno: int) -> int:
    """RFC 5424 severity for a logging level (see the module docstring)."""
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
    text = "".join(c if 33 <= ord(c) <= 126 else "_" for c in str(value))[:limit]
    return text or "-"


def _sd_name(key: str) -> str:
    text = "".join(c if 33 <= ord(c) <= 126 and c not in '= ]"' else "_" for c in key)[:32]
    return text or "_"


def _sd_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


class SyslogWire:
    """Options: ``facility`` (name or 0-23, default ``"user"``), ``app_name``,
    ``hostname`` (default: this machine's name), ``framing`` (``"octet-counting"`` or
    ``"newline"``), ``max_length``, ``sd_id`` (default ``"mplog@32473"``)."""

    def __init__(
        self,
        *,
        facility: str | int = "user",
        app_name: str | None = None,
        hostname: str | None = None,
        framing: str = "octet-counting",
        max_length: int = 65536,
        sd_id: str = "mplog@32473",
    ) -> None:
        if isinstance(facility, str):
            if facility not in FACILITIES:
                raise ConfigError(
                    f"unknown facility {facility!r}; one of {', '.join(FACILITIES)} or 0-23"
                )
            facility = FACILITIES[facility]
        if not isinstance(facility, int) or not 0 <= facility <= 23:
            raise ConfigError(f"facility must be a name or 0-23, got {facility!r}")
        if framing not in _FRAMINGS:
            raise ConfigError(f"framing must be one of {', '.join(_FRAMINGS)}; got {framing!r}")
        if not isinstance(max_length, int) or max_length < 480:
            raise ConfigError("max_length must be an int >= 480 (RFC 5424 minimum)")
        self.facility = facility
        self.app_name = app_name
        self.hostname = _ascii_field(hostname or platform.node() or "-", 255)
        self.framing = framing
        self.max_length = max_length
        self.sd_id = _sd_name(sd_id)

    def message(self, record: Mapping[str, Any]) -> bytes:
        """The RFC 5424 message for *record*, without framing. Never raises."""
        levelno = record.get("levelno")
        pri = self.facility * 8 + severity(levelno if isinstance(levelno, int) else 30)
        created = record.get("created")
        try:
            stamp = datetime.datetime.fromtimestamp(float(created)).astimezone()  # type: ignore[arg-type]
            ts = stamp.isoformat(timespec="microseconds")
        except (TypeError, ValueError, OverflowError, OSError):
            ts = "-"
        app = _ascii_field(self.app_name or record.get("processName") or "-", 48)
        procid = _ascii_field(record.get("process") or "-", 128)
        msgid = _ascii_field(record.get("name") or "-", 32)
        params = [
            f'{_sd_name(str(k))}="{_sd_value(v)}"'
            for k, v in record.items()
            if k not in _OWN and v is not None
        ]
        sd = f"[{self.sd_id} {' '.join(params)}]" if params else "-"
        text = str(record.get("msg", ""))
        for key in ("exc_text", "stack_info"):
            extra = record.get(key)
            if extra:
                text += "\n" + str(extra)
        if self.framing == "newline":
            text = text.replace("\n", "#012")
        head = f"<{pri}>1 {ts} {self.hostname} {app} {procid} {msgid} {sd} ".encode(
            "utf-8", "backslashreplace"
        )
        body = text.encode("utf-8", "backslashreplace")
        room = self.max_length - len(head) - len(_BOM)
        if len(body) > room:
            cut = len(body) - room
            marker = f" [mplog: truncated {cut} bytes]".encode()
            keep = body[: max(0, room - len(marker))].decode("utf-8", "ignore").encode()
            body = keep + f" [mplog: truncated {len(body) - len(keep)} bytes]".encode()
        return head + _BOM + body

    def encode(self, record: Mapping[str, Any]) -> bytes:
        msg = self.message(record)
        if self.framing == "newline":
            return msg + b"\n"
        return b"%d " % len(msg) + msg
