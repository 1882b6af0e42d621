"""Celery: every process of a worker logs through one mplog pipeline.

    from mplog.integrations.celery import install

    app = Celery("proj", broker=...)
    install(app, handlers=[mplog.SocketHandler("logs.example.com", 9020)])

``install()`` takes the arguments of :func:`mplog.start` (``handlers`` or ``config``,
``level``, ``address`` and the options) and connects receivers to celery's signals. It starts
nothing: the module that defines the app is also imported by every process that only
sends tasks (a web app calling ``.delay()``), and those processes keep their logging as is.

Rules this module keeps (``docs/integrations/celery.md`` tells the whole story):

- ``install()`` checks what it can at once (handlers, level, option names) and raises
  :class:`mplog.ConfigError`; what only ``start()`` can check (the address, a handlers
  factory) fails the worker at start-up with that error, never later.
- The worker's main process starts the pipeline at ``worker_init``, before the pool
  exists, and stops it at ``worker_shutdown``, after the pool processes are gone. Its
  root level is ``level=``, else the worker's ``-l/--loglevel``.
- ``setup_logging`` has a receiver, so celery configures no logging of its own anywhere
  (``worker_hijack_root_logger``, ``--logfile`` and the log formats no longer apply). In a
  process that is not a worker's main process it configures logging instead: a process
  that has ``MPLOG_ADDRESS`` (a pool process started by *spawn*) joins that pipeline, any
  other (``celery beat``, ``celery events``) starts a pipeline of its own, stopped at exit.
- Pool processes (billiard, fork or spawn) are configured at ``worker_process_init``; a
  forked one already is. Their records are written to the listener before ``emit()``
  returns, so a pool process that is recycled, exits with ``os._exit`` or is SIGKILLed
  has handed over everything it logged; ``worker_process_shutdown`` only flushes the
  root logger's handlers.
- Only the process that started a pipeline stops it; a forked child that inherited this
  module's state leaves it alone.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals  # type: ignore[import-untyped]  # celery ships no types
from celery._state import get_current_task  # type: ignore[import-untyped]
from celery.utils.log import get_multiprocessing_logger  # type: ignore[import-untyped]

from .._dictconfig import check_config
from .._errors import ConfigError
from .._pipeline import Handlers, Pipeline, check_level, check_options, ship_handlers
from .._pipeline import start as _start_pipeline
from .._pipeline import worker_init as _worker_init
from ..handlers import ENV_ADDRESS, QueueHandler

__all__ = ["install"]

#: celery's own default for ``-l/--loglevel``.
_CELERY_DEFAULT_LEVEL = logging.WARNING


@dataclass(frozen=True)
class _Settings:
    handlers: Handlers | None
    config: dict[str, Any] | None
    level: int | None
    address: str | None
    options: dict[str, Any]


_settings: _Settings | None = None
#: The pipeline this module started, and the process that started it (a forked pool
#: process inherits both and must not mistake the pipeline for its own).
_pipeline: Pipeline | None = None
_pipeline_pid = 0
#: Why the pipeline of this worker could not start (raised again at ``setup_logging``).
_start_error: Exception | None = None
_start_error_pid = 0


def install(
    app: Any,
    handlers: Handlers | None = None,
    *,
    config: dict[str, Any] | None = None,
    level: int | str | None = None,
    address: str | None = None,
    **options: Any,
) -> None:
    """Wire *app*'s workers to an mplog pipeline; call it where the app is defined.

    Args:
        app: the :class:`celery.Celery` application.
        handlers: where the listener sends records, as for :func:`mplog.start`: a list of
            handlers (pickled to the listener process) or a callable that builds them there.
        config: instead of *handlers*, a ``logging.config.dictConfig`` dictionary for the
            listener, as for :func:`mplog.start`.
        level: root level of every worker process; None (default): the worker's
            ``-l/--loglevel``, as celery would use it.
        address: the intake socket path; None (default): a fresh private one per worker.
        options: the other options of :func:`mplog.start` (``start_method``, ...).

    Calling it again replaces the settings, as long as no pipeline of this process runs.
    Nothing starts here; see the module docstring for what happens in which process.

    Raises:
        ConfigError: *app* is not a celery app, bad handlers, config or level, an unknown
            option, ``install=`` (the integration decides which processes are configured),
            or a pipeline of this process already runs.
    """
    global _settings
    if not isinstance(app, Celery):
        raise ConfigError(f"install() needs a celery.Celery app, got {type(app).__name__}")
    if "install" in options:
        raise ConfigError(
            "install= is not an option of the celery integration: the worker's processes "
            "are always configured, processes that only send tasks never are"
        )
    check_options(options, "install()")
    # What start() would reject in the worker is rejected here, in every process.
    if (handlers is None) == (config is None):
        raise ConfigError("install() needs handlers or config=, and not both")
    if config is not None:
        config = check_config(config)
    else:
        assert handlers is not None
        ship_handlers(handlers)
    settings = _Settings(
        handlers=handlers,
        config=config,
        level=None if level is None else check_level(level),
        address=None if address is None else os.fspath(address),
        options=dict(options),
    )
    if _owns_pipeline():
        raise ConfigError(
            f"install() called while this process's pipeline runs ({_pipeline!r}); "
            "call it once, where the app is defined"
        )
    _settings = settings
    for signal, receiver in (
        (signals.worker_init, _on_worker_init),
        (signals.setup_logging, _on_setup_logging),
        (signals.worker_process_init, _on_worker_process_init),
        (signals.worker_process_shutdown, _on_worker_process_shutdown),
        (signals.worker_shutdown, _on_worker_shutdown),
    ):
        # Strong references (the receivers are module functions anyway); the uid makes a
        # second install() replace the settings instead of connecting twice.
        signal.connect(receiver, weak=False, dispatch_uid=f"mplog.{receiver.__name__}")


def _owns_pipeline() -> bool:
    return _pipeline is not None and _pipeline_pid == os.getpid()


def _level(celery_level: object) -> int:
    """``level=`` if given, else celery's ``-l`` (an int by the time signals carry it)."""
    assert _settings is not None
    if _settings.level is not None:
        return _settings.level
    if isinstance(celery_level, int) and celery_level > 0:
        return celery_level
    return _CELERY_DEFAULT_LEVEL


