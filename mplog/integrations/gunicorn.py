"""gunicorn server hooks that log every process of a gunicorn server into one mplog pipeline.

In ``gunicorn.conf.py``::

    import mplog
    from mplog.integrations.gunicorn import *

    configure([mplog.SocketHandler("logs.example", 9020)], level="INFO")

What the names this module exports (``__all__``) do, in the order gunicorn uses them:

- :func:`configure` (called by the config file; gunicorn runs the file again on every HUP)
  stores the arguments of :func:`mplog.start` and validates them at once, so a mistake
  fails the config file with a :class:`mplog.ConfigError` that says what is wrong.
- :class:`Logger`, exported as ``logger_class``: gunicorn's own logger, changed so that
  ``gunicorn.error`` and ``gunicorn.access`` records go to the root logger, hence into the
  pipeline, instead of to the console (access records are always written). gunicorn
  creates it in the arbiter before anything is logged, and it starts the pipeline there,
  so even "Starting gunicorn" is delivered.
- :func:`on_starting` (arbiter): starts the pipeline if the logger has not (a server that
  uses a ``logger_class`` of its own). The listener process is a child of the arbiter.
- :func:`post_fork` (each worker, right after the fork) and :func:`post_worker_init` (each
  worker, once it imported the app): nothing to do in a worker that inherited the
  arbiter's handler (the usual case); the handler is added back if something removed it
  (an app that configures logging when it is imported).
- :func:`on_exit` (arbiter, after its last worker exited): stops the pipeline, which
  delivers what is buffered first.

The pipeline starts once per arbiter: a HUP reload re-runs ``configure()``, which then only
compares. A new ``level`` takes effect (in the arbiter at once, in the new workers the
reload starts); new handlers, an address or other options are reported by a WARNING record
and take effect at the next start of gunicorn, not at a reload. Workers recycled by
``max_requests`` or added by TTIN are forks of the configured arbiter, hence configured.

A config file that defines hooks of its own calls these from them: see
``docs/integrations/gunicorn.md``.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dill
from gunicorn.glogging import Logger as _GunicornLogger  # type: ignore[import-untyped]

from .._errors import ConfigError
from .._pipeline import Handlers, Pipeline, check_level, check_options, ship_handlers, start
from ..handlers import ENV_ADDRESS, QueueHandler

__all__ = [
    "configure",
    "logger_class",
    "on_exit",
    "on_starting",
    "post_fork",
    "post_worker_init",
]

_log = logging.getLogger("mplog.integrations.gunicorn")

_FIX = (
    "add `configure(handlers)` to the gunicorn config file, after "
    "`from mplog.integrations.gunicorn import *`"
)


@dataclass
class _Config:
    """What ``configure()`` was given, validated."""

    level: int
    address: str | None
    options: dict[str, Any]
    payload: bytes  # the handlers as shipped to the listener: compared on reload


@dataclass
class _State:
    config: _Config | None = None
    pipeline: Pipeline | None = None
    owner: int = 0  # the pid that started the pipeline: the arbiter


_state = _State()


def configure(
    handlers: Handlers,
    *,
    level: int | str = logging.NOTSET,
    address: str | os.PathLike[str] | None = None,
    **options: Any,
) -> None:
    """Say where the pipeline sends records: the arguments of :func:`mplog.start`.

    Call it in ``gunicorn.conf.py``. It validates the arguments at once and starts nothing:
    the pipeline starts in the arbiter when gunicorn creates its logger (or at
    ``on_starting``). Called again by a HUP reload while the pipeline runs, it applies a
    new *level* and reports other changes (they need a restart) by a WARNING record.

    Raises:
        ConfigError: a bad argument (before a reload's pipeline exists: a reload logs the
            error and keeps the running configuration instead, as gunicorn does for its
            own logging settings).
    """
    try:
        if "install" in options:
            raise ConfigError(
                "configure() takes no install=: the hooks install the pipeline in every "
                "gunicorn process"
            )
        check_options(options, "configure()")
        if address is not None and not isinstance(address, (str, os.PathLike)):
            raise ConfigError(f"address must be a path or None, got {address!r}")
        cfg = _Config(
            level=check_level(level),
            address=os.fspath(address) if address is not None else None,
            options=dict(options),
            payload=_ship(handlers),
        )
    except ConfigError as exc:
        if not _running():
            raise
        _log.error("mplog: configure() on reload failed, the running pipeline is kept: %s", exc)
        return
    if not _running():
        _state.config = cfg
        return
    _reconfigure(cfg)


#: The name under which gunicorn executes a config file given by path. The listener process
#: cannot import it, so what the file defines is shipped by value (see :func:`_ship`).
_CONFIG_MODULE = "__config__"


class _ServerConfigError(ConfigError, RuntimeError):
    """A :class:`ConfigError` raised while gunicorn starts the arbiter: gunicorn prints a
    ``RuntimeError`` as one ``Error: ...`` line and exits 1, rather than a traceback."""


def _ship(handlers: Handlers) -> bytes:
    """Validate *handlers* and pickle them for the listener process.

    Functions and classes defined in the gunicorn config file (``def handlers(): ...``,
    a lambda, a Handler subclass) go by value; everything importable goes by reference.
    """
    # Hidden for a moment: the listener cannot import the config file by its name.
    config_module = sys.modules.pop(_CONFIG_MODULE, None)
    try:
        return ship_handlers(handlers)
    finally:
        if config_module is not None:
            sys.modules[_CONFIG_MODULE] = config_module


class _Build:
    """The handlers factory :func:`mplog.start` gets: unpickles what :func:`_ship` made,
    in the listener process, and calls it if it is a factory."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __call__(self) -> Sequence[logging.Handler]:
        handlers = dill.loads(self.payload)
        if callable(handlers) and not isinstance(handlers, logging.Handler):
            handlers = handlers()
        return handlers  # type: ignore[no-any-return]


