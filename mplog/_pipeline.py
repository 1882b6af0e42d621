"""IO: ``start()``, the :class:`Pipeline` handle, supervision, and ``worker_init()``.

Rules this module keeps:

- ``start()`` validates everything it can before starting anything, and raises
  :class:`ConfigError` naming the problem; it returns once the listener accepts records.
- The listener is a ``multiprocess`` child started with *spawn* (it inherits no locks or
  threads, and handler factories may be closures). One supervisor thread in this process
  restarts it if it dies (same address; ``restarts`` counted).
- ``stop()`` is idempotent and leaves no process, thread, socket file or temp dir behind.
  Only the process that called ``start()`` can stop the pipeline; a forked child that
  inherited the object (and, on 3.13+, runs atexit handlers) leaves it alone.
"""

from __future__ import annotations

import importlib
import io
import itertools
import logging
import os
import pathlib
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Any, cast

from . import _poll, _sigpipe
from ._dictconfig import DictConfigHandlers, check_config
from ._errors import ConfigError, MplogError
from ._intake import control_request
from ._listener import ListenerConfig, StatsBoard
from ._listener import main as listener_main
from ._metrics import check_metrics_port
from ._options import check_bool, check_intake_address, check_level, check_seconds
from ._ship import reduce_handler, release
from ._stats import Stats
from ._stderr import say
from .handlers import ENV_ADDRESS, QueueHandler, resolve_address

__all__ = ["Pipeline", "check_level", "start", "worker_init"]

#: The environment variable through which child processes learn ``start(level=...)``.
ENV_LEVEL = "MPLOG_LEVEL"
#: The listener's process name; its spawn skips the re-import of the main module.
LISTENER_NAME = "mplog-listener"
MAIN_GUARD_HINT = (
    "mplog.start() was called while a child process imported the main module; put the "
    "code that starts the pipeline under `if __name__ == '__main__':`"
)

#: Longest path a Unix socket address may have on Linux (sun_path is 108 bytes with NUL).
MAX_UNIX_PATH = 107
_START_METHODS = ("spawn", "forkserver", "fork")
#: Beyond stop()'s timeout, what ending the listener and cleaning up may take (the
#: contract: stop(timeout) returns within timeout + 2 s).
STOP_MARGIN = 1.5
#: How long stats() waits for the listener's answer before it reads the shared board.
STATS_TIMEOUT = 2.0
#: How long stats() waits for a listener being restarted to answer, before it describes the
#: pipeline by the dead listeners' counters (``stale``, ``listener_down``).
STATS_RESTART_WAIT = 10.0
#: How long stop() waits for multiprocess's resource tracker to end.
TRACKER_WAIT = 0.5
#: Stats keys that are a state now, not a count since the start; every other int key
#: is a counter summed over the listener's incarnations.
GAUGES = frozenset({
    "buffered", "buffered_bytes", "connected", "connections", "spooled", "spool_bytes",
    "pid", "listener_rss", "listener_cpu", "metrics_port", "restarts",
})
_DEFAULT_OPTIONS: dict[str, Any] = {
    "start_method": "spawn",
    "start_timeout": 60.0,
    "metrics_port": None,
    "worker_user": None,
    "worker_group": None,
}

#: Pipelines of this process that are running (started and not yet stopped).
_live: set[Pipeline] = set()
_start_order = itertools.count()

Handlers = Sequence[logging.Handler] | Callable[[], Sequence[logging.Handler]]


def _private_dir() -> str:
    """A new 0700 directory for the intake socket: in the temp dir (``TMPDIR``), or in
    ``/tmp`` when that is too deep for a Unix socket path (108 bytes)."""
    tmpdir = tempfile.mkdtemp(prefix="mplog-")
    if len(os.fsencode(os.path.join(tmpdir, "intake.sock"))) <= MAX_UNIX_PATH:
        return tmpdir
    os.rmdir(tmpdir)
    try:
        return tempfile.mkdtemp(prefix="mplog-", dir="/tmp")
    except OSError as exc:
        raise ConfigError(
            f"the temp dir {tempfile.gettempdir()!r} is too long a path for the intake's "
            f"Unix socket (max {MAX_UNIX_PATH} bytes) and /tmp is not usable ({exc}); "
            "pass address= or set TMPDIR to a shorter directory"
        ) from None


def _check_address(address: str) -> None:
    if len(os.fsencode(address)) > MAX_UNIX_PATH:
        raise ConfigError(
            f"address {address!r} is too long for a Unix socket (max {MAX_UNIX_PATH} bytes)"
        )
    parent = os.path.dirname(os.path.abspath(address))
    if not os.path.isdir(parent):
        raise ConfigError(f"cannot bind address {address!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot bind address {address!r}: directory {parent!r} is not writable")
    try:
        st = os.lstat(address)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"cannot bind address {address!r}: a file that is not a socket is there")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(address)
        except OSError:
            return  # a stale socket file; the listener replaces it
    raise ConfigError(f"cannot bind address {address!r}: a running listener already uses it")


