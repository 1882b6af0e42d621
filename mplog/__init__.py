"""mplog: a multiprocess-safe logging pipeline.

Every process hands its records to an :class:`mplog.QueueHandler`; one supervised listener
process passes them to your handlers, and :class:`mplog.SocketHandler` owns the single
connection to the receiver, buffering instead of dropping while it is away.

Importing mplog changes nothing: no handler, thread or hook exists until you call
:func:`mplog.start` or :func:`mplog.worker_init`.
"""

from __future__ import annotations

from ._collector import Collector
from ._errors import ConfigError, MplogError, ProtocolError
from ._pipeline import Pipeline, start, worker_init
from .handlers import ENV_ADDRESS, QueueHandler, QueueListener, SocketHandler

__version__ = "0.1.0"

__all__ = [
    "ENV_ADDRESS",
    "Collector",
    "ConfigError",
    "MplogError",
    "Pipeline",
    "ProtocolError",
    "QueueHandler",
    "QueueListener",
    "SocketHandler",
    "__version__",
    "start",
    "worker_init",
]
