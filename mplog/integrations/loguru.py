"""loguru: a sink that feeds the pipeline, with ``bind()``/``extra`` fields as record fields.

    from loguru import logger
    import mplog.integrations.loguru

    mplog.integrations.loguru.install()           # logger.add(Sink(), ...); returns its id
    logger.bind(user="bob").info("logged in")     # arrives with a top-level field user=bob

Each loguru message becomes a standard ``logging.LogRecord`` with the facts loguru
recorded (time, level, logger name, file, line, function, process, thread, exception) and
every ``extra`` key as a record field, handed to an :class:`mplog.QueueHandler`: written to
the listener before the loguru call returns, like any other record of the process.

Which pipeline: the *address* given to :class:`Sink`, else the pipeline the process logs
into (its root logger's ``mplog.QueueHandler``: after :func:`mplog.start` or
:func:`mplog.worker_init`), else ``$MPLOG_ADDRESS``; it is looked up at the first message,
so a sink added before the pipeline started works once it runs.

loguru is imported only by :func:`install`; mplog does not depend on it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .._record import STANDARD_ATTRS
from ..handlers import QueueHandler

__all__ = ["Sink", "install", "to_log_record"]


def to_log_record(record: dict[str, Any]) -> logging.LogRecord:
    """A stdlib ``LogRecord`` for loguru's ``message.record`` *record*.

    ``levelname`` is loguru's (``SUCCESS``, ``TRACE`` included) and ``levelno`` its number;
    an ``extra`` key that names a standard attribute gets a ``_`` appended rather than
    replacing it.
    """
    level = record["level"]
    file = record["file"]
    exc = record.get("exception")
    exc_info = (exc.type, exc.value, exc.traceback) if exc is not None and exc.type else None
    rec = logging.LogRecord(
        record["name"] or "loguru", level.no, file.path, record["line"], record["message"],
        (), exc_info, func=record["function"],
    )
    rec.levelname = level.name
    created = record["time"].timestamp()
    rec.created = created
    rec.msecs = (created - int(created)) * 1000
    rec.relativeCreated = record["elapsed"].total_seconds() * 1000
    rec.process = record["process"].id
    rec.processName = record["process"].name
    rec.thread = record["thread"].id
    rec.threadName = record["thread"].name
    rec.module = record["module"]
    for key, value in record["extra"].items():
        name = str(key)
        while name in STANDARD_ATTRS or name in rec.__dict__:
            name += "_"
        rec.__dict__[name] = value
    return rec


class Sink:
    """A loguru sink (``logger.add(Sink())``) that hands each message to the pipeline."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._handler: QueueHandler | None = None
        self._lock = threading.Lock()

    def _target(self) -> QueueHandler:
        if self.address is None:
            for h in logging.getLogger().handlers:
                if isinstance(h, QueueHandler):
                    return h  # the pipeline this process logs into (it may be re-set)
        with self._lock:
            if self._handler is None:
                self._handler = QueueHandler(self.address)  # address or $MPLOG_ADDRESS
            return self._handler

    def __call__(self, message: Any) -> None:
        self._target().handle(to_log_record(message.record))

    def close(self) -> None:
        """Close the sink's own connection, if it made one (``logger.remove`` does not;
        the process's exit does)."""
        with self._lock:
            handler, self._handler = self._handler, None
        if handler is not None:
            handler.close()


def install(level: str | int = "DEBUG", address: str | None = None, **add_options: Any) -> int:
    """``loguru.logger.add(Sink(address), level=level, **add_options)``; the handler id
    (for ``logger.remove``)."""
    from loguru import logger

    return logger.add(Sink(address), level=level, format="{message}", **add_options)