_PICKLER: Any = None


def _pickler() -> Any:
    """dill's pickler, except that a module this process imported by name is pickled by
    reference (the listener imports it), not by value.

    dill pickles by value a module it does not consider installed (the user's own
    package, an editable install: mplog itself in a checkout), dictionary and all, which
    fails on the first unpicklable global in it. ``spawn`` gives the listener this
    process's ``sys.path`` and working directory, so importing by name works there.
    Functions defined in ``__main__`` (and lambdas, closures) still go by value.
    """
    global _PICKLER
    if _PICKLER is None:
        import dill

        by_value = dill.Pickler.dispatch[types.ModuleType]

        def save_module(pickler: Any, obj: types.ModuleType) -> None:
            name = obj.__name__
            if name != "__main__" and not name.startswith("__") and sys.modules.get(name) is obj:
                pickler.save_reduce(importlib.import_module, (name,), obj=obj)
            else:
                by_value(pickler, obj)

        class Pickler(dill.Pickler):  # type: ignore[misc]
            dispatch = dill.Pickler.dispatch.copy()

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                #: The handler instances reduce_handler took apart, to release after.
                self.shipped: list[logging.Handler] = []

            def reducer_override(self, obj: Any) -> Any:
                # Handler instances travel without the parent's lock, file, stream or
                # socket: see mplog._ship.
                if isinstance(obj, logging.Handler):
                    reduced = reduce_handler(obj)
                    if reduced is not NotImplemented:
                        self.shipped.append(obj)
                    return reduced
                return NotImplemented

        Pickler.dispatch[types.ModuleType] = save_module

        # A lock arrives as a new, free lock. dill rebuilds an RLock "as it was": a free
        # one (count 0, owner 0) comes back *held* (_acquire_restore((0, 0))), so every
        # handler shipped in a list (its Handler.lock) blocked the listener on its first
        # record, for ever. No thread of the listener can own a lock of this process.
        def save_rlock(pickler: Any, obj: object) -> None:
            pickler.save_reduce(threading.RLock, (), obj=obj)

        def save_lock(pickler: Any, obj: object) -> None:
            pickler.save_reduce(threading.Lock, (), obj=obj)

        Pickler.dispatch[type(threading.RLock())] = save_rlock
        Pickler.dispatch[type(threading.Lock())] = save_lock
        _PICKLER = Pickler
    return _PICKLER


def ship_handlers(handlers: Handlers) -> bytes:
    """Check *handlers* (a list of handlers, or a factory) and pickle them for the
    listener process; :class:`ConfigError` saying what is wrong otherwise."""
    if callable(handlers) and not isinstance(handlers, logging.Handler):
        what = "the handlers factory"
    else:
        if isinstance(handlers, logging.Handler):
            handlers = [handlers]
        if not isinstance(handlers, (list, tuple)):
            raise ConfigError(
                f"handlers must be a list of logging.Handler or a callable returning one, "
                f"got {type(handlers).__name__}"
            )
        for h in handlers:
            if not isinstance(h, logging.Handler):
                raise ConfigError(f"handlers must be logging.Handler instances, got {h!r}")
        what = "the handlers"
    buf = io.BytesIO()
    pickler = _pickler()(buf, recurse=True)
    try:
        pickler.dump(handlers)
    except Exception as exc:
        raise ConfigError(
            f"{what} cannot be shipped to the listener process ({type(exc).__name__}: {exc}); "
            "pass a callable that builds them there instead"
        ) from exc
    for h in pickler.shipped:  # this process's copies are done with: see _ship.release
        release(h)
    return buf.getvalue()


def _importing_main() -> bool:
    """True while this process is a ``multiprocessing``/``multiprocess`` child importing
    its parent's main module (the flag their own "bootstrapping phase" check reads)."""
    for name in ("multiprocessing.process", "multiprocess.process"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod.current_process(), "_inheriting", False):
            return True
    return False


_prep_wrapped = False


def _listener_skips_main_import() -> None:
    """Make ``multiprocess`` start the listener without re-importing the main module.

    A spawned child normally runs the parent's main module again (as ``__mp_main__``)
    so that functions pickled by reference resolve. The listener needs nothing from it:
    its target is in mplog, and the handlers arrive by value (dill). Skipping it means a
    script without ``if __name__ == '__main__':`` does not start a second pipeline in
    the listener, a main module read from stdin (``python - < script.py``) works, and the
    script's top-level side effects do not run twice. Only the process named
    :data:`LISTENER_NAME` is affected; called by :func:`start`, never at import.
    """
    global _prep_wrapped
    if _prep_wrapped:
        return
    from multiprocess import spawn

    original = spawn.get_preparation_data

    def get_preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        if name == LISTENER_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = get_preparation_data
    _prep_wrapped = True