def _running() -> bool:
    return _state.pipeline is not None and _state.owner == os.getpid()


def _reconfigure(new: _Config) -> None:
    """A reload: apply the level, report what needs a restart."""
    old = _state.config
    assert old is not None and _state.pipeline is not None
    changed = []
    if new.payload != old.payload:
        changed.append("handlers")
    if new.address is not None and new.address != _state.pipeline.address:
        changed.append("address")
    if new.options != old.options:
        changed.append("options")
    if new.level != old.level:
        logging.getLogger().setLevel(new.level)
    if changed:
        _log.warning(
            "mplog: the gunicorn config changed the pipeline's %s; a reload (HUP) keeps the "
            "running pipeline: restart gunicorn to apply the change",
            " and ".join(changed),
        )
    # Keep what runs, except the level, which new workers take from here.
    old.level = new.level


def _ensure_started(server_cfg: Any = None) -> Pipeline:
    """Start the pipeline in this process (the arbiter) unless it runs already.

    Workers that gunicorn's ``user``/``group`` settings make another user's get the
    intake for that user (``worker_user=``), unless ``configure()`` said otherwise."""
    if _state.pipeline is not None and _state.owner == os.getpid():
        return _state.pipeline
    cfg = _state.config
    if cfg is None:
        raise _ServerConfigError(
            f"mplog's gunicorn hooks are in use but configure() was not called: {_FIX}"
        )
    options = dict(cfg.options)
    uid, gid = getattr(server_cfg, "uid", None), getattr(server_cfg, "gid", None)
    mine = (os.geteuid(), os.getegid())
    others = isinstance(uid, int) and isinstance(gid, int) and (uid, gid) != mine
    if others and "worker_user" not in options:
        options.update(worker_user=uid, worker_group=gid)
    try:
        pipeline = start(_Build(cfg.payload), level=cfg.level, address=cfg.address, **options)
    except ConfigError as exc:
        raise _ServerConfigError(f"mplog could not start its pipeline: {exc}") from exc
    _state.pipeline = pipeline
    _state.owner = os.getpid()
    return pipeline


_GUNICORN_LOGGERS = ("gunicorn.error", "gunicorn.access")


def _reinstall(pipeline: Pipeline, level: int | None) -> None:
    """Make sure the root logger logs into *pipeline*, and set its *level* (unless None).

    A root logger that lost the pipeline's handler (``logconfig_dict``, an app that
    configures logging when it is imported) gets one again, next to the handlers it has
    now: they stay, nothing is taken away. Changes nothing when the handler is there.
    gunicorn's two loggers are enabled again if a ``dictConfig()`` disabled them.
    """
    root = logging.getLogger()
    if level is not None:
        root.setLevel(level)
    # dictConfig() disables every logger that exists already unless told otherwise
    # (disable_existing_loggers defaults to True), gunicorn's own among them.
    for name in _GUNICORN_LOGGERS:
        logging.getLogger(name).disabled = False
    os.environ[ENV_ADDRESS] = pipeline.address
    if not any(isinstance(h, QueueHandler) and h.address == pipeline.address
               for h in root.handlers):
        root.addHandler(QueueHandler(pipeline.address))


