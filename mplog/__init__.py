"""mplog: a multiprocess-safe logging pipeline.

Every process hands its records to an :class:`mplog.QueueHandler`; one supervised listener
process passes them to your handlers, and :class:`mplog.SocketHandler` owns the single
connection to the receiver, buffering instead of dropping while it is away.

Importing mplog changes nothing: no handler or thread exists until you call
:func:`mplog.start` or :func:`mplog.worker_init`. Its one exit hook is registered at
import, so that it runs after every exit handler registered later (exit handlers run
last registered first), and does nothing unless a pipeline is running. It also loads
nothing it does not need: each public name is imported on first use (module
``__getattr__``), so a worker that only logs never loads the collector, psutil or the
wire codecs.
"""

from __future__ import annotations

import atexit as _atexit
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._collector import Collector
    from ._errors import ConfigError, MplogError, ProtocolError
    from ._pipeline import Pipeline, start, worker_init
    from ._stats import Stats
    from .handlers import ENV_ADDRESS, QueueHandler, QueueListener, SocketHandler

__version__ = "0.1.0"

#: Where each public name lives; imported on first access.
_LAZY: dict[str, str] = {
    "Collector": "._collector",
    "ConfigError": "._errors",
    "MplogError": "._errors",
    "ProtocolError": "._errors",
    "Pipeline": "._pipeline",
    "start": "._pipeline",
    "worker_init": "._pipeline",
    "Stats": "._stats",
    "ENV_ADDRESS": ".handlers",
    "QueueHandler": ".handlers",
    "QueueListener": ".handlers",
    "SocketHandler": ".handlers",
}

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
    "Stats",
    "__version__",
    "start",
    "worker_init",
]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'mplog' has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _join_if_child() -> None:
    # A spawn/forkserver child of a configured process joins its pipeline (see
    # mplog._autojoin: only when MPLOG_ADDRESS is set and this is a multiprocessing child;
    # in any other process importing mplog changes nothing, and imports nothing more).
    import os
    import sys

    started_by_multiprocessing = (
        "multiprocessing.process" in sys.modules or "multiprocess.process" in sys.modules
    )
    if started_by_multiprocessing and os.environ.get("MPLOG_ADDRESS"):
        from ._autojoin import join_if_child

        join_if_child()


def _stop_pipelines_at_exit() -> None:
    # Registered here, at import, not by start(): an exit handler registered between
    # ``import mplog`` and ``start()`` (a library's, the program's) runs before this one,
    # so its records are delivered.
    import sys

    pipeline = sys.modules.get(__name__ + "._pipeline")
    if pipeline is not None:
        pipeline._stop_live_at_exit()


_atexit.register(_stop_pipelines_at_exit)
_join_if_child()
