"""``wire="jsonl"``: one JSON object per line (sans-IO).

The format the TCP JSON-lines inputs of Logstash (``json_lines``), Vector (``socket`` +
newline framing + JSON) and Fluent Bit (``tcp``, ``Format json``) accept. Field names are
stable (``docs/destinations.md``): ``timestamp`` (RFC 3339, microseconds, local offset),
``level``, ``levelno``, ``logger``, ``message``, ``process``, ``process_name``, ``thread``,
``thread_name``, ``pathname``, ``lineno``, ``function``, ``exception``, ``stack``,
``extra`` (an object with every ``extra=`` field). Non-ASCII is escaped, so every record
is exactly one line whatever it holds (newlines, quotes, control characters, lone
surrogates).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

from ._record import STANDARD_ATTRS

__all__ = ["JsonlWire", "to_json_object"]

_OWN = STANDARD_ATTRS | {"mplog_sender", "mplog_seq"}
_encoder = json.JSONEncoder(separators=(",", ":"), default=repr)


def to_json_object(record: Mapping[str, Any]) -> dict[str, Any]:
    created = record.get("created")
    try:
        ts = datetime.datetime.fromtimestamp(float(created)).astimezone()  # type: ignore[arg-type]
        stamp: str | None = ts.isoformat(timespec="microseconds")
    except (TypeError, ValueError, OverflowError, OSError):
        stamp = None
    return {
        "timestamp": stamp,
        "level": record.get("levelname"),
        "levelno": record.get("levelno"),
        "logger": record.get("name"),
        "message": record.get("msg"),
        "process": record.get("process"),
        "process_name": record.get("processName"),
        "thread": record.get("thread"),
        "thread_name": record.get("threadName"),
        "pathname": record.get("pathname"),
        "lineno": record.get("lineno"),
        "function": record.get("funcName"),
        "exception": record.get("exc_text"),
        "stack": record.get("stack_info"),
        "extra": {str(k): v for k, v in record.items() if k not in _OWN},
    }


class JsonlWire:
    """No options."""

    def encode(self, record: Mapping[str, Any]) -> bytes:
        try:
            text = _encoder.encode(to_json_object(record))
        except (ValueError, RecursionError):  # a circular extra: keep the record, as text
            obj = to_json_object(record)
            obj["extra"] = {k: repr(v) for k, v in obj["extra"].items()}
            text = _encoder.encode(obj)
        return text.encode("ascii") + b"\n"