class Logger(_GunicornLogger):  # type: ignore[misc]
    """gunicorn's logger, sending ``gunicorn.error`` and ``gunicorn.access`` to the root
    logger (hence the pipeline). Use it as ``logger_class`` (the star import does).

    - Both loggers propagate; the console handlers gunicorn gives them for ``errorlog="-"``
      (the default) and ``accesslog="-"`` are removed: the pipeline replaces the console.
      A file (``errorlog``/``accesslog`` set to a path) or ``syslog`` that the config asks
      for stays, in addition to the pipeline.
    - Access records are written for every request, whether or not ``accesslog`` is set.
    - Creating it (gunicorn does in the arbiter, before logging anything) starts the
      pipeline; after every (re)load of gunicorn's logging setup (``logconfig_dict``
      replaces the root logger's handlers), the pipeline's handler is added back.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for h in list(log.handlers):
                if getattr(h, "_gunicorn", False) and type(h) is logging.StreamHandler:
                    log.removeHandler(h)
            log.propagate = True
        pipeline = _ensure_started(cfg)
        assert _state.config is not None
        _reinstall(pipeline, _state.config.level)

    @property
    def access_log_enabled(self) -> bool:
        return True

    def _compute_access_log_enabled(self) -> bool:
        return True

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """One ``gunicorn.access`` record per request, in ``access_log_format``."""
        atoms = self.atoms_wrapper_class(self.atoms(resp, req, environ, request_time))
        try:
            self.access_log.info(self.cfg.access_log_format, atoms)
        except Exception:
            self.error(traceback.format_exc())


#: gunicorn reads the ``logger_class`` setting from the config file's globals.
logger_class = Logger


def on_starting(server: Any) -> None:
    """gunicorn hook (arbiter, before the listening sockets and workers exist): start the
    pipeline unless :class:`Logger` did, and make sure the root logger logs into it (an
    app imported by ``--preload`` may have replaced its handlers).

    Raises:
        ConfigError: ``configure()`` was not called.
    """
    pipeline = _ensure_started(getattr(server, "cfg", None))
    assert _state.config is not None
    _reinstall(pipeline, _state.config.level)


def _in_worker(hook: str, *, set_level: bool) -> None:
    cfg = _state.config
    if cfg is None:
        raise ConfigError(f"mplog's {hook} hook ran but configure() was not called: {_FIX}")
    if _state.pipeline is None:
        raise ConfigError(
            f"mplog's {hook} hook ran but the pipeline was not started in the gunicorn "
            "arbiter: call mplog.integrations.gunicorn.on_starting(server) from your "
            "on_starting hook (or use logger_class = mplog.integrations.gunicorn.Logger)"
        )
    _reinstall(_state.pipeline, cfg.level if set_level else None)


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn hook (each worker, right after the fork): log into the pipeline (a fork of
    the arbiter does already; this changes nothing then).

    Raises:
        ConfigError: the pipeline was not started in the arbiter (its ``on_starting`` did
            not call this module's, and ``logger_class`` is not :class:`Logger`).
    """
    _in_worker("post_fork", set_level=True)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook (each worker, after it loaded the app): log into the pipeline again
    if the app, configuring logging as it was imported, replaced the root logger's
    handlers. The app's handlers and root level stay; the pipeline's handler is added."""
    _in_worker("post_worker_init", set_level=False)


def on_exit(server: Any) -> None:
    """gunicorn hook (arbiter, after the last worker exited): stop the pipeline, which
    delivers what it holds first. Does nothing where no pipeline was started."""
    pipeline = _state.pipeline
    if pipeline is None or _state.owner != os.getpid():
        return
    pipeline.stop()
    _state.pipeline = None
    # _reinstall() may have added a handler that stop() does not know; it points at the
    # listener that just ended.
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, QueueHandler) and h.address == pipeline.address:
            root.removeHandler(h)
            h.close()
