"""IO: the listener process's entry point: build the handlers, bind, serve.

Rules this module keeps:

- The handlers (or their factory) arrive pickled and are built here, in the listener
  process; a failure is reported to ``start()`` as one line, not as a traceback.
- The intake server (``mplog._intake.IntakeServer``) runs in the main thread until it is
  asked to stop or the parent dies (``PR_SET_PDEATHSIG`` where available, and a
  ``getppid()`` check on every loop turn).
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigError
from ._intake import IntakeServer, bind
from ._proctitle import set_listener_title
from .handlers import QueueListener, SocketHandler

__all__ = ["ListenerConfig", "main"]


@dataclass
class ListenerConfig:
    """What the listener process needs; pickled to it by ``multiprocess``."""

    address: str
    handlers: bytes  # dill: a list of handlers or a callable returning one
    parent_pid: int
    incarnation: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def _set_pdeathsig(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError) as exc:
        # Not fatal: the getppid() check on every loop turn still notices.
        sys.stderr.write(f"mplog listener: PR_SET_PDEATHSIG unavailable ({exc})\n")


def build_handlers(payload: bytes) -> list[logging.Handler]:
    """Unpickle the handlers (or their factory) and build them; raise ValueError on junk."""
    import dill

    obj = dill.loads(payload)
    if callable(obj) and not isinstance(obj, logging.Handler):
        obj = obj()
    if isinstance(obj, logging.Handler):
        obj = [obj]
    if not isinstance(obj, (list, tuple)) or not all(isinstance(h, logging.Handler) for h in obj):
        raise ValueError(f"handlers must be logging.Handler instances, got {obj!r}")
    return list(obj)


def main(cfg: ListenerConfig, ready: Any) -> None:
    """Entry point of the listener process."""
    _set_pdeathsig(signal.SIGUSR1)
    if os.getppid() != cfg.parent_pid:
        return  # the parent died before we got here
    set_listener_title(cfg.parent_pid)
    try:
        handlers = build_handlers(cfg.handlers)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        cause = exc.__cause__
        if cause is not None:  # dictConfig wraps the real reason
            why += f" ({type(cause).__name__}: {cause})"
        ready.send(("error", f"building the handlers failed: {why}"))
        return
    try:
        lsock = bind(cfg.address)
    except OSError as exc:
        ready.send(("error", f"cannot listen on address {cfg.address!r}: {exc}"))
        return
    listener = QueueListener(None, *handlers)
    sockets = [h for h in handlers if isinstance(h, SocketHandler)]
    server = IntakeServer(
        lsock, cfg.address, listener, handlers, sockets, parent_pid=cfg.parent_pid
    )
    server.incarnation = cfg.incarnation
    server.install_signals()
    try:
        listener.start()  # opens spools
    except ConfigError as exc:
        lsock.close()
        pathlib.Path(cfg.address).unlink(missing_ok=True)
        ready.send(("error", str(exc)))
        return
    metrics = None
    if cfg.options.get("metrics_port") is not None:
        from ._metrics import serve_pipeline_metrics
        try:
            metrics = serve_pipeline_metrics(cfg.options["metrics_port"], server.stats)
        except ConfigError as exc:
            listener.stop()
            lsock.close()
            pathlib.Path(cfg.address).unlink(missing_ok=True)
            ready.send(("error", str(exc)))
            return
        server.metrics_port = metrics.port
    ready.send(("ready", os.getpid()))
    ready.close()
    try:
        server.run()
    finally:
        if metrics is not None:
            metrics.close()