def _start(celery_level: object) -> None:
    global _pipeline, _pipeline_pid
    if _settings is None or _owns_pipeline():
        return
    _pipeline = _start_pipeline(
        _settings.handlers,
        config=_settings.config,
        level=_level(celery_level),
        address=_settings.address,
        install=True,
        **_settings.options,
    )
    _pipeline_pid = os.getpid()
    _add_task_fields()


class _TaskFields(logging.Filter):
    """Adds ``task_id`` and ``task_name`` to records logged while a task runs in this
    process (what celery's ``TaskFormatter`` shows; it is not installed here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = get_current_task()
        if task is not None and not hasattr(record, "task_id"):
            request = getattr(task, "request", None)
            task_id = getattr(request, "id", None)
            if task_id is not None:
                record.task_id = task_id
                record.task_name = task.name
        return True


def _add_task_fields() -> None:
    """Put :class:`_TaskFields` on this process's mplog handler (once; forks inherit it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, QueueHandler) and not any(
            isinstance(f, _TaskFields) for f in handler.filters
        ):
            handler.addFilter(_TaskFields())


# -- signal receivers (celery calls them with keyword arguments only) --------------------


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """The worker's main process, before its pool exists: start the pipeline."""
    global _start_error, _start_error_pid
    try:
        _start(getattr(sender, "loglevel", None))
    except Exception as exc:
        # celery logs what a receiver raises and goes on; setup_logging, which comes next
        # in this process and whose receivers' errors celery does raise, raises it again.
        _start_error, _start_error_pid = exc, os.getpid()
        raise


def _on_setup_logging(loglevel: object = None, **_: Any) -> None:
    """celery would configure logging now; having a receiver, it leaves it to us."""
    if _start_error is not None and _start_error_pid == os.getpid():
        raise _start_error  # the worker stops here, with mplog's ConfigError
    if _settings is None:
        return
    _route_billiard_logger(loglevel)
    if _owns_pipeline():
        return  # the worker's main process: configured at worker_init
    if os.environ.get(ENV_ADDRESS):
        # A pool process started by spawn (it inherited the address from the worker), or a
        # celery program started by a process that runs a pipeline: log into that one.
        _worker_init(level=_level(loglevel))
        _add_task_fields()
        return
    _start(loglevel)  # celery beat, celery events, a program calling app.log.setup()


def _route_billiard_logger(loglevel: object) -> None:
    """What celery's own setup does for billiard's logger ("Process ... exited with signal
    9"): ERROR and up (every level with ``MP_LOG`` set), here into the pipeline."""
    logger = get_multiprocessing_logger()
    if isinstance(logger, logging.Logger):
        logger.propagate = True  # billiard creates it with propagate=0 and no handler
        logger.setLevel(_level(loglevel) if os.environ.get("MP_LOG") else logging.ERROR)


def _on_worker_process_init(**_: Any) -> None:
    """A new pool process (at start, after a crash, when recycled)."""
    # Forked: configured already (the root logger's QueueHandler got a fresh connection at
    # fork), so this only confirms it. Spawned: setup_logging did it moments ago. Either
    # way keep the root level the process has.
    address = _pipeline.address if _pipeline is not None else None
    _worker_init(address, level=logging.getLogger().level)
    _add_task_fields()


def _on_worker_process_shutdown(**_: Any) -> None:
    """A pool process exits (billiard ends it with ``os._exit``, skipping logging.shutdown)."""
    # Records sent through the QueueHandler are with the listener already; other handlers
    # a task may have added to the root logger (a file, a stream) get their buffers out.
    for handler in logging.getLogger().handlers:
        handler.flush()


def _on_worker_shutdown(**_: Any) -> None:
    """The worker's main process, after its pool is gone: drain, flush and stop."""
    global _pipeline
    if not _owns_pipeline():
        return
    assert _pipeline is not None
    pipeline, _pipeline = _pipeline, None
    pipeline.stop()
