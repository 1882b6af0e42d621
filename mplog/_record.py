"""Sans-IO record codec: ``LogRecord`` -> data-only bytes -> record ``dict``.

Rules this module keeps:

- The caller's ``LogRecord`` is only read, never modified (the lesson of bpo-35726).
- What travels is what a receiver's ``Formatter`` needs to render the record exactly as it
  would have locally: the merged message (``msg``; ``args`` is dropped), the formatted
  traceback (``exc_text``), ``stack_info`` as text, every standard attribute, and each
  ``extra=`` field: kept as is when JSON can represent it, else replaced by its ``repr()``.
- Encoding never raises: an odd object in ``args`` or ``extra`` degrades to text.
- The body is JSON (a data-only codec: decoding it can never run code). Records are a JSON
  array in a fixed field order, which is cheaper to write than an object; control messages
  are JSON objects, so the first byte tells the two apart.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from ._errors import ProtocolError
from ._framing import HEADER

__all__ = [
    "FIELDS",
    "STANDARD_ATTRS",
    "decode",
    "encode",
    "encode_control",
    "make_record",
    "prepare_dict",
    "record_dict",
    "safe_repr",
]

#: The fixed order of the standard fields in an encoded record; extras follow as a JSON
#: object (or ``null``) in the last position.
FIELDS: tuple[str, ...] = (
    "name",
    "levelno",
    "levelname",
    "msg",
    "created",
    "msecs",
    "relativeCreated",
    "process",
    "processName",
    "thread",
    "threadName",
    "pathname",
    "filename",
    "module",
    "lineno",
    "funcName",
    "exc_text",
    "stack_info",
    "taskName",
)
_NFIELDS = len(FIELDS)

#: Attributes every ``LogRecord`` has (plus the ones formatters add); anything else in a
#: record's ``__dict__`` came from ``extra=`` or a filter and travels as an extra.
STANDARD_ATTRS: frozenset[str] = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName", "args", "exc_info"}

_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_decode_json = json.JSONDecoder().decode
_exc_formatter = logging.Formatter()


def safe_repr(value: object) -> str:
    """``repr(value)``, or a placeholder naming the type when ``repr`` itself fails."""
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not cost the record
        return f"<unrepresentable {type(value).__qualname__}: {type(exc).__name__}>"


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:  # bad format string or args: keep both, as text
        return (
            f"{safe_repr(record.msg)} % {safe_repr(record.args)} "
            f"(mplog: message formatting failed: {type(exc).__name__}: {exc})"
        )


def _exc_text(record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return record.exc_text
    ei = record.exc_info
    if ei and ei[0] is not None:
        try:
            return _exc_formatter.formatException(ei)
        except Exception as exc:  # an exception whose str() raises
            return f"(mplog: traceback formatting failed: {type(exc).__name__}: {exc})\n" + (
                "".join(traceback.format_exception_only(ei[0], None))
            )
    return None


def _json_safe(value: object) -> Any:
    try:
        _encode_json(value)
    except (TypeError, ValueError, RecursionError, OverflowError):
        return safe_repr(value)
    return value


def _fields(record: logging.LogRecord, msg: str) -> list[Any]:
    d = record.__dict__
    extra_keys = d.keys() - STANDARD_ATTRS
    return [
        record.name,
        record.levelno,
        record.levelname,
        msg,
        record.created,
        record.msecs,
        record.relativeCreated,
        record.process,
        record.processName,
        record.thread,
        record.threadName,
        record.pathname,
        record.filename,
        record.module,
        record.lineno,
        record.funcName,
        _exc_text(record),
        record.stack_info,
        d.get("taskName"),
        {k: d[k] for k in extra_keys} if extra_keys else None,
    ]


def encode(record: logging.LogRecord) -> bytes:
    """Return one length-prefixed intake frame for *record*. Never raises for odd values."""
    fields = _fields(record, _message(record))
    try:
        text = _encode_json(fields)
    except (TypeError, ValueError, RecursionError, OverflowError):
        # Slow path, taken only for records carrying something JSON cannot hold.
        extras = fields[-1]
        if extras:
            fields[-1] = {str(k): _json_safe(v) for k, v in extras.items()}
        fields[:-1] = [_json_safe(v) for v in fields[:-1]]
        text = _encode_json(fields)
    body = text.encode("ascii")
    return HEADER.pack(len(body)) + body


def encode_control(message: dict[str, Any]) -> bytes:
    """Return one length-prefixed intake frame carrying a control message (a JSON object)."""
    body = _encode_json(message).encode("ascii")
    return HEADER.pack(len(body)) + body


def prepare_dict(record: logging.LogRecord) -> dict[str, Any]:
    """The ``__dict__`` of the record the listener will rebuild from ``encode(record)``."""
    fields = _fields(record, _message(record))
    extras = fields[-1]
    if extras:
        fields[-1] = {str(k): _json_safe(v) for k, v in extras.items()}
    return record_dict([_json_safe(v) for v in fields[:-1]] + [fields[-1]])


def decode(body: bytes) -> list[Any] | dict[str, Any]:
    """Decode one intake frame body: a record's field list, or a control ``dict``.

    Raises :class:`ProtocolError` for anything else.
    """
    try:
        value = _decode_json(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"intake frame is not valid JSON: {exc}") from None
    if isinstance(value, list):
        if len(value) != _NFIELDS + 1 or not (value[-1] is None or isinstance(value[-1], dict)):
            raise ProtocolError(f"intake record has {len(value)} fields, expected {_NFIELDS + 1}")
        if not isinstance(value[1], int) or not isinstance(value[0], str):
            raise ProtocolError("intake record has a bad name or level")
        return value
    if isinstance(value, dict) and isinstance(value.get("op"), str):
        return value
    raise ProtocolError(f"intake frame holds a {type(value).__name__}, not a record or control")


def record_dict(fields: list[Any]) -> dict[str, Any]:
    """Turn a decoded field list into a ``LogRecord.__dict__``-shaped dict."""
    d = dict(zip(FIELDS, fields, strict=False))  # extras follow the fields
    extras = fields[_NFIELDS]
    if extras:
        for k, v in extras.items():
            d.setdefault(k, v)  # an extra never overrides a standard attribute
    d["args"] = None
    d["exc_info"] = None
    d["message"] = d["msg"]
    return d


def make_record(d: dict[str, Any]) -> logging.LogRecord:
    """Build a ``LogRecord`` from *d* without running ``LogRecord.__init__``.

    ``logging.makeLogRecord`` runs ``__init__`` (clock, thread and process lookups) only to
    overwrite every field; the listener makes one record per delivered line, so skip it.
    """
    rv = logging.LogRecord.__new__(logging.LogRecord)
    rv.__dict__.update(d)
    return rv