def _stop_live_at_exit() -> None:
    """Stop every pipeline still running, the last started first.

    ``import mplog`` registers it (``mplog.__init__``), not ``start()``: exit handlers run
    last registered first, so every handler registered after ``import mplog`` (a library
    imported later, the program's own, one registered before ``start()``) runs while its
    records can still be delivered."""
    for pipeline in sorted(_live, key=lambda p: p._started, reverse=True):
        pipeline.stop()


def _untrack(proc: Any) -> None:
    from multiprocess import process as mp_process

    children = getattr(mp_process, "_children", None)
    if isinstance(children, set):
        children.discard(proc)


def _forget_inherited_listeners() -> None:
    """In a forked child: forget the listener processes its parent started, and give its
    pipelines fresh locks.

    A listener is taken out of ``multiprocess``'s set of children right after it starts
    (:func:`_untrack`); a fork in that moment (a gunicorn worker respawned while the
    supervisor restarts the listener) copies the set with it in, and ``multiprocess``'s
    exit handler would try to join it when the child exits (an AssertionError on stderr).
    """
    from multiprocess import process as mp_process

    children = getattr(mp_process, "_children", None)
    if isinstance(children, set):
        pid = os.getpid()
        for p in list(children):
            if getattr(p, "_parent_pid", pid) != pid:
                children.discard(p)
    # The supervisor thread holds these while it restarts a listener and adds up the dead
    # one's counters; a fork in that moment copies them held, and the child's stats() or
    # flush() on the inherited Pipeline would wait for ever on a thread it does not have.
    for pipeline in _live:
        pipeline._lock = threading.Lock()
        pipeline._stats_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_inherited_listeners)


#: Resource-tracker pids whose pipe other processes still held when we let go of it.
_unreaped: list[int] = []


def _reap_trackers() -> None:
    """Collect the resource trackers that have ended since :func:`_stop_resource_tracker`
    let go of them (they end once the last forked process holding their pipe exits)."""
    for pid in list(_unreaped):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _unreaped.remove(pid)


