"""IO: the listener process's entry point: build the handlers, bind, serve.

Rules this module keeps:

- The handlers (or their factory) arrive pickled and are built here, in the listener
  process; a failure is reported to ``start()`` as one line, not as a traceback.
- The intake server (``mplog._intake.IntakeServer``) runs in the main thread until it is
  asked to stop or the parent dies (``PR_SET_PDEATHSIG`` where available, and a
  ``getppid()`` check on every loop turn).
- A watchdog thread outlives a stuck main thread: a handler that blocks forever cannot keep
  an orphaned listener alive. When the parent is gone it wakes the loop, gives the
  handlers ``ORPHAN_CLOSE_TIMEOUT`` (plus a margin for the drain) to deliver what they
  hold, then removes the socket file and ends the process with ``os._exit``.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import _autojoin, _poll
from ._errors import ConfigError
from ._intake import IDLE_TICK, ORPHAN_CLOSE_TIMEOUT, IntakeServer, bind, pid_alive
from ._proctitle import set_listener_title
from ._stderr import say
from .handlers import QueueListener, SocketHandler

__all__ = ["ListenerConfig", "StatsBoard", "main"]

#: How often the watchdog publishes the counters while records flow: what a killed
#: listener received in its last tick is missing from its parent's totals. (Idle, it
#: wakes every IDLE_TICK; the parent's end wakes it at once through a pidfd.)
WATCHDOG_TICK = 0.02
#: How often an idle listener (nothing received, nothing buffered) publishes anyway.
IDLE_PUBLISH = 1.0
#: Beyond ORPHAN_CLOSE_TIMEOUT, what the orphaned listener's drain and close may take
#: before the watchdog ends the process anyway.
ORPHAN_MARGIN = 1.0


@dataclass
class ListenerConfig:
    """What the listener process needs; pickled to it by ``multiprocess``."""

    address: str
    handlers: bytes  # dill: a list of handlers or a callable returning one
    parent_pid: int
    incarnation: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    board: StatsBoard | None = None


#: The counters a listener publishes on its :class:`StatsBoard`.
BOARD_KEYS = (
    "pid", "received", "handled", "sent", "buffered", "buffered_bytes", "dropped",
    "reconnects", "connected", "drop_reports", "spooled", "spool_bytes", "spool_damaged",
    "worker_lost", "torn_frames", "bad_frames", "handler_errors", "turned_away",
)


class StatsBoard:
    """Shared memory where the listener keeps its latest counters, so that its parent
    still has them after the listener was killed (the pipeline's counters survive a
    restart: see ``Pipeline._absorb_dead_listener``).

    Two writers, each with its own region, so neither ever waits for the other: the
    listener's main thread (right before it acknowledges records to a worker) and its
    watchdog thread (on its tick). A snapshot carries the time its counters were read;
    :meth:`read` returns the most recent one. Each region has two slots, written in turn;
    a write ends by pointing ``current`` at its slot and bumping ``writes``, so a reader
    never sees a half-written slot, even if the writer was killed in the middle of one.
    Created by the parent (``ctx.RawArray``) and passed to each listener it starts. The
    layout (its keys) travels with it: a listener started after mplog was upgraded on disk
    (a spawn child imports the new code) writes the parent's layout, not its own.
    """

    WRITERS = 2

    def __init__(self, ctx: Any) -> None:
        self._keys = BOARD_KEYS
        self._n = len(self._keys) + 1  # the counters, then the time they were read (ns)
        self._region = 2 + 2 * self._n  # current slot, writes, slot 0, slot 1
        self._a = ctx.RawArray("q", self.WRITERS * self._region)

    def publish(self, stats: dict[str, Any], read_at: int, writer: int = 0) -> None:
        """Writer side (the listener): *stats* as read at *read_at* (``monotonic_ns``),
        by *writer* (0: the main thread, 1: the watchdog; one thread per writer)."""
        a, r, n = self._a, writer * self._region, self._n
        slot = 1 - a[r]
        base = r + 2 + slot * n
        for i, key in enumerate(self._keys):
            value = stats.get(key, 0)
            a[base + i] = value if isinstance(value, int) else 0
        a[base + n - 1] = read_at
        a[r] = slot
        a[r + 1] += 1

    def _read_region(self, writer: int) -> list[int] | None:
        a, r, n = self._a, writer * self._region, self._n
        for _ in range(100):
            writes = a[r + 1]
            if writes == 0:
                return None
            slot = a[r]
            if slot not in (0, 1):
                return None  # not a board this code wrote
            values = a[r + 2 + slot * n : r + 2 + (slot + 1) * n]
            if a[r + 1] == writes:
                return list(values)
        return None  # a writer that never pauses for 100 tries: cannot happen

    def read(self) -> dict[str, int] | None:
        """Reader side (the parent): the most recently read complete snapshot, or None."""
        snaps = [v for w in range(self.WRITERS) if (v := self._read_region(w)) is not None]
        if not snaps:
            return None
        latest = max(snaps, key=lambda v: v[-1])
        return dict(zip(self._keys, latest[:-1], strict=True))

    def clear(self) -> None:
        """Forget the last snapshots (their listener's counters were folded in)."""
        for w in range(self.WRITERS):
            self._a[w * self._region + 1] = 0


def _set_pdeathsig(sig: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError) as exc:
        # Not fatal: the getppid() check on every loop turn still notices.
        say(f"mplog listener: PR_SET_PDEATHSIG unavailable ({exc})")


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


class _Watchdog:
    """The listener's second thread: publishes the counters on the :class:`StatsBoard`
    and ends this process soon after the process that called ``start()`` is gone,
    whether the main thread is stuck in a handler or not.

    It sleeps while the listener is idle; the first batch after a pause wakes it at once
    (:meth:`activity`, through a pipe), and it publishes every ``WATCHDOG_TICK`` while
    records flow or wait in buffers (what a SIGKILL would cost).
    """

    def __init__(self, cfg: ListenerConfig, starter_fd: int) -> None:
        self.cfg = cfg
        self.starter_fd = starter_fd
        self.server: IntakeServer | None = None
        self.idle = True
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def activity(self) -> None:
        """Main thread, after each batch: wake the watchdog if it is idling."""
        if self.idle:
            self.idle = False
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                return  # a wake-up is already pending

    def publish(self, writer: int = 1) -> dict[str, Any]:
        """Put the counters on the board; returns what it put. *writer* 0 is the main
        thread (before each acknowledgement), 1 this thread: each has its own region."""
        assert self.cfg.board is not None and self.server is not None
        read_at = time.monotonic_ns()
        stats = self.server.counters()
        self.cfg.board.publish(stats, read_at, writer)
        return stats

    def run(self) -> None:
        cfg = self.cfg
        failed = False
        published: tuple[int, int, float] = (-1, 0, 0.0)  # received, buffered, when
        tick = WATCHDOG_TICK
        fds = [self._wake_r] + ([self.starter_fd] if self.starter_fd >= 0 else [])
        while os.getppid() == cfg.parent_pid:
            ready = _poll.readable(fds, tick)
            if self.starter_fd in ready:
                break  # a pidfd is readable once its process has ended
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            server = self.server
            if cfg.board is None or server is None:
                continue
            now = time.monotonic()
            self.idle = True  # before the check: a batch from now on wakes us
            busy = server.received != published[0] or published[1] > 0
            if busy:
                self.idle = False
            tick = WATCHDOG_TICK if busy else IDLE_TICK
            if not busy and now - published[2] < IDLE_PUBLISH:
                continue  # idle: nothing new to publish
            try:
                stats = self.publish()
            except Exception as exc:  # keep watching the parent whatever happens here
                if not failed:
                    say(f"mplog listener: cannot publish the counters: {exc}")
                failed = True
            else:
                published = (int(stats.get("received", 0)), int(stats.get("buffered", 0)), now)
        self._orphaned()

    def _orphaned(self) -> None:
        if self.server is not None:
            # The intake loop compares getppid() with this on every turn: now it cannot
            # match, so the loop starts its own bounded shutdown (drain, deliver, close).
            self.server.parent_pid = -1
        try:
            os.kill(os.getpid(), signal.SIGUSR1)  # wake the loop (its signal wakeup fd)
        except OSError as exc:
            say(f"mplog listener: cannot wake the main loop: {exc}")
        time.sleep(ORPHAN_CLOSE_TIMEOUT + ORPHAN_MARGIN)
        say(
            "mplog listener: the parent process is gone and a handler did not finish in "
            f"{ORPHAN_CLOSE_TIMEOUT + ORPHAN_MARGIN:.1f} s; exiting without it"
        )
        pathlib.Path(self.cfg.address).unlink(missing_ok=True)
        os._exit(1)


def _not_ready(cfg: ListenerConfig, lsock: socket.socket) -> None:
    """This listener bound its socket and then failed to start. A first start's socket
    file goes (start() raises). A restart's stays, closed, so that workers see what they
    see while a listener is restarted (connections refused) and hold their records for
    the supervisor's next try: without a socket file they take the pipeline for stopped
    and write what they hold to stderr."""
    lsock.close()
    if cfg.incarnation == 0:
        pathlib.Path(cfg.address).unlink(missing_ok=True)


def _raise_fd_limit() -> None:
    """Every worker costs the listener two file descriptors (its socket and the read end
    of its record pipe): take the hard limit, not the soft one (often 1024), so a few
    hundred workers do not run the listener out of them."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:  # a hard limit above the kernel's (macOS)
            say(f"mplog listener: keeping the soft fd limit {soft}: {exc}")


def main(cfg: ListenerConfig, ready: Any) -> None:
    """Entry point of the listener process."""
    _set_pdeathsig(signal.SIGUSR1)
    # Started by fork or forkserver from a program that put SIGPIPE's default back, a write
    # to a receiver that closed would kill the listener: here it is an EPIPE, handled.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _autojoin.leave()  # the listener never sends its own records to itself
    starter_pid = cfg.parent_pid
    if os.getppid() != cfg.parent_pid:
        from multiprocess import parent_process

        starter = parent_process()
        if starter is None or starter.pid != cfg.parent_pid:
            return  # the parent died before we got here
        # start_method="forkserver": our parent is the fork server. It outlives the
        # process that called start() as long as we live (we hold its "alive" pipe), so
        # the watchdog watches that process itself, and the intake loop watches the
        # fork server.
        cfg.parent_pid = os.getppid()
    try:
        starter_fd = os.pidfd_open(starter_pid)
    except OSError:  # gone already, or a kernel without pidfd (< 5.3): getppid() only
        starter_fd = -1
        if not pid_alive(starter_pid):
            return
    _raise_fd_limit()
    watchdog = _Watchdog(cfg, starter_fd)
    threading.Thread(target=watchdog.run, name="mplog-watchdog", daemon=True).start()
    set_listener_title(starter_pid)
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
        lsock = bind(cfg.address, cfg.options.get("intake_owner"))
    except OSError as exc:
        ready.send(("error", f"cannot listen on address {cfg.address!r}: {exc}"))
        return
    listener = QueueListener(None, *handlers)
    sockets = [h for h in handlers if isinstance(h, SocketHandler)]
    for h in handlers:
        if h not in sockets:  # mplog's SocketHandler counts and says its own losses
            listener.failures.watch(h)
    server = IntakeServer(
        lsock, cfg.address, listener, handlers, sockets, parent_pid=cfg.parent_pid
    )
    server.incarnation = cfg.incarnation
    server.install_signals()
    inner = listener.handle_batch

    def handle_batch(batch: list[dict[str, Any]]) -> None:
        inner(batch)
        watchdog.activity()

    listener.handle_batch = handle_batch  # type: ignore[method-assign]
    inner_relay = listener.relay_batch

    def relay_batch(frames: list[bytes]) -> None:
        inner_relay(frames)
        watchdog.activity()

    listener.relay_batch = relay_batch  # type: ignore[method-assign]
    watchdog.server = server  # it publishes the counters from now on
    if cfg.board is not None:
        server.before_ack = functools.partial(watchdog.publish, 0)
    try:
        listener.start()  # opens spools
    except ConfigError as exc:
        _not_ready(cfg, lsock)
        ready.send(("error", str(exc)))
        return
    metrics = None
    if cfg.options.get("metrics_port") is not None:
        from ._metrics import serve_pipeline_metrics
        try:
            metrics = serve_pipeline_metrics(cfg.options["metrics_port"], server.stats)
        except ConfigError as exc:
            listener.stop()
            _not_ready(cfg, lsock)
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
