"""structlog: key-value events arrive at the listener as records with top-level fields.

Nothing to call in the processes that log: structlog's usual stdlib setups already end in
the standard library's logging, and mplog's :class:`~mplog.QueueHandler` on the root
logger takes it from there.

- ``structlog.stdlib.ProcessorFormatter.wrap_for_formatter`` as the last processor logs
  the event dict itself as the record's ``msg``; mplog sends such a record as data: the
  ``event`` is the message, every other key a top-level field, ``exc_info=True`` a
  formatted traceback (``exc_text``). The logger object structlog attaches for a formatter
  in the same process stays behind.
- ``structlog.stdlib.render_to_log_kwargs`` as the last processor logs ``msg=event`` and
  ``extra=`` the other keys: ordinary extras, which mplog always carried.

Either way every key arrives as a field of the record (a value JSON cannot hold as its
``repr()``), so ``mplog serve`` writes it as a top-level JSON key and a ``Formatter`` at
the listener can name it (``%(user)s``). To render records the structlog way at the
listener (one JSON object per line with the keys structlog would write), give the
listener's handlers :func:`listener_formatter`.

structlog is imported only when this module is; mplog does not depend on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from .._record import STANDARD_ATTRS

__all__ = ["add_record_fields", "listener_formatter"]

Processor = Callable[[Any, str, Any], Any]


def add_record_fields(logger: Any, method_name: str, event_dict: Any) -> Any:
    """A structlog processor for a ``ProcessorFormatter``'s ``foreign_pre_chain`` at the
    listener: copy each field that travelled with the record (the event's keys, the
    ``extra=`` fields) into the event dict, without overriding what is there."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        for key, value in record.__dict__.items():
            if key not in STANDARD_ATTRS and not key.startswith("_"):
                event_dict.setdefault(key, value)
    return event_dict


def listener_formatter(
    renderer: Processor | None = None,
    *,
    pre_chain: Iterable[Processor] | None = None,
) -> logging.Formatter:
    """A ``structlog.stdlib.ProcessorFormatter`` for the listener's handlers.

    Each record is turned back into a structlog event dict: ``event`` (the message),
    ``level``, ``logger``, ``timestamp`` (ISO 8601, from the record's ``created``, so the
    time the event happened in its process, not when it reached the listener) and every
    field that travelled with the record; then *renderer* (default
    ``structlog.processors.JSONRenderer()``) makes the line. A traceback is rendered into
    ``exception``.

    Args:
        renderer: the final processor, e.g. ``structlog.dev.ConsoleRenderer()``.
        pre_chain: processors to run instead of the default ``add_log_level``,
            ``add_logger_name`` and the timestamp; the fields and the traceback are
            added either way.
    """
    middle = list(pre_chain) if pre_chain is not None else [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _timestamp_from_record,
    ]
    return structlog.stdlib.ProcessorFormatter(
        # The foreign chain runs while the record still has its exc_text (the formatter
        # clears it before the processors run).
        foreign_pre_chain=[add_record_fields, *middle, _exception_from_record],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer if renderer is not None else structlog.processors.JSONRenderer(),
        ],
    )


def _timestamp_from_record(logger: Any, method_name: str, event_dict: Any) -> Any:
    import datetime

    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord) and "timestamp" not in event_dict:
        event_dict["timestamp"] = datetime.datetime.fromtimestamp(
            record.created, datetime.UTC
        ).isoformat()
    return event_dict


def _exception_from_record(logger: Any, method_name: str, event_dict: Any) -> Any:
    # The traceback travelled as text (exc_text); exc_info is None at the listener.
    record = event_dict.get("_record")
    text = getattr(record, "exc_text", None) if record is not None else None
    if text and "exception" not in event_dict:
        event_dict["exception"] = text
    return event_dict