def _wait_pid(pid: int, timeout: float) -> bool:
    """Reap child *pid* if it ends within *timeout* seconds; True if it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    try:
        if pidfd >= 0:
            _poll.readable([pidfd], max(0.0, timeout))
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    return bool(done)


def _tracker_in_use() -> bool:
    """True if objects made with multiprocess still need its resource tracker: a live
    semaphore (a Lock, Queue or Pool not yet garbage collected), or shared memory."""
    if "multiprocess.shared_memory" in sys.modules:
        return True
    sync: Any = sys.modules.get("multiprocess.synchronize")
    util: Any = sys.modules.get("multiprocess.util")
    if sync is None or util is None:
        return False
    cleanup = sync.SemLock._cleanup
    registry = getattr(util, "_finalizer_registry", {})
    return any(getattr(f, "_callback", None) is cleanup for f in list(registry.values()))


def _stop_resource_tracker(timeout: float = TRACKER_WAIT) -> None:
    """End the helper process ``multiprocess`` starts for spawned children.

    It would otherwise outlive ``stop()`` until this process exits; ``multiprocess``
    starts a new one on demand, so other users of it are unaffected. The tracker ends
    when every copy of its pipe is closed; a process forked from this one after
    ``start()`` (a fork ``Pool``, a ``ProcessPoolExecutor``) holds a copy, so waiting
    for it could take forever (``multiprocess``'s own ``_stop()`` does). This closes our
    end, waits at most *timeout*, and otherwise leaves it to end with those processes
    (reaped by the next ``start()``/``stop()``, or by init when this process exits).
    """
    _reap_trackers()
    if _live:
        return  # another pipeline of this process still uses it
    if _tracker_in_use():
        # Something else in this process holds semaphores or shared memory made with
        # multiprocess, which the tracker must clean up (or unregister) later: it is theirs
        # too, and stopping it now would unlink them under their feet. It ends when this
        # process ends, as the stdlib's own tracker does.
        return
    from multiprocess import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    pid = getattr(tracker, "_pid", None)
    if tracker is None or pid is None:
        # Not started by this process: in a child spawned by multiprocess the tracker's fd
        # is inherited (its pid unknown here) and belongs to the process that started us.
        return
    with tracker._lock:
        fd = tracker._fd
        if fd is None:
            return
        tracker._fd = None
        tracker._pid = None
        os.close(fd)  # EOF for the tracker, once nobody else holds the pipe
    if not _wait_pid(pid, timeout):
        _unreaped.append(pid)


def _stop_forkserver(timeout: float) -> None:
    """End the fork server ``multiprocess`` started for ``start_method="forkserver"``.

    Like :func:`_stop_resource_tracker`: close our end of its "alive" pipe and wait at
    most *timeout*; processes it forked keep a copy of that pipe, so it may end later
    (reaped by the next ``start()``/``stop()``). ``multiprocess`` starts a new one on
    demand.
    """
    if _live:
        return
    from multiprocess import forkserver

    server: Any = getattr(forkserver, "_forkserver", None)
    if server is None:
        return
    with server._lock:
        pid, fd = server._forkserver_pid, server._forkserver_alive_fd
        if pid is None or fd is None:
            return
        address = server._forkserver_address
        server._forkserver_pid = server._forkserver_alive_fd = server._forkserver_address = None
        os.close(fd)
        if address and not address.startswith("\0"):
            pathlib.Path(address).unlink(missing_ok=True)
    if not _wait_pid(pid, timeout):
        _unreaped.append(pid)


def _add_counters(base: dict[str, Any], snap: dict[str, Any]) -> dict[str, Any]:
    """*base* plus the counters of *snap*; *snap*'s gauges replace *base*'s."""
    out = dict(base)
    for k, v in snap.items():
        if k in GAUGES or isinstance(v, bool) or not isinstance(v, int):
            out[k] = v
        else:
            out[k] = out.get(k, 0) + v
    return out


def _held(snap: dict[str, Any]) -> int:
    """Records a listener held when it took *snap* that die with it: those read but not
    yet through its handlers, and those in socket handlers' memory buffers (not the
    spooled ones: the next listener sends them)."""
    unhandled = int(snap.get("received", 0)) - int(snap.get("handled", 0))
    in_memory = int(snap.get("buffered", 0)) - int(snap.get("spooled", 0))
    return max(0, unhandled) + max(0, in_memory)


class Pipeline:
    """A running pipeline: one supervised listener process. Use :func:`start`.

    A pipeline still running when the interpreter exits is stopped by the exit hook
    ``import mplog`` registered, after the exit handlers registered since (their records
    are delivered)."""

    def __init__(
        self,
        cfg: ListenerConfig,
        *,
        tmpdir: str | None,
        install: bool,
        level: int,
        options: dict[str, Any],
    ) -> None:
        import multiprocess

        self._cfg = cfg
        self._tmpdir = tmpdir
        self._options = options
        self._ctx = multiprocess.get_context(options["start_method"])
        if cfg.board is None:
            cfg.board = StatsBoard(self._ctx)
        self._owner = os.getpid()
        self._lock = threading.Lock()
        self._proc: Any = None
        self._stopping = False
        self._stopped = False
        self._final_stats: dict[str, Any] | None = None
        self.restarts = 0
        #: Why the supervisor's last attempt to restart the listener failed (None: it did
        #: not, or the listener is back): stats() then answers at once, from _base.
        self._restart_failing: str | None = None
        #: Counters of the listeners that died (summed), and how many were folded in.
        self._stats_lock = threading.Lock()
        self._base: dict[str, Any] = {}
        self._absorbed = 0
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._supervisor: threading.Thread | None = None
        self._install = install
        self._level = level
        self._saved_root: tuple[list[logging.Handler], int] | None = None
        self._saved_env: str | None = None
        self._saved_level_env: str | None = None
        self._handler: QueueHandler | None = None
        self._started = next(_start_order)

    @property
    def address(self) -> str:
        """The intake address: hand it to :func:`worker_init` in other processes."""
        return self._cfg.address

    @property
    def pid(self) -> int:
        """The listener process's pid (it changes when the listener is restarted)."""
        return int(self._proc.pid)

    # -- lifecycle ----------------------------------------------------------------------

    def _spawn(self, interrupt: Any = None) -> bool:
        """Start a listener and wait until it is ready; ConfigError if it fails to. False:
        *interrupt* (the supervisor's wake pipe: stop() was called) became readable
        first, and the listener being started was killed."""
        from multiprocess.connection import wait

        _listener_skips_main_import()
        r, w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=listener_main, args=(self._cfg, w), name=LISTENER_NAME, daemon=False
        )
        proc.start()
        # Not one of multiprocess's children for its exit handler to join: that handler is
        # registered when multiprocess is first imported (after mplog's own, see
        # _stop_live_at_exit), so it runs first, and would wait there for a listener that
        # ends only when stop() tells it to. This pipeline joins it itself.
        _untrack(proc)
        w.close()
        try:
            watch = [r, proc.sentinel] if interrupt is None else [r, proc.sentinel, interrupt]
            ready = wait(watch, timeout=self._options["start_timeout"])
            if r not in ready and interrupt is not None and interrupt in ready:
                kind, value = "interrupted", None
            elif r in ready:
                try:
                    kind, value = r.recv()
                except EOFError:
                    kind, value = "error", None
            elif ready:
                kind, value = "error", None
            else:
                kind, value = "timeout", None
        except BaseException:
            # Ctrl-C (KeyboardInterrupt) while the listener gets ready: leave none behind.
            proc.kill()
            proc.join()
            raise
        finally:
            r.close()
        if kind == "ready":
            self._proc = proc
            self._cfg.incarnation += 1
            return True
        if kind == "interrupted":
            proc.kill()
            proc.join()
            return False
        proc.join(0 if kind == "timeout" else 5)  # one that said why exits by itself
        if proc.is_alive():
            proc.kill()
            proc.join()
        if kind == "timeout":
            raise ConfigError(
                f"the listener did not become ready in {self._options['start_timeout']} s"
            )
        if value is None:
            value = f"the listener process exited with code {proc.exitcode} before it was ready"
        raise ConfigError(value)

    def _start(self) -> None:
        self._spawn()
        self._supervisor = threading.Thread(
            target=self._supervise, name="mplog-supervisor", daemon=True
        )
        self._supervisor.start()
        _live.add(self)
        if self._install:
            root = logging.getLogger()
            self._saved_root = (list(root.handlers), root.level)
            self._handler = QueueHandler(self.address)
            for h in list(root.handlers):
                root.removeHandler(h)
            root.addHandler(self._handler)
            root.setLevel(self._level)
            self._saved_env = os.environ.get(ENV_ADDRESS)
            self._saved_level_env = os.environ.get(ENV_LEVEL)
            os.environ[ENV_ADDRESS] = self.address
            os.environ[ENV_LEVEL] = str(self._level)

    def _supervise(self) -> None:
        from multiprocess.connection import wait

        failures = 0
        while True:
            proc = self._proc
            wait([proc.sentinel, self._wake_r])
            with self._lock:
                if self._stopping:
                    return
                # The sentinel fires when the dying process closes its files, which can be
                # a moment before it becomes a zombie; join(0) would then miss it and leave
                # a zombie behind until multiprocess's next start(). It is dead: wait for it.
                proc.join(5.0)
                if self._cfg.incarnation == self._absorbed + 1:
                    self._absorb_dead_listener(proc.pid, proc.exitcode)
            # Not under the lock: a restart can take as long as start_timeout, and stop()
            # takes the lock first; it wakes this wait instead, and the listener being
            # started is killed (stop() keeps to its timeout).
            try:
                if not self._spawn(interrupt=self._wake_r):
                    return
            except Exception as exc:
                # ConfigError (the listener said why), or this process could not start one
                # (OSError: out of file descriptors or memory): tried again later. An
                # exception that ended this thread ended the restarts for good.
                why = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
                failures += 1
                self._restart_failing = why
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                say(f"mplog: restarting the listener failed ({why}); next try in {delay} s")
            else:
                failures = 0
                self._restart_failing = None
                self.restarts += 1
                continue
            if wait([self._wake_r], timeout=delay):
                return

    # -- counters across listener lives --------------------------------------------------

    def _ask_stats(self, timeout: float) -> dict[str, Any]:
        """The running listener's own counters."""
        reply = control_request(self.address, {"op": "stats"}, timeout=timeout)
        return dict(reply["stats"])

    def _board_snapshot(self, pid: int) -> dict[str, int] | None:
        """The latest counters listener *pid* published (None: none of its own yet)."""
        snap = self._cfg.board.read() if self._cfg.board is not None else None
        return snap if snap is not None and snap["pid"] == pid else None

    def _absorb_dead_listener(self, pid: int, exitcode: int | None) -> None:
        """Fold the dead listener's last counters into the pipeline's totals.

        What it held in memory buffers is lost with it: counted in ``dropped``. Records
        in a spool are not: the next listener sends them. The snapshot is at most one
        ``WATCHDOG_TICK`` (20 ms) old: what the listener received in that last moment is
        missing from ``received`` (and, if it was still in a buffer, from ``dropped``).
        """
        last = self._board_snapshot(pid)
        if self._cfg.board is not None:
            self._cfg.board.clear()
        with self._stats_lock:
            self._absorbed += 1
            if last is None:
                return
            self._base = _add_counters(self._base, last)
            held = _held(last)
            if held:
                self._base["dropped"] = self._base.get("dropped", 0) + held
                lost = self._base.get("lost_in_dead_listener", 0) + held
                self._base["lost_in_dead_listener"] = lost
                # Its counters are up to WATCHDOG_TICK old: some of these may have been
                # delivered in that last moment. Counted as dropped (an upper bound), and
                # said so, rather than a loss nobody counts.
                say(
                    f"mplog: the listener (pid {pid}) ended with exit code {exitcode}; up to "
                    f"{held} records it held in memory may not have been delivered (counted "
                    "in dropped)"
                )

    def _merged(self, live: dict[str, Any] | None) -> dict[str, Any]:
        with self._stats_lock:
            out = _add_counters(self._base, live or {})
            if live is None:
                for k in GAUGES:
                    out.setdefault(k, 0)
            out.setdefault("lost_in_dead_listener", 0)
            out["restarts"] = self.restarts
        return out

    # -- public -------------------------------------------------------------------------

    def stats(self) -> Stats:
        """Counters of the pipeline (see the contract's Stats table), plus ``restarts``.

        They are the pipeline's, for its whole life: the counters of every listener the
        supervisor restarted are in them, and after :meth:`stop` they are the final ones.
        A listener that is alive but does not answer (a handler is stuck) is described by
        the counters it last published, with ``stale=True``; while the supervisor cannot
        start a new one (its handlers fail to build), by those of the listeners that
        died, at once, with ``stale=True`` and ``listener_down`` saying why; while a
        restart is under way, the same after up to 10 s (it raised ``MplogError`` then).
        """
        if self._final_stats is not None:
            return cast(Stats, dict(self._final_stats, restarts=self.restarts))
        deadline = time.monotonic() + STATS_RESTART_WAIT
        while True:
            try:
                live = self._ask_stats(timeout=STATS_TIMEOUT)
                break
            except MplogError:
                down = self._restart_failing
                if down is not None:
                    return cast(Stats, dict(self._merged(None), stale=True, listener_down=down))
                proc = self._proc
                if proc is not None and proc.is_alive():
                    # Alive but not answering (a handler is stuck): what it published.
                    snap = self._board_snapshot(proc.pid)
                    if snap is not None:
                        return cast(Stats, dict(self._merged(snap), stale=True))
                if time.monotonic() >= deadline:
                    if proc is None or proc.is_alive():
                        raise  # alive, and nothing published: nothing to describe it by
                    why = (f"being restarted (the listener, pid {proc.pid}, exited with code "
                           f"{proc.exitcode}; the new one is not ready yet)")
                    return cast(Stats, dict(self._merged(None), stale=True, listener_down=why))
                time.sleep(0.05)  # the listener is being restarted; ask again
        return cast(Stats, self._merged(live))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record logged before this call was handled and every socket
        handler's buffer is empty. True if so, False if *timeout* passed first.

        Returns within *timeout* + 2 s (the margin is for the listener's reply), also
        when a handler is stuck: the records this process wrote are waited for out of
        the same *timeout*.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ConfigError(f"flush() timeout must be a number of seconds >= 0, got {timeout!r}")
        if self._stopped:
            return True
        deadline = time.monotonic() + timeout
        # This process's own records first (the root handler start() installed): acknowledged
        # means the listener has them, so the flush request below covers them. It waited
        # its own 5 s here, whatever *timeout* said.
        if self._handler is not None and not self._handler.queue.drain(timeout):
            return False
        while True:
            left = max(0.0, deadline - time.monotonic())
            try:
                reply = control_request(
                    self.address, {"op": "flush", "timeout": left}, timeout=left + 2.0
                )
            except MplogError:
                left = deadline - time.monotonic()
                if self._stopped or left <= 0:
                    return False  # (a request that timed out ends here: timeout + 2 s)
                # Refused: being restarted (or a restart failing), so ask the next
                # listener; it returned False at once, where waiting made it True. (Not
                # decided by the old process's state: just after a SIGKILL it may still
                # look alive. A listener that does not answer used up the time above.)
                time.sleep(min(0.05, left))
                continue
            return bool(reply.get("ok"))

    def stop(self, timeout: float = 5.0) -> None:
        """Drain, flush and end the listener; idempotent. Leaves nothing behind.

        Returns within *timeout* + 2 s, whatever else is alive (pools forked after
        :func:`start` included). Records that could not be delivered in that time are
        counted in ``dropped`` and reported in one line on stderr.
        """
        if os.getpid() != self._owner:
            return
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise ConfigError(f"stop() timeout must be a number of seconds >= 0, got {timeout!r}")
        deadline = time.monotonic() + timeout + STOP_MARGIN

        def left(cap: float = float("inf")) -> float:
            return max(0.0, min(cap, deadline - time.monotonic()))

        with self._lock:
            if self._stopped:
                return
            self._stopping = True
        with _sigpipe.no_sigpipe():  # a listener that died closed the other end
            self._wake_w.send_bytes(b"stop")
        if self._supervisor is not None:
            self._supervisor.join(left())
        self._uninstall()
        proc = self._proc
        was_alive = proc is not None and proc.is_alive()
        before = self._board_snapshot(proc.pid) if proc is not None else None
        final: dict[str, Any] | None = None
        try:
            reply = control_request(
                self.address, {"op": "stop", "timeout": timeout}, timeout=left(timeout + 0.75)
            )
            final = reply.get("stats")
        except MplogError as exc:
            why = str(exc)
        if proc is not None:
            proc.join(left(0.5 if final is None else timeout + 1.0))
            if proc.is_alive():
                proc.kill()  # SIGTERM would wait for the same stuck handler
                proc.join(max(0.3, left()))  # reaped, not left as a zombie
        if final is not None:
            self._final_stats = self._merged(final)
            newly = int(final.get("dropped", 0)) - int((before or {}).get("dropped", 0))
            if newly > 0:
                say(
                    f"mplog: {newly} records could not be delivered before the pipeline "
                    f"stopped (counted in dropped)"
                )
        else:
            self._absorb_dead_listener_at_stop(proc, before, why, timeout, was_alive)
        path = pathlib.Path(self.address)
        if path.is_socket():
            path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._wake_r.close()
        self._wake_w.close()
        _live.discard(self)
        if self._options["start_method"] == "forkserver":
            _stop_forkserver(left(TRACKER_WAIT))
        _stop_resource_tracker(left(TRACKER_WAIT))
        with self._lock:
            self._stopped = True

    def _absorb_dead_listener_at_stop(
        self, proc: Any, last: dict[str, Any] | None, why: str, timeout: float,
        was_alive: bool,
    ) -> None:
        with self._stats_lock:
            base = _add_counters(self._base, last or {})
            held = _held(last) if last is not None else 0
            base["dropped"] = base.get("dropped", 0) + held
            base["lost_in_dead_listener"] = base.get("lost_in_dead_listener", 0) + held
            # Nothing is running any more; what was spooled stays on disk for the next run.
            for k in GAUGES:
                base[k] = 0
            if last is not None:
                base["spooled"] = base["buffered"] = int(last.get("spooled", 0))
                base["spool_bytes"] = int(last.get("spool_bytes", 0))
            base["restarts"] = self.restarts
            self._final_stats = base
        pid = getattr(proc, "pid", None)
        if was_alive:
            say(
                f"mplog: the listener (pid {pid}) did not stop within {timeout} s ({why}) and "
                f"was killed; {held} records it held were not delivered (counted in dropped)"
            )
        else:
            # It died before stop() (its death, and what it held, were said then); the
            # restart under way, or failing, was given up.
            say(
                f"mplog: stopped while the listener was down (pid {pid} had exited with code "
                f"{getattr(proc, 'exitcode', None)}; its restart was given up)"
                + (f"; {held} records it held were not delivered (counted in dropped)"
                   if held else "")
            )

    def _uninstall(self) -> None:
        if self._handler is None:
            return
        root = logging.getLogger()
        root.removeHandler(self._handler)
        self._handler.close()
        self._handler = None
        if self._saved_root is not None:
            handlers, level = self._saved_root
            for h in handlers:
                root.addHandler(h)
            root.setLevel(level)
        if os.environ.get(ENV_ADDRESS) == self.address:
            if self._saved_env is None:
                del os.environ[ENV_ADDRESS]
            else:
                os.environ[ENV_ADDRESS] = self._saved_env
            if self._saved_level_env is None:
                os.environ.pop(ENV_LEVEL, None)
            else:
                os.environ[ENV_LEVEL] = self._saved_level_env

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"pid={self._proc.pid}"
        return f"<mplog.Pipeline address={self.address!r} {state}>"


def check_options(options: dict[str, Any], who: str) -> dict[str, Any]:
    """*options* (the keyword arguments of :func:`start` beyond the named ones) checked
    and completed with the defaults; :class:`ConfigError` naming *who* otherwise."""
    unknown = sorted(set(options) - set(_DEFAULT_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for {who}; known: {', '.join(sorted(_DEFAULT_OPTIONS))}"
        )
    opts = dict(_DEFAULT_OPTIONS, **options)
    if opts["start_method"] not in _START_METHODS:
        raise ConfigError(
            f"start_method must be one of {', '.join(_START_METHODS)}; "
            f"got {opts['start_method']!r}"
        )
    opts["start_timeout"] = check_seconds(opts["start_timeout"], "start_timeout")
    opts["intake_owner"] = intake_owner(opts["worker_user"], opts["worker_group"])
    return opts


def intake_owner(user: Any, group: Any) -> tuple[int, int] | None:
    """The (uid, gid) to give the intake's socket and private directory for workers that
    run as *user* (and *group*: by default that user's primary group); None to leave them
    this process's. :class:`ConfigError` for an unknown name or when this process may not
    give them away (only root may)."""
    import grp
    import pwd

    if user is None:
        if group is not None:
            raise ConfigError("worker_group= needs worker_user=")
        return None
    for what, value in (("worker_user", user), ("worker_group", group)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise ConfigError(f"{what} must be a name or a number, got {value!r}")
    try:
        entry = pwd.getpwnam(user) if isinstance(user, str) else pwd.getpwuid(user)
    except (KeyError, OverflowError, ValueError):
        raise ConfigError(f"worker_user={user!r}: no such user") from None
    uid, gid = entry.pw_uid, entry.pw_gid
    if group is not None:
        try:
            found = grp.getgrnam(group) if isinstance(group, str) else grp.getgrgid(group)
            gid = found.gr_gid
        except (KeyError, OverflowError, ValueError):
            raise ConfigError(f"worker_group={group!r}: no such group") from None
    if (uid, gid) == (os.geteuid(), os.getegid()):
        return None  # they are this process's already
    if os.geteuid() != 0:
        raise ConfigError(
            f"worker_user={user!r}: only root can give the intake socket to another user "
            f"(this process runs as uid {os.geteuid()})"
        )
    return uid, gid


def start(
    handlers: Handlers | None = None,
    *,
    config: dict[str, Any] | None = None,
    level: int | str = logging.NOTSET,
    address: str | None = None,
    install: bool = True,
    **options: Any,
) -> Pipeline:
    """Start the listener process and return its :class:`Pipeline`.

    Args:
        handlers: the handlers the listener passes records to: a list (shipped to the
            listener process by pickling; the listener opens their files and sockets
            again, and the copies here close theirs, reopening them only if this
            process uses them) or a callable that builds them there (closures and
            lambdas work).
        config: instead of *handlers*, a ``logging.config.dictConfig`` dictionary applied
            in the listener process; the handlers it attaches to the root logger are the
            listener's handlers (``"class": "mplog.SocketHandler"`` works there).
        level: level set on the root logger of processes mplog configures.
        address: the intake socket path; None makes a fresh one in a private (0700) dir
            (in the temp dir, or in /tmp when that is too deep for a socket path).
        install: log this process's records into the pipeline and export
            ``MPLOG_ADDRESS`` for child processes.
        start_method: ``"spawn"`` (default), ``"forkserver"`` or ``"fork"``.
        start_timeout: seconds to wait for the listener to become ready (default 60).
        metrics_port: serve ``GET /metrics`` (Prometheus) on 127.0.0.1 at this port from
            the listener (0: a free port, see ``stats()["metrics_port"]``); needs
            ``pip install 'mplog[metrics]'``.
        worker_user: the user (name or uid) workers run as when a process started as
            root hands them to another one (gunicorn's ``user``, ``setuid()`` after a
            fork): the intake's socket and directory become that user's (and
            *worker_group*'s, by default the user's primary group), so its processes can
            connect again after the listener is restarted. Only root may set it.

    Raises:
        ConfigError: an unknown option, a bad handlers argument, an address that cannot be
            bound, or a handlers factory that raised in the listener.
    """
    if _importing_main():
        # This process is a spawn/forkserver child re-importing the main module of its
        # parent, whose top level calls start(): say so once, and end this child.
        say(f"mplog: {MAIN_GUARD_HINT}")
        raise SystemExit(1)
    opts = check_options(options, "mplog.start()")
    level = check_level(level)
    check_bool(install, "install")
    if address is not None and not isinstance(address, str | os.PathLike):
        raise ConfigError(
            f"address must be a Unix socket path (str) or None, got {type(address).__name__}"
        )
    if (handlers is None) == (config is None):
        raise ConfigError("mplog.start() needs handlers or config=, and not both")
    if config is not None:
        handlers = DictConfigHandlers(check_config(config))
    assert handlers is not None
    payload = ship_handlers(handlers)
    tmpdir = None
    if address is None:
        tmpdir = _private_dir()
        address = os.path.join(tmpdir, "intake.sock")
        if opts["intake_owner"] is not None:
            os.chown(tmpdir, *opts["intake_owner"])  # still 0700: theirs, and root's
    address = os.fspath(address)
    try:
        _check_address(address)
        cfg = ListenerConfig(
            address=address, handlers=payload, parent_pid=os.getpid(),
            options={"metrics_port": check_metrics_port(opts["metrics_port"]),
                     "intake_owner": opts["intake_owner"]},
        )
        pipeline = Pipeline(cfg, tmpdir=tmpdir, install=install, level=level, options=opts)
        pipeline._start()
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        _stop_resource_tracker()
        raise
    return pipeline


def worker_init(address: str | None = None, *, level: int | str | None = None) -> None:
    """Log this process's records into the pipeline at *address* (or ``$MPLOG_ADDRESS``).

    Replaces the root logger's handlers with one :class:`mplog.QueueHandler`, sets the
    root level (*level*; by default the one ``start(level=...)`` exported in
    ``MPLOG_LEVEL``, else NOTSET), and exports ``MPLOG_ADDRESS`` for this process's
    children. Calling it again with the same address changes nothing. Suitable as
    ``initializer=`` of ``multiprocessing.Pool`` and ``ProcessPoolExecutor``.

    Raises:
        ConfigError: neither *address* nor ``MPLOG_ADDRESS`` is set, no listener accepts
            connections at the address, or *level* is not a level.
    """
    address = resolve_address(address)
    if level is None:
        level = os.environ.get(ENV_LEVEL) or logging.NOTSET
    level = check_level(level)
    root = logging.getLogger()
    if any(isinstance(h, QueueHandler) and h.address == address for h in root.handlers):
        root.setLevel(level)
        os.environ[ENV_ADDRESS] = address
        return
    check_intake_address(address, "mplog.worker_init()")
    root.setLevel(level)
    os.environ[ENV_ADDRESS] = address
    for h in list(root.handlers):
        root.removeHandler(h)
        if isinstance(h, QueueHandler):
            h.close()
    root.addHandler(QueueHandler(address))

