"""IO: a child that ``multiprocessing`` starts with *spawn* or *forkserver* from a configured
process logs into its parent's pipeline with no initializer.

How: such a child imports its parent's main module again (as ``__mp_main__``; with
*forkserver*, the server process does, and its children are forked from it), and that
module imports mplog. At that import, if all of these hold:

- ``MPLOG_ADDRESS`` is in the environment (``start()`` exported it) and ``MPLOG_AUTOJOIN``
  is not ``0``;
- this process is a ``multiprocessing`` or ``multiprocess`` child (its ``parent_process()``
  is set, or it is importing its parent's main module right now);
- it is not the mplog listener, and ``logging.lastResort`` is still the stdlib's;

then ``logging.lastResort`` (the handler ``logging`` uses for a record that finds no handler
at all) becomes one that sends records into the pipeline, and the root logger's level,
if nobody set it, becomes the one ``start(level=...)`` exported (``MPLOG_LEVEL``).

Nothing is added to the root logger: the child's own configuration (``basicConfig``,
``dictConfig``, ``addHandler``) works as it would without mplog and, once it gives the
root logger a handler, records go there and no longer to the pipeline (no double
logging). In any other process, importing mplog changes nothing.

Not covered: a child whose parent's main module does not import mplog (then nothing runs
in the child to join), and a forkserver started before ``mplog.start()`` exported the
address. ``mplog.worker_init`` as the initializer covers both.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["ENV_AUTOJOIN", "AutoJoinHandler", "join_if_child"]

ENV_AUTOJOIN = "MPLOG_AUTOJOIN"
_ENV_ADDRESS = "MPLOG_ADDRESS"  # mplog.handlers.ENV_ADDRESS; not imported: this runs at import
_ENV_LEVEL = "MPLOG_LEVEL"
_LISTENER_NAME = "mplog-listener"


class AutoJoinHandler(logging.Handler):
    """``logging.lastResort`` in an auto-joined child: records that find no handler go to
    the pipeline at *address* (through an :class:`mplog.QueueHandler` made on first use,
    so that a child that never logs never connects)."""

    def __init__(self, address: str) -> None:
        super().__init__(logging.NOTSET)
        self.address = address
        self._queue_handler: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            qh = self._queue_handler
            if qh is None:
                from .handlers import QueueHandler

                qh = self._queue_handler = QueueHandler(self.address)
            qh.handle(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self._queue_handler is not None:
            self._queue_handler.close()
        super().close()


def _is_mp_child() -> bool:
    for name in ("multiprocessing.process", "multiprocess.process"):
        mod: Any = sys.modules.get(name)
        if mod is None:
            continue
        current = mod.current_process()
        if current.name == _LISTENER_NAME:
            return False
        if getattr(current, "_inheriting", False) or mod.parent_process() is not None:
            return True
    return False


def join_if_child() -> bool:
    """Install the auto-join (see the module docstring) if this process qualifies; True
    if it did. Called once, when mplog is imported."""
    address = os.environ.get(_ENV_ADDRESS)
    if not address or os.environ.get(ENV_AUTOJOIN, "").strip() == "0":
        return False
    if not _is_mp_child():
        return False
    if logging.lastResort is not logging._defaultLastResort:  # type: ignore[attr-defined]
        return isinstance(logging.lastResort, AutoJoinHandler)  # already, or the user's own
    logging.lastResort = AutoJoinHandler(address)
    root = logging.getLogger()
    if root.level == logging.WARNING:  # the default: nobody chose one
        try:
            level = int(os.environ.get(_ENV_LEVEL, "0"))
        except ValueError:
            level = logging.NOTSET
        root.setLevel(level)
    return True


def leave() -> None:
    """Undo :func:`join_if_child` (the listener process calls it: it must never send its
    own records to itself)."""
    if isinstance(logging.lastResort, AutoJoinHandler):
        logging.lastResort.close()
        logging.lastResort = logging._defaultLastResort  # type: ignore[attr-defined]
