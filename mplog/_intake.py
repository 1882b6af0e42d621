"""IO: the intake, both ends: the worker-side client, the control client, and the
listener's selector server.

Rules this module keeps (client):

- One Unix stream connection per process, opened lazily. Its first message hands the
  listener the read end of a pipe and, on x86-64 Linux, a record ring (``_ring``: shared
  memory); every record is then copied into that ring (or, without one, one ``write``
  into the pipe), under a per-connection lock, before ``emit()`` returns: nothing waits
  in the worker, so ``os._exit`` or SIGKILL right after a log call loses nothing. (A
  ring write is a memory copy, no system call; a pipe write costs half a Unix socket
  send. With a ring the pipe only wakes the listener; the socket carries the greeting,
  the acknowledgements and control messages. Without a pipe, records go on the socket.)
- Fork safety: ``os.register_at_fork`` gives every child fresh locks and no inherited
  connection (a child never shares a socket, or a half-written frame, with its parent).
- A listener that cannot be reached (being restarted) is retried for a bounded time per
  outage, not per record; after that, while its socket file is there, records are held
  in memory (bounded) and written first on the next connection; beyond that bound, or
  with the pipeline gone, they go to stderr with a clear prefix and are counted, and the
  count is reported to the listener once it is back. Nothing here ever raises into
  application code or blocks forever.

Rules this module keeps (server, :class:`IntakeServer`):

- One selector loop, in the listener process's main thread, reads every worker
  connection in large chunks and splits frames; records are decoded in batches and passed
  to :class:`mplog.QueueListener`, which passes them to the handlers.
- A connection that sends a malformed or oversized frame is closed and counted; a worker
  that dies mid-frame costs only its partial frame (counted). Nobody else is affected.
- Control requests (stats, flush, stop) arrive on the same socket as JSON objects and are
  answered on the connection that asked.
- The loop ends when asked to (``stop``, SIGTERM) or when the parent dies; either way it
  drains what it can read and closes the handlers within a deadline.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import resource
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _poll, _sigpipe
from ._errors import MplogError, ProtocolError, RemoteProtocolError
from ._framing import FrameSplitter
from ._options import MISSING_FILE_GRACE, RESTART_WAIT
from ._record import (
    check_control,
    decode_control,
    decode_record,
    decode_records,
    encode_control,
    is_record,
    make_record,
)
from ._ring import RING_TICK, Ring
from ._ring import available as ring_available
from ._ring import file_id as _file_id
from ._stderr import say
from ._text import iso_local

if TYPE_CHECKING:
    from .handlers import QueueListener, SocketHandler

__all__ = ["IntakeClient", "IntakeServer", "bind", "control_request"]

#: How long a worker keeps retrying an unreachable listener, per outage (not per record).
OUTAGE_BUDGET = 2.0
#: Pause between two connection attempts during an outage.
RETRY_INTERVAL = 0.02
#: Socket send buffer of a worker's intake connection (the kernel caps it at wmem_max).
SEND_BUFFER = 1024 * 1024
#: A send that makes no progress for this long is abandoned (the listener is stuck).
SEND_TIMEOUT = 60.0
#: With a record ring, how often (at most) a worker's log call asks its socket whether the
#: listener is still there: a write into the ring of a dead one succeeds. Records written
#: meanwhile are kept for a resend, as those in a dead listener's pipe are.
LIVE_CHECK = 0.001
_monotonic = time.monotonic
#: Capacity asked for a worker's record pipe (the kernel default is 64 KiB; an unprivileged
#: process may ask up to /proc/sys/fs/pipe-max-size, 1 MiB by default). Room for bursts:
#: a worker waits only when the listener is this far behind.
PIPE_SIZE = 256 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)
#: The listener's acknowledgement: how many record frames of this connection it has
#: handled (passed to the handlers, so spooled where there is a spool), cumulative.
ACK = struct.Struct(">Q")
#: A worker's first frame on a connection; the listener answers it with GREETING + mode
#: (8 bytes, ahead of the acknowledgements): which record format it wants.
HELLO = encode_control({"op": "hello"})
GREETING = b"mplogI\x01"
#: How long a new connection waits for the greeting before it writes anyway.
GREETING_WAIT = 0.25
#: How long a worker that gave up a connection mid-write waits for the listener's last
#: count (IntakeClient._abandon); without it, every record not acknowledged goes again.
ABANDON_WAIT = 1.0
#: Intake formats: ``b"R"`` the compact record (:func:`mplog._record.encode`), decoded by
#: the listener; ``b"P"`` the stdlib wire's final frame (:func:`encode_pickle`), relayed.
MODE_RECORD = b"R"
MODE_PICKLE = b"P"
#: In place of a mode: the listener is short of file descriptors and turns this worker
#: connection away; the worker holds its records and tries again after FULL_RETRY.
MODE_FULL = b"F"
#: How long a worker turned away (MODE_FULL) holds its records before it tries again.
FULL_RETRY = 0.25
#: While a worker holds records, a thread of its own tries to connect after RETRY_INTERVAL,
#: then at twice the interval each time, up to this: held records reach the listener once
#: it is back, not at the worker's next log call (an idle worker's could wait for hours).
HELD_RETRY_MAX = 1.0
#: A worker reads its acknowledgements (without blocking) each time this many bytes of
#: records are kept unacknowledged: one recv per this many bytes written.
ACK_READ_BYTES = 256 * 1024
#: Most bytes of records a worker keeps for a resend. What is in flight is bounded by
#: RETAIN_WAIT, so this is only reached if acks stop coming for SEND_TIMEOUT.
RETAIN_MAX = 16 * 1024 * 1024
#: A worker this many bytes ahead of its acknowledgements waits (at most SEND_TIMEOUT)
#: for the listener to catch up before it writes more: what is in flight stays resendable
#: (well under RETAIN_MAX) however far a slow listener falls behind. In the common case the
#: socket buffer (SEND_BUFFER) plus one read of the listener's are all that is in flight.
RETAIN_WAIT = 4 * 1024 * 1024
#: Bytes read from a worker connection per ``recv``: big enough for hundreds of records.
READ_SIZE = 256 * 1024
#: After a turn that handled records, the loop pauses this long before it looks again, so
#: the next turn finds many records per connection (fewer, larger reads and sends) and
#: workers write without waking it each time. Records wait in the kernel meanwhile (safe
#: from os._exit); it adds at most this much latency.
NAP = 0.001
#: Server loop wake-up period when idle: bounds how late a dead parent is noticed.
IDLE_TICK = 0.25
#: File descriptors the listener keeps for other things than worker connections (its
#: handlers' connections and files, the spool, control requests such as stop()): a worker
#: connecting when fewer are free is turned away (MODE_FULL) instead.
FD_RESERVE = 32
#: How long the listener stops accepting after accept() failed for want of descriptors.
ACCEPT_PAUSE = 0.1
#: The least time between two "out of file descriptors" lines on stderr.
SHORTAGE_REPORT_INTERVAL = 30.0
#: The loop's timeout while acknowledgements wait for room in a worker's socket.
ACK_RETRY = 0.02
#: Seconds the handlers get to deliver what they hold when the parent died.
ORPHAN_CLOSE_TIMEOUT = 1.0

_clients: weakref.WeakSet[IntakeClient] = weakref.WeakSet()
_fork_hook_registered = False
_registry_lock = threading.Lock()


def _timeval(seconds: float) -> bytes:
    """*seconds* as a ``struct timeval``, for SO_SNDTIMEO / SO_RCVTIMEO."""
    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))


#: At exit, how long a process waits for the listener to acknowledge what it wrote last.
EXIT_DRAIN = 5.0
#: ... and, if it finds the listener being restarted (its socket file there, connections
#: refused), how long in all: a restart on a loaded machine (a new process, its imports,
#: its handlers) can take longer than EXIT_DRAIN, and what is still unacknowledged then
#: goes to stderr instead of the spool or the receiver.
EXIT_RESTART_WAIT = RESTART_WAIT


def _drain_all_at_exit() -> None:
    for client in list(_clients):
        if client._pid == os.getpid() and not client.drain(
            EXIT_DRAIN, restart_wait=EXIT_RESTART_WAIT
        ):
            client.give_up()


def _register_exit_drain() -> None:
    """Wait, at exit, until the listener has handled what this process wrote.

    A record is in the pipe between the process and the listener when the log call
    returns; if the process exits and the listener dies before reading it, it is lost.
    Waiting for the acknowledgement closes that window for every exit that runs exit
    hooks: ``atexit`` (the interpreter's exit, spawn children) and threading's shutdown
    hooks, which a forked multiprocessing child runs before its ``os._exit``. Only an
    ``os._exit`` of the program's own skips both (the record is still safe unless the
    listener dies in that same instant).
    """
    import atexit

    atexit.register(_drain_all_at_exit)
    at_thread_shutdown = getattr(threading, "_register_atexit", None)
    if at_thread_shutdown is not None:
        try:
            at_thread_shutdown(_drain_all_at_exit)
        except RuntimeError:
            return  # the interpreter is already shutting down: atexit still runs it


#: A worker's intake descriptors are moved to the lowest free number from here (or half
#: the soft RLIMIT_NOFILE, if that is lower): see _move_high. Kept below select()'s limit
#: (1024), so _poll still waits for them with select() (gevent's poll() is unsafe at exit).
HIGH_FD = 512


def _move_high(fd: int, close: bool = True) -> int:
    """A duplicate of *fd* (close-on-exec) at a number at or above HIGH_FD, *fd* closed
    if *close*; *fd* itself if there is no such room. A process that closes every
    descriptor behind mplog's back (``os.closerange(3, ...)``, as daemonizing code does)
    and then opens files gets the low numbers again: a write into the record pipe at a
    low number would go into one of those files. At a high number it is seldom reused,
    and the next write fails (EBADF) instead, which reconnects."""
    floor = min(HIGH_FD, _fd_limit() // 2)
    if fd >= floor:
        return fd
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    except OSError:  # none free up there: the low number serves as before
        return fd
    if close:
        os.close(fd)
    return high


def _same_file(fd: int, file_id: tuple[int, int] | None) -> bool:
    """Whether *fd* is still open on the file *file_id* names."""
    return file_id is not None and _file_id(fd) == file_id


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for client in list(_clients):
        client._reset_after_fork()


class IntakeClient:
    """A process's connection to the listener's intake socket at *address*."""

    def __init__(
        self,
        address: str,
        *,
        outage_budget: float = OUTAGE_BUDGET,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        global _fork_hook_registered
        self.address = address
        self.outage_budget = outage_budget
        self.send_timeout = send_timeout
        # Re-entrant: a signal handler (or a handler called while we write) that logs in
        # the thread already inside send() must not deadlock. Its record is queued and
        # written by the outer call once its own frame is whole (see send()).
        self._lock = threading.RLock()
        self._depth = 0
        self._pending: deque[bytes] = deque()
        #: close() was called from inside send() (a signal handler): send() closes.
        self._close_after = False
        self._sock: socket.socket | None = None
        #: The write end of the connection's record pipe; -1: records go on the socket.
        self._wfd = -1
        #: The connection's record ring (the pipe then only wakes the listener), or None.
        self._ring: Ring | None = None
        #: With a ring: when the socket is next asked whether the listener is there.
        self._live_at = 0.0
        #: What _sock and _wfd are (st_dev, st_ino), to close them only if still so.
        self._fd_ids: tuple[tuple[int, int] | None, tuple[int, int] | None] = (None, None)
        self._pid = os.getpid()
        self._retain_init()
        self._outage_deadline: float | None = None
        #: Records are being held in memory (see _hold); the next connection attempt is
        #: not before _next_try.
        self._holding = False
        #: The thread that tries again while records are held (see _start_retrier).
        self._retrier: threading.Thread | None = None
        #: Bumped by close() and a fork: a retrier of an earlier one ends.
        self._generation = 0
        #: When a retrier first found no socket file (see _retry_held), else None.
        self._gone_since: float | None = None
        #: The last connect was refused for permissions (see _connect).
        self._denied = False
        #: The last connect was turned away by a listener short of descriptors (MODE_FULL).
        self._full = False
        #: The last connect could not make a socket: this process is out of descriptors.
        self._no_fds = False
        self._next_try = 0.0
        self._lost = 0
        self._lost_first = 0.0
        self._lost_last = 0.0
        #: Records this process could not hand to the listener (written to stderr instead).
        self.lost_total = 0
        with _registry_lock:
            _clients.add(self)
            if not _fork_hook_registered:
                os.register_at_fork(after_in_child=_after_fork_in_child)
                _register_exit_drain()
                _fork_hook_registered = True

    def _retain_init(self) -> None:
        # Records written on the current connection and not yet acknowledged, oldest
        # first; resent, in order, on the next connection if this one breaks (the
        # listener died before handling them: they were in the pipe between us).
        self._retained: deque[bytes] = deque()
        self._retained_bytes = 0
        self._acked = 0  # cumulative ack of the current connection
        self._unacked_base = 0  # records of this connection before the first retained one
        self._ack_part = b""
        self._new_connection_state()

    def _new_connection_state(self) -> None:
        # Until the listener's greeting is read: compact records (every listener decodes
        # them), and the acknowledgements read at every record (the greeting comes first).
        self._greeted = False
        #: The listener relays stdlib-wire frames: the handler encodes with encode_pickle.
        self.relay = False
        self._ack_every = 0
        #: The acknowledgements are read when _retained_bytes reaches this (0: at every
        #: record; -1: never the fast path); one comparison on the fast path of send().
        self._ack_at = 0
        #: The process stopped ignoring SIGPIPE after this connection's pipe was made:
        #: its writes are made under _sigpipe.no_sigpipe(), off the fast path.
        self._guarded = False

    def _read_acks(self, sock: socket.socket) -> bool:
        """Forget the records the listener says it handled. Before the greeting: only
        if something is there to read (see _connect on the wait otherwise). False if
        the listener is gone (EOF, or the socket broke)."""
        if not self._greeted:
            try:
                if not _poll.readable([sock], 0):
                    return True
            except (OSError, ValueError):
                return False  # a closed socket: nothing to read
        data = self._ack_part
        alive = True
        while True:
            try:
                chunk = sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break  # nothing more to read now
            except OSError:
                alive = False  # a dead listener: what it acknowledged was read above
                break
            data += chunk
            if len(chunk) < 65536:
                alive = bool(chunk)
                break
        if not self._greeted:
            if len(data) < len(GREETING) + 1:
                self._ack_part = data
                return alive
            if data[: len(GREETING) + 1] == GREETING + MODE_FULL:
                self._full = True  # _connect gives this connection up
                self._ack_part = b""
                return alive
            self._greeted = True
            self.relay = data[: len(GREETING) + 1] == GREETING + MODE_PICKLE
            self._ack_every = ACK_READ_BYTES
            data = data[len(GREETING) + 1 :]
        whole = len(data) - len(data) % ACK.size
        if whole:
            (self._acked,) = ACK.unpack_from(data, whole - ACK.size)
        self._ack_part = data[whole:]
        retained = self._retained
        while retained and self._unacked_base < self._acked:
            self._retained_bytes -= len(retained.popleft())
            self._unacked_base += 1
        while self._retained_bytes > RETAIN_MAX and retained:
            # Acks stopped coming (a stuck listener): keep memory bounded; what is dropped
            # here can no longer be resent, which matters only if the listener then dies.
            self._retained_bytes -= len(retained.popleft())
            self._unacked_base += 1
        if self._wfd >= 0 and not self._guarded and not _sigpipe.ignored():
            # signal.signal(SIGPIPE, SIG_DFL) since this pipe was made (checked here, every
            # ACK_READ_BYTES, not per record): a write into the pipe of a dead listener
            # would now kill this process.
            self._guarded = True
        if self._guarded:
            self._ack_at = -1
        else:
            self._ack_at = self._retained_bytes + self._ack_every if self._greeted else 0
        return alive

    def _read_acks_or_wait(self, sock: socket.socket) -> None:
        """Read the acknowledgements; if this process is more than RETAIN_WAIT bytes ahead
        of them, wait (at most send_timeout) until the listener catches up. A listener
        that went (EOF) ends the wait: the next write finds out and reconnects."""
        self._read_acks(sock)
        if self._retained_bytes <= RETAIN_WAIT or not self._greeted:
            return
        deadline = time.monotonic() + self.send_timeout
        while self._retained_bytes > RETAIN_WAIT:
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not _poll.readable([sock], left):
                    return  # stuck for send_timeout: _read_acks keeps memory bounded
            except (OSError, ValueError):
                return
            # EOF (not "nothing new": a listener acknowledges again, unchanged, a worker
            # that waits for room in its ring).
            if not self._read_acks(sock):
                return

    def _reset_after_fork(self) -> None:
        # The parent's lock may have been held by a thread that does not exist here, and
        # the parent's socket must stay the parent's: close only our copy of the fd.
        self._lock = threading.RLock()
        self._depth = 0
        self._pending = deque()
        self._close_after = False
        self._disconnect()  # closes only this process's copies of the parent's fds
        self._pid = os.getpid()
        self._retain_init()  # the parent's records are the parent's to resend
        self._outage_deadline = None
        self._holding = False
        self._retrier = None  # the parent's thread does not exist here
        self._generation += 1
        self._lost = 0

    def drain(self, timeout: float, *, restart_wait: float | None = None) -> bool:
        """Wait (at most *timeout* s) until the listener has handled every record this
        process wrote; resend to a restarted listener what the old one did not. True if
        nothing is left unacknowledged. Returns at once when no listener is there.

        *restart_wait*: if the listener is found being restarted, wait up to this long in
        all instead (the exit drain: see EXIT_RESTART_WAIT)."""
        began = time.monotonic()
        deadline = began + timeout
        with self._lock:
            if self._depth:
                # From a signal handler, while this thread is inside send(): that call
                # owns the connection (no reconnecting, no closing it here). Its queued
                # frames go aside; what this connection carries is waited for.
                ok = self._send_aside(deadline)
                return self._wait_acks_only(deadline) and ok
            while self._retained:
                sock = self._sock
                if sock is None:
                    sock = self._sock = self._connect()  # writes the retained records again
                    if sock is None:
                        # A listener being restarted leaves its socket file (connect is
                        # refused until the new one binds): wait for it. No file: the
                        # pipeline was stopped, there is nobody to wait for.
                        if not os.path.exists(self.address):
                            return False
                        if restart_wait is not None:
                            deadline = max(deadline, began + restart_wait)
                        if time.monotonic() >= deadline:
                            return False
                        time.sleep(RETRY_INTERVAL)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    readable = _poll.readable([sock], min(remaining, 0.1))
                except (OSError, ValueError):
                    readable = [sock]
                if not readable:
                    continue
                if not self._read_acks(sock):  # EOF (see _read_acks_or_wait)
                    self._disconnect()
            return True

    def _wait_acks_only(self, deadline: float) -> bool:
        # drain() inside send(): read acknowledgements until none is missing, without
        # touching the connection (the outer call's) even at EOF.
        while self._retained and self._sock is not None:
            sock = self._sock
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                if not _poll.readable([sock], min(remaining, 0.1)):
                    continue
            except (OSError, ValueError):
                return False
            if not self._read_acks(sock):
                return False  # EOF: the outer call finds out and resends
        return not self._retained

    def close(self) -> None:
        with self._lock:
            self._generation += 1  # a retrier ends: held records wait for the next call
            if self._depth:
                # From a signal handler, while this thread is inside send(): the
                # connection is that call's until it returns, and is closed then.
                self._send_aside(time.monotonic() + EXIT_DRAIN)
                self._close_after = True
                return
            self._disconnect()

    def _disconnect(self) -> None:
        """Forget the current connection: close its socket and its record pipe, each only
        if its descriptor is still the one this connection opened. A daemonizing library
        (``os.closerange``) may have closed them, and the numbers may now be a file the
        program opened since: that one must stay open."""
        sock, self._sock = self._sock, None
        wfd, self._wfd = self._wfd, -1
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()  # this process's mapping only (a forked child's copy, too)
        sock_id, pipe_id = self._fd_ids
        self._fd_ids = (None, None)
        if sock is not None:
            if _same_file(sock.fileno(), sock_id):
                sock.close()
            else:
                sock.detach()  # forget the number without closing whatever it is now
        if wfd >= 0 and _same_file(wfd, pipe_id):
            os.close(wfd)

    def _open_pipe(self, s: socket.socket) -> tuple[int, Ring | None]:
        """Send HELLO on the new connection *s* with the read end of a new pipe for the
        records (SCM_RIGHTS), and the memfd of a new record ring where rings work (the
        pipe then only wakes the listener); return the pipe's write end and the ring.
        (-1, None) if there is no pipe (records then go on the socket). Raises OSError if
        *s* broke."""
        # A process that does not ignore SIGPIPE would be killed by a write into the pipe
        # of a listener that died: its records go on the socket (MSG_NOSIGNAL) instead.
        if os.environ.get("MPLOG_INTAKE_PIPE", "1") == "0" or not _sigpipe.ignored():
            _sigpipe.send_all(s, HELLO)
            return -1, None
        try:
            r, w = os.pipe()  # both ends close-on-exec: an exec'd child holds neither
        except OSError:  # out of file descriptors: the socket carries the records
            _sigpipe.send_all(s, HELLO)
            return -1, None
        w = _move_high(w)
        ring: Ring | None = None
        mfd = -1
        if ring_available():
            try:
                ring, mfd = Ring.create()
            except OSError:  # no memory or descriptor for it: the pipe carries records
                ring = None
            else:
                ring.bell = w
        try:
            if ring is None and _F_SETPIPE_SZ is not None:
                # Refused over the user's pipe-user-pages budget: the kernel's default
                # capacity works too; the worker then waits for the listener sooner.
                with contextlib.suppress(OSError):
                    fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
            # Non-blocking: a full pipe is waited for with a deadline (_write_rest), so a
            # stuck listener never blocks a worker for longer than send_timeout.
            os.set_blocking(w, False)
            fds = array.array("i", [r] if ring is None else [r, mfd])
            if s.sendmsg([HELLO], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)],
                         socket.MSG_NOSIGNAL) != len(HELLO):
                raise OSError("the hello was cut short")
        except OSError:
            os.close(w)
            if ring is not None:
                ring.close()
            raise
        finally:
            os.close(r)  # the listener has its own copy now
            if mfd >= 0:
                os.close(mfd)  # the mapping stays; a closerange cannot touch it
        return w, ring

    def _write(self, frame: bytes) -> None:
        """Write *frame* whole on the current connection (its pipe, else its socket);
        OSError if the listener went or made no progress for send_timeout."""
        wfd = self._wfd
        if wfd < 0:
            assert self._sock is not None
            _sigpipe.send_all(self._sock, frame)
            return
        with _sigpipe.no_sigpipe() if self._guarded else contextlib.nullcontext():
            ring = self._ring
            if ring is not None:
                if _monotonic() >= self._live_at:
                    self._check_alive()  # see send()
                if not ring.put(frame):
                    self._ring_write_rest(ring, frame)
                return
            try:
                n = os.write(wfd, frame)
            except BlockingIOError:
                n = 0
            if n != len(frame):
                self._write_rest(wfd, frame, n)

    def _write_rest(self, wfd: int, frame: bytes, n: int) -> None:
        """The pipe is full: write the rest of *frame* (from byte *n*) as the listener
        makes room, for at most send_timeout."""
        view = memoryview(frame)
        deadline = time.monotonic() + self.send_timeout
        while n < len(frame):
            left = deadline - time.monotonic()
            if left <= 0 or not _poll.writable(wfd, left):
                raise TimeoutError(f"the listener took no record for {self.send_timeout} s")
            try:
                n += os.write(wfd, view[n:])
            except BlockingIOError:
                continue

    def _check_alive(self) -> None:
        """Read the acknowledgements (and wait for them, as _read_acks_or_wait, if this
        process is RETAIN_WAIT ahead); ConnectionResetError if the listener is gone."""
        sock = self._sock
        assert sock is not None
        self._live_at = _monotonic() + LIVE_CHECK
        # Asked first: under gevent a recv waits (cooperatively) even with MSG_DONTWAIT.
        if _poll.readable([sock], 0) and not self._read_acks(sock):
            raise ConnectionResetError("the listener closed the connection")
        if self._retained_bytes > RETAIN_WAIT:
            self._read_acks_or_wait(sock)

    def _ring_write_rest(self, ring: Ring, frame: bytes) -> None:
        """The ring has no room for *frame*: write it as the listener makes room (in
        parts, if it is larger than the ring), for at most send_timeout. The listener,
        asked for it (want_room), acknowledges once it took bytes, which wakes the poll
        on the socket; OSError if the listener is gone (EOF there, or EPIPE on the bell)."""
        sock = self._sock
        assert sock is not None
        view = memoryview(frame)
        n = 0
        deadline = time.monotonic() + self.send_timeout
        pause = 0.001
        while True:
            n += ring.put_part(view[n:])
            if n == len(frame):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the listener took no record for {self.send_timeout} s")
            ring.want_room()
            ring.ring_bell()
            if ring.room():
                continue  # made room meanwhile, perhaps before it saw want_room
            # Also a bound on a wake-up lost to the store-load race (see _ring).
            if not _poll.readable([sock], min(left, pause)):
                pause = min(pause * 2, RING_TICK)
                continue
            try:
                chunk = sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                raise ConnectionResetError("the listener closed the connection")
            self._ack_part += chunk
            self._read_acks(sock)

    def _connect(self) -> socket.socket | None:
        self._denied = self._full = self._no_fds = False
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            # Out of descriptors (EMFILE, ENFILE) or memory, here: not the listener's
            # outage, so not waited out in the log call (see _send_locked).
            self._no_fds = True
            return None
        high = _move_high(s.fileno(), close=False)
        if high != s.fileno():
            s.close()
            s = socket.socket(fileno=high)
        try:
            # Room for bursts: a worker blocks (and pays for the context switches) only
            # when the listener is this far behind.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            # A blocking socket whose writes the kernel bounds (SO_SNDTIMEO: a write, or
            # a connect to a full backlog, that makes no progress for send_timeout fails
            # with EAGAIN): one system call per record. A Python timeout would bound it
            # too, but CPython then polls before every send and every recv (two system
            # calls per record), and even a MSG_DONTWAIT recv would wait. Acks are read
            # with MSG_DONTWAIT; how far a worker may run ahead of them is bounded
            # explicitly (RETAIN_WAIT, see _read_acks_or_wait).
            s.settimeout(None)  # blocking, whatever socket.setdefaulttimeout() says
            bound = _timeval(self.send_timeout)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
            s.connect(self.address)
            wfd, ring = self._open_pipe(s)
        except OSError as exc:
            s.close()
            # Not an outage: waiting will not change it (a process that setuid() after
            # the pipeline was made for root alone).
            self._denied = isinstance(exc, PermissionError)
            return None
        self._new_connection_state()
        self._holding = False
        self._gone_since = None
        self._acked = 0
        self._unacked_base = 0
        self._ack_part = b""
        self._sock, self._wfd, self._ring = s, wfd, ring  # _write and _disconnect use them
        self._live_at = _monotonic() + LIVE_CHECK
        self._fd_ids = (_file_id(s.fileno()), _file_id(wfd) if wfd >= 0 else None)
        try:
            # The greeting says which format to write; it comes at once from a listener
            # that is running, so the first records are already in it. Without it
            # (a busy listener) records go in the compact format until it is read.
            if _poll.readable([s], GREETING_WAIT):
                self._read_acks(s)
            if self._full:
                self._disconnect()
                return None
            if self._lost:
                report = encode_control(
                    {"op": "lost", "count": self._lost, "first": self._lost_first,
                     "last": self._lost_last, "pid": os.getpid()}
                )
                _sigpipe.send_all(s, report)
                self._lost = 0
            # A new listener: first the records the old one may never have handled.
            # (A copy: a wait for room in a ring reads acknowledgements, which forget
            # the oldest of them; what they count here is this connection's, from 0.)
            for f in list(self._retained):
                self._write(f)
        except (OSError, ValueError):
            self._disconnect()
            return None
        except BaseException:
            self._abandon(None)  # interrupted inside a write: see _abandon
            raise
        return s

    def check(self, who: str = "mplog.QueueHandler") -> None:
        """Connect now; :class:`ConfigError` naming the address if no listener answers
        there, so a wrong address fails at configuration time, not at the first record."""
        from ._options import check_intake_address

        with self._lock:
            if self._sock is None:
                self._sock = self._connect()
            if self._sock is None:
                check_intake_address(self.address, who)  # raises, saying why
                self._sock = self._connect()  # it came back meanwhile

    def send(self, frame: bytes, pid: int | None = None) -> bool:
        """Write *frame* to the listener. Return False if it had to be written to stderr.

        *pid*: this process's id if the caller already has it (a record made just now
        carries it as ``record.process``), which saves a system call per record; anything
        else is checked with ``os.getpid()``.

        Re-entrant calls (a signal handler that logs while this thread is inside send)
        queue their frame; the outer call writes it right after its own, whole."""
        if pid != self._pid and self._pid != os.getpid():
            self._reset_after_fork()  # forked by something that bypassed at-fork hooks
        lock = self._lock
        lock.acquire()  # not ``with``: this is paid per record, and with costs twice as much
        try:
            if self._depth:
                self._pending.append(frame)
                return True
            wfd = self._wfd
            self._depth = 1
            written = False  # this frame written and kept for a resend (see _abandon)
            try:
                if wfd >= 0 and self._retained_bytes < self._ack_at:
                    # The common case, inlined (_write, without a call per record): a pipe
                    # with room, no acks to read yet.
                    try:
                        ring = self._ring
                        if ring is not None:
                            # A write into a ring cannot fail when the listener died, as
                            # one into its pipe does: ask the socket, at most every
                            # LIVE_CHECK (a record written meanwhile is kept for a resend).
                            # Before the write: an acknowledgement read after it, and
                            # before the frame is retained, could count the frame.
                            if _monotonic() >= self._live_at:
                                self._check_alive()
                            if not ring.put(frame):
                                self._ring_write_rest(ring, frame)
                        else:
                            try:
                                n = os.write(wfd, frame)
                            except BlockingIOError:
                                n = 0
                            if n != len(frame):
                                self._write_rest(wfd, frame, n)
                    except OSError:
                        # The listener went (or is stuck): this connection is done, as in
                        # _send_locked; a partial frame must not be followed by more bytes.
                        sock = self._sock
                        assert sock is not None
                        self._read_acks(sock)
                        self._disconnect()
                        ok = self._send_locked(frame)  # reconnects and resends
                    else:
                        self._retained.append(frame)
                        self._retained_bytes += len(frame)
                        self._outage_deadline = None  # a record written: no outage
                        ok = True
                else:
                    ok = self._send_locked(frame)
                written = True
                if self._pending:
                    self._send_pending()
            except BaseException:
                # KeyboardInterrupt (Ctrl-C), or an exception a signal handler raised,
                # possibly inside a write: see _abandon. (OSErrors of the writes are
                # handled above; this is for what interrupts them.)
                try:
                    if not written:
                        self._abandon(frame)
                finally:
                    self._keep_pending()
                raise
            finally:
                self._depth = 0
                if self._close_after:  # close() came from a signal handler meanwhile
                    self._close_after = False
                    self._close_now()
            return ok
        finally:
            lock.release()

    def _abandon(self, frame: bytes | None) -> None:
        """Something raised out of a write: how much of *frame* reached the listener is
        unknown (Python raises a KeyboardInterrupt right after the system call returns,
        the count of bytes written lost), and a frame cut short must not be followed by
        another on this connection. So end it: close the record pipe (or, without one,
        our half of the socket); the listener reads to its end, drops a cut frame, sends
        its last count and ends its half; forget what it counted. The rest, *frame* among
        it unless it arrived whole, is written again, first, on the next connection: each
        record once, wherever the interrupt fell. Without that count in ABANDON_WAIT (a
        stuck listener, or a second interrupt while it is read) every record not
        acknowledged goes again: some perhaps twice, none lost."""
        sock, wfd = self._sock, self._wfd
        if sock is None:
            return
        again: BaseException | None = None
        try:
            if frame is not None and not any(f is frame for f in self._retained):
                self._retained.append(frame)
                self._retained_bytes += len(frame)
            self._wfd = -1
            # An error here is a listener gone as well: every record not acknowledged
            # then goes again.
            with contextlib.suppress(OSError):
                if wfd >= 0:
                    if _same_file(wfd, self._fd_ids[1]):
                        os.close(wfd)
                else:
                    sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + ABANDON_WAIT
            tail = b""
            ended = False
            while not ended:
                try:
                    left = deadline - time.monotonic()
                    if left <= 0 or not _poll.readable([sock], left):
                        break
                    chunk = sock.recv(65536, socket.MSG_DONTWAIT)
                    ended = not chunk  # the listener's end, after its last count
                    tail += chunk
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    break
                except BaseException as exc:  # a second Ctrl-C: raised once this ends
                    again = exc
            if ended:
                self._ack_part += tail
                with contextlib.suppress(OSError):
                    self._read_acks(sock)
        finally:
            self._disconnect()
        if again is not None:
            raise again

    def _send_pending(self) -> None:
        # Frames that re-entrant calls queued while this thread was writing (depth 1).
        # Each leaves the queue once written: an exception inside its write leaves it
        # there, for _keep_pending.
        pending = self._pending
        while pending:
            while pending:
                self._send_locked(pending[0])
                pending.popleft()
            self._depth = 0
            if not pending:  # nothing queued after the last check
                break
            self._depth = 1

    def _close_now(self) -> None:
        """The close() a signal handler asked for while send() wrote. What the connection
        leaves unacknowledged (the frame send() was writing, if the handler raised before
        it was whole) must not vanish with the closed client: it is written again and
        waited for, or, with the pipeline gone (the handler called stop()), goes to
        stderr, counted."""
        if self._retained and not self.drain(EXIT_DRAIN):
            self.give_up()
        self._disconnect()

    def _keep_pending(self) -> None:
        """An exception is leaving send() (a signal handler that logged, then raised
        SystemExit or KeyboardInterrupt) with frames that re-entrant calls queued: they
        were logged, and used to vanish with the queue. End the connection as _abandon
        does, and keep them after what it leaves for a resend: the next connection (the
        exit drain's, or the next record's) writes them."""
        pending = self._pending
        if not pending:
            return
        try:
            if self._sock is not None:
                self._abandon(None)
        finally:
            while pending:
                f = pending.popleft()
                self._retained.append(f)
                self._retained_bytes += len(f)

    def _send_aside(self, deadline: float) -> bool:
        """drain() or close() from a signal handler that interrupted this thread inside
        send() (``stop()``, ``logging.shutdown()`` or ``flush()`` in a SIGTERM handler):
        the frames its own log calls queued cannot follow a frame that may be half
        written, so they go now on a connection of their own, and are waited for; a
        stop() that follows finds them handled. True if all were acknowledged; what was
        not goes to stderr, counted."""
        if not self._pending:
            return True
        side = IntakeClient(self.address, outage_budget=self.outage_budget,
                            send_timeout=self.send_timeout)
        try:
            while self._pending:
                side.send(self._pending.popleft())
            ok = side.drain(max(0.0, deadline - time.monotonic()))
            if not ok:
                side.give_up()
            return ok
        finally:
            # What the side connection lost is reported to the listener with this
            # client's own losses, on its next connection (worker_lost, in dropped).
            self.lost_total += side.lost_total
            if side._lost:
                if not self._lost:
                    self._lost_first = side._lost_first
                self._lost += side._lost
                self._lost_last = side._lost_last
            side.close()

    def _send_locked(self, frame: bytes) -> bool:
        while True:
            sock = self._sock
            if sock is None:
                if self._holding and time.monotonic() < self._next_try:
                    return self._hold(frame)  # tried a moment ago: do not retry per record
                sock = self._sock = self._connect()
                if sock is None and self._denied:
                    self._lose(frame, time.monotonic())
                    return False
                if sock is None and (self._full or self._no_fds):
                    # No outage to wait out: the listener is there and says so, or this
                    # process has no descriptor for a socket. Hold the record (not the
                    # caller) and try again after FULL_RETRY.
                    now = time.monotonic()
                    self._next_try = now + FULL_RETRY
                    if self._hold(frame):
                        return True
                    self._lose(frame, now)
                    return False
            if sock is not None:
                try:
                    self._write(frame)
                except OSError:
                    # The listener died or was restarted. A partial frame on the old
                    # connection is discarded there; the whole frame goes again on the
                    # next connection, so it is neither lost nor duplicated. The records
                    # written before it and not acknowledged go again first.
                    self._read_acks(sock)
                    self._disconnect()
                else:
                    self._outage_deadline = None
                    self._retained.append(frame)
                    self._retained_bytes += len(frame)
                    if self._retained_bytes >= self._ack_at:
                        self._read_acks_or_wait(sock)
                    return True
            now = time.monotonic()
            if self._outage_deadline is None:
                self._outage_deadline = now + self.outage_budget
            exists = os.path.exists(self.address)
            give_up_at = self._outage_deadline
            if exists:
                self._gone_since = None
            else:
                # No socket file: not a restart (a new listener renames its socket over
                # the old file: see bind), so the pipeline is gone. Told apart after
                # MISSING_FILE_GRACE from when the file was first missed, not from when
                # the outage began (a restart on an address too long for bind's
                # temporary name unlinks the old file, then binds).
                if self._gone_since is None:
                    self._gone_since = now
                give_up_at = min(give_up_at, self._gone_since + MISSING_FILE_GRACE)
            if now >= give_up_at:
                self._next_try = now + RETRY_INTERVAL
                if exists and self._hold(frame):
                    return True
                self._lose(frame, now)
                return False
            time.sleep(min(RETRY_INTERVAL, give_up_at - now))

    def _hold(self, frame: bytes) -> bool:
        """Keep *frame* in memory, to be written first on the next connection: the listener
        is taking longer than the outage budget to come back (a restart on a loaded
        machine), and its socket file is still there, so the pipeline is not gone. False
        (the caller writes it to stderr) past ``RETAIN_MAX`` bytes held."""
        if self._retained_bytes + len(frame) > RETAIN_MAX:
            self._holding = False
            return False
        self._holding = True
        self._retained.append(frame)
        self._retained_bytes += len(frame)
        retrier = self._retrier
        if retrier is None or not retrier.is_alive():
            self._start_retrier()
        return True

    def _start_retrier(self) -> None:
        """A thread that tries to connect while records are held, so that they reach the
        listener when it is back: a process that logs nothing more (an idle worker, one
        waiting on a task) would keep them until its next log call, or lose them with it
        if it is then killed. It ends once they are acknowledged, or given up."""
        t = threading.Thread(target=self._retry_loop, args=(self._pid, self._generation),
                             name="mplog-held-records", daemon=True)
        try:
            t.start()
        except RuntimeError:
            return  # interpreter shutdown (no new threads): the exit drain has them
        self._retrier = t

    def _retry_loop(self, pid: int, generation: int) -> None:
        delay = RETRY_INTERVAL
        #: The connection the held records were written on, and how many they were.
        watch: tuple[socket.socket, int] | None = None
        while True:
            if watch is None:
                time.sleep(max(delay, self._next_try - time.monotonic()))
                delay = min(delay * 2, HELD_RETRY_MAX)
            else:
                time.sleep(RETRY_INTERVAL)
            with self._lock:
                if self._pid != pid or self._generation != generation:
                    return  # a fork's copy, or close()d
                if watch is None:
                    tried = self._retry_held()
                    if tried is False:
                        return
                    if tried is not True:
                        watch = tried
                elif self._held_acknowledged(*watch):
                    return
                elif self._sock is None:
                    watch = None  # that connection died first: connect again

    def _retry_held(self) -> bool | tuple[socket.socket, int]:
        """One try of the retrier (lock held): connect, which writes the held records
        first; then (the connection, how many they were), to be watched until they are
        acknowledged: a listener that accepts and then dies (a restart that fails after
        it bound) must not take them with it. True: try again later. False: nothing more
        to try (given up, or a log call connected meanwhile)."""
        if not self._holding or self._sock is not None or not self._retained:
            return False
        now = time.monotonic()
        if now < self._next_try:
            return True
        held = len(self._retained)
        sock = self._sock = self._connect()
        if sock is not None:
            return (sock, held)
        now = time.monotonic()
        if not self._denied and os.path.exists(self.address):
            self._gone_since = None
            self._next_try = now + (FULL_RETRY if self._full or self._no_fds
                                    else RETRY_INTERVAL)
            return True
        if not self._denied and (self._gone_since is None
                                 or now - self._gone_since < MISSING_FILE_GRACE):
            # No socket file: the pipeline gone, or a restart's moment between unlink
            # and bind (see bind); told apart after MISSING_FILE_GRACE.
            self._gone_since = self._gone_since or now
            return True
        # The pipeline is gone (or refuses this process): nothing will take them. To
        # stderr, counted, as a log call would and as the exit would.
        self._holding = False
        self._gone_since = None
        retained, self._retained = self._retained, deque()
        self._retained_bytes = 0
        for frame in retained:
            self._lose(frame, now)
        return False

    def _held_acknowledged(self, sock: socket.socket, held: int) -> bool:
        """Whether the *held* records written first on *sock* are acknowledged (lock
        held). A connection that ended first is given up here (the records stay kept
        for the next one, and the worker holds again)."""
        if self._sock is not sock:
            # A log call found the connection dead and reconnected, or is holding.
            return not self._holding
        if self._unacked_base >= held:
            return True
        try:
            readable = _poll.readable([sock], 0)
        except (OSError, ValueError):
            readable = [sock]
        if readable:
            alive = self._read_acks(sock)
            if self._unacked_base >= held:
                return True
            if not alive:
                self._disconnect()  # EOF: that listener went before it handled them
                self._holding = True
                self._next_try = time.monotonic() + RETRY_INTERVAL
        return False

    def give_up(self) -> None:
        """At exit, after a drain that failed: every record still held or unacknowledged
        goes to stderr (and is counted), rather than vanishing with the process."""
        with self._lock:
            now = time.monotonic()
            retained, self._retained = self._retained, deque()
            self._retained_bytes = 0
            for frame in retained:
                self._lose(frame, now)

    def _lose(self, frame: bytes, now: float) -> None:
        wall = time.time()
        if not self._lost:
            self._lost_first = wall
        self._lost_last = wall
        self._lost += 1
        self.lost_total += 1
        try:
            if frame[4:5] == b"}":  # a stdlib-wire frame (relay mode): data-only decoder
                from ._unpickle import decode_record as decode_pickled

                d = decode_pickled(frame[4:])
            else:
                d = decode_record(frame[4:])
            text = f"{d['levelname']} {d['name']}: {d['msg']}"
        except ProtocolError as exc:
            text = f"(undecodable record: {exc})"
        if self._denied:
            from ._options import denied_reason

            why = f"cannot connect to the listener at {self.address} ({denied_reason()})"
        elif self._full:
            why = (f"the listener at {self.address} turned this process away (it is out of "
                   "file descriptors)")
        elif self._no_fds:
            why = (f"this process is out of file descriptors (no socket for the listener at "
                   f"{self.address})")
        elif os.path.exists(self.address):
            why = f"listener unreachable at {self.address}"
        else:
            # No socket file: not a restart. The pipeline was stopped, or the process that
            # started it exited (a daemon that double-forked after start(), say).
            why = (f"the pipeline at {self.address} is gone (stopped, or the process that "
                   "started it exited; a daemon calls start() after it detaches)")
        line = f"mplog: {why}; record not delivered: {text}\n"
        try:
            os.write(2, line.encode("utf-8", "backslashreplace"))
        except OSError:
            # No usable stderr: the record is still counted above and reported to the
            # listener once it is back, which is all that is left to do.
            return


def control_request(address: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one control *message* to the listener at *address* and return its reply.

    Raises :class:`MplogError` if the listener cannot be reached or does not answer in
    *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    splitter = FrameSplitter()
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:  # out of file descriptors: stats(), flush(), stop() say so
        raise MplogError(f"no socket to ask the listener at {address}: {exc}") from exc
    with s:
        s.settimeout(max(0.01, timeout))
        try:
            s.connect(address)
            _sigpipe.send_all(s, encode_control(message))
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MplogError(f"listener at {address} did not answer {message['op']!r}")
                s.settimeout(remaining)
                data = s.recv(65536)
                bodies = splitter.feed(data)
                if bodies:
                    return decode_control(bodies[0])
                if not data:
                    raise MplogError(f"listener at {address} closed the control connection")
        except (OSError, ProtocolError) as exc:
            raise MplogError(f"listener at {address} unreachable: {exc}") from exc


def bind(address: str, owner: tuple[int, int] | None = None) -> socket.socket:
    """Bind and listen on the Unix socket *address*, replacing a stale socket file; give
    it to *owner* (uid, gid) if set (``start(worker_user=...)``).

    The new socket is bound under a temporary name beside *address* and renamed over it,
    so that a restarted listener's socket file replaces the dead one's without a moment
    in which there is none: a worker that finds no socket file takes the pipeline for
    gone (stopped), and one looking in that moment used to lose the record it held."""
    if os.path.lexists(address) and not stat.S_ISSOCK(os.lstat(address).st_mode):
        raise OSError(f"{address} exists and is not a socket")
    head, tail = os.path.split(address)
    temporary = os.path.join(head, f".{tail}.{os.getpid()}")
    if len(os.fsencode(temporary)) >= _UNIX_PATH_MAX:
        temporary = address  # no room for a longer name: unlink, then bind
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.lexists(temporary):
            # Without room for the longer name, the dead listener's socket (start()
            # refused a live one); else a leftover of a listener that had this pid.
            os.unlink(temporary)
        old = os.umask(0o077)
        try:
            s.bind(temporary)
        finally:
            os.umask(old)
        try:
            if owner is not None:
                os.chown(temporary, *owner)  # before it is reachable under *address*
            s.listen(1024)
            s.setblocking(False)
            if temporary != address:
                os.rename(temporary, address)  # atomic: the old file, then the new one
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError:
        s.close()
        raise
    if temporary != address:
        _remove_leftovers(head, tail)
    return s


def _remove_leftovers(head: str, tail: str) -> None:
    """Unlink the temporary socket files (``.<tail>.<pid>``) of listeners killed between
    their bind and their rename: a socket file whose process is gone, beside *tail*. A
    name whose pid is alive is another listener's moment between the two; anything that
    is not a socket is not ours, and stays."""
    prefix = f".{tail}."
    try:
        names = [n for n in os.listdir(head or ".") if n.startswith(prefix)]
    except OSError:
        return  # an unreadable directory: nothing we can tidy
    for name in names:
        pid = name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        path = os.path.join(head, name)
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)


def pid_alive(pid: int) -> bool:
    """Whether a process *pid* exists (under any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: sizeof(sun_path) on Linux: a Unix socket address (with its terminating NUL) fits in it.
_UNIX_PATH_MAX = 108

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _still_open(sock: socket.socket) -> bool:
    """True unless the worker closed its end of *sock* (a read there would give EOF)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False


class _Refused(ProtocolError):
    """A connection's hello handed over something other than one record pipe."""


class _Full(Exception):
    """A worker connection turned away: the listener is short of file descriptors."""


def _fd_limit() -> int:
    """This process's soft limit on open file descriptors (read each time: it may change)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def _open_fds() -> int:
    """How many file descriptors this process has open (0 if /proc cannot say)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        return 0


class _Shortage:
    """Worker connections turned away for want of file descriptors, said on stderr when it
    begins and when it ends (a beginning at most once per SHORTAGE_REPORT_INTERVAL),
    however often workers knock meanwhile."""

    def __init__(self) -> None:
        self.turned_away = 0
        self.active = False
        self._said = False  # the beginning of this shortage was said
        self._since = 0  # turned away since the last beginning said
        self._said_at = -SHORTAGE_REPORT_INTERVAL

    def turn_away(self, in_use: int, limit: int, *, count: bool = True) -> None:
        """A worker connection turned away (*count*), or accept() itself failed (not
        *count*: who connects waits in the backlog)."""
        if count:
            self.turned_away += 1
            self._since += 1
        if self.active:
            return
        self.active = True
        now = time.monotonic()
        if now - self._said_at < SHORTAGE_REPORT_INTERVAL:
            return
        self._said, self._said_at, self._since = True, now, int(count)
        say(f"mplog listener: out of file descriptors ({in_use} of {limit} in use, see "
            "`ulimit -n`): new worker connections are turned away until others close, and "
            "their records wait in the workers' memory (up to 16 MiB each). Raise the "
            "limit (the listener takes the hard one) or run fewer workers.")

    def room_again(self) -> None:
        if not self.active:
            return
        self.active = False
        if self._said:
            self._said = False
            say("mplog listener: taking worker connections again"
                + (f" ({self._since} turned away meanwhile)" if self._since else ""))


def _relay_target(listener: QueueListener, handlers: list[logging.Handler]) -> SocketHandler | None:
    """The handler to relay stdlib-wire frames to, if relaying gives every handler what it
    would get otherwise: exactly one handler, a plain ``SocketHandler`` (no filters, no
    overridden hooks) on the stdlib wire, and the listener's own hooks unchanged."""
    from .handlers import QueueListener, SocketHandler

    if len(handlers) != 1 or os.environ.get("MPLOG_RELAY", "1") == "0":
        return None
    h = handlers[0]
    cls = type(listener)
    if (
        isinstance(h, SocketHandler)
        and h._batchable()
        and h.wire == "pickle"
        and cls.handle is QueueListener.handle
        and cls.prepare is QueueListener.prepare
    ):
        return h
    return None


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a Unix socket (SO_PEERCRED), if known."""
    try:
        pid, _, _ = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
    except (OSError, AttributeError, struct.error):
        return None  # not Linux, or not a Unix socket: top shows no pid
    return int(pid)


class _Conn:
    __slots__ = (
        "ack_fresh", "ack_out", "ending", "fresh", "pid", "pipe", "pipe_splitter", "records",
        "ring", "since", "sock", "splitter",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.splitter = FrameSplitter()
        #: Nothing read yet: the first read also takes the record pipe the hello carries.
        self.fresh = True
        #: The read end of the worker's record pipe (-1: none; records come on the socket).
        self.pipe = -1
        self.pipe_splitter = FrameSplitter()
        #: The worker's record ring, if its hello handed one over: its records are there,
        #: and the pipe only wakes us (split by pipe_splitter, as the pipe's would be).
        self.ring: Ring | None = None
        #: Record frames handled from this connection: acknowledged to the worker (so it
        #: can forget them), and shown by ``mplog top`` with who is writing.
        self.records = 0
        #: Acknowledgement bytes not yet taken by the kernel.
        self.ack_out = b""
        #: ack_out ends with a whole acknowledgement nothing of which was sent yet: a later
        #: one (cumulative) replaces it instead of queueing behind it.
        self.ack_fresh = False
        #: The worker ended its records with the socket still open (it gave up this
        #: connection mid-write, IntakeClient._abandon): our half of the socket ends once
        #: the last count is sent.
        self.ending = False
        self.pid = _peer_pid(sock)
        self.since = time.time()


class IntakeServer:
    """The listener's selector loop."""

    def __init__(
        self,
        lsock: socket.socket,
        address: str,
        listener: QueueListener,
        handlers: list[logging.Handler],
        socket_handlers: list[SocketHandler],
        *,
        parent_pid: int,
    ) -> None:
        self.lsock = lsock
        self.address = address
        self.listener = listener
        self.handlers = handlers
        self.socket_handlers = socket_handlers
        self.parent_pid = parent_pid
        self.sel = selectors.DefaultSelector()
        self.conns: dict[socket.socket, _Conn] = {}
        #: Record pipes (read ends), each with the connection that handed it over.
        self.pipes: dict[int, socket.socket] = {}
        #: The connections with a record ring: looked at every turn (see run).
        self.rings: dict[socket.socket, _Conn] = {}
        #: The last look at the rings found records: the next does not wait.
        self._rings_busy = False
        self.received = 0
        self.bad_frames = 0
        self.torn_frames = 0
        self.worker_lost = 0
        self.handler_errors = 0
        #: Records of batches whose handler call raised (counted in dropped).
        self.handler_lost = 0
        self.accepted = 0
        #: The port of ``GET /metrics`` when the listener serves it (``metrics_port=``).
        self.metrics_port: int | None = None
        #: Listeners of this pipeline that ran before this one (the supervisor's restarts).
        self.incarnation = 0
        self._flushes: list[tuple[socket.socket, float, list[int]]] = []
        self._stop_reply: socket.socket | None = None
        self._stop_reason: str | None = None
        self._close_timeout: float | None = None
        #: Pause after a busy turn (see NAP); 0 turns it off.
        self.nap = NAP
        #: Connections with records handled and not yet acknowledged (this turn).
        self._to_ack: dict[socket.socket, _Conn] = {}
        #: Connections whose acknowledgements the kernel had no room for: retried each turn.
        self._acks_waiting: dict[socket.socket, _Conn] = {}
        #: Called before any acknowledgement goes out (the listener publishes its counters
        #: on its StatsBoard there): a record a worker forgets is always in
        #: the counters a supervisor reads after a SIGKILL, so its loss is counted.
        self.before_ack: Callable[[], object] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        #: Relay mode: the one handler is a plain SocketHandler on the stdlib wire, so the
        #: workers are asked for that wire's final frames, forwarded without decoding.
        self.relay: SocketHandler | None = _relay_target(listener, handlers)
        self._mode = MODE_PICKLE if self.relay is not None else MODE_RECORD
        self.sel.register(lsock, selectors.EVENT_READ, "accept")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        #: What the listener had open before its first connection (handlers' files and
        #: sockets, this loop's own): the base of _room_for_worker's count.
        self._base_fds = _open_fds()
        self.shortage = _Shortage()
        #: accept() failed for want of descriptors: not listening until then (monotonic).
        self._accept_again = 0.0

    # -- signals ------------------------------------------------------------------------

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)  # our PR_SET_PDEATHSIG
        # Ctrl-C reaches the whole process group; the main process decides when we stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGTERM:
            self._stop_reason = self._stop_reason or "SIGTERM"
        # SIGUSR1: the parent (or the thread that started us) ended; run() checks getppid.

    # -- main loop ----------------------------------------------------------------------

    def run(self) -> None:
        while self._stop_reason is None:
            timeout = 0.005 if self._flushes else ACK_RETRY if self._acks_waiting else IDLE_TICK
            if self._accept_again:
                left = self._accept_again - time.monotonic()
                if left <= 0:
                    self._accept_again = 0.0
                    self.sel.register(self.lsock, selectors.EVENT_READ, "accept")
                else:
                    timeout = min(timeout, left)
            rings = self.rings
            asleep = False
            if rings:
                if self._rings_busy:
                    timeout = 0
                else:
                    # Say so, then look once more: a worker that wrote before it saw the
                    # flag is found here; one that wrote after rings the bell.
                    asleep = True
                    for conn in rings.values():
                        conn.ring.sleep()  # type: ignore[union-attr]
                    if any(conn.ring.pending() for conn in rings.values()):  # type: ignore[union-attr]
                        timeout = 0
                    else:
                        timeout = min(timeout, RING_TICK)
            events = self.sel.select(timeout)
            if asleep:
                for conn in rings.values():
                    conn.ring.wake()  # type: ignore[union-attr]
            for key, _ in events:
                tag = key.data
                if tag == "accept":
                    self._accept()
                elif tag == "wake":
                    self._drain_wake()
                elif tag == "pipe":
                    self._read_pipe(key.fd)
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]
            if rings:
                self._rings_busy = self._look_at_rings()
            if self._to_ack:
                self._ack_all()
                if self.nap:
                    time.sleep(self.nap)
            for conn in list(self._acks_waiting.values()):
                # Acks the kernel had no room for (a worker that read none for a while):
                # the last one must reach a worker that now waits for it (drain, flush),
                # also when it writes nothing more.
                self._send_acks(conn)
            if os.getppid() != self.parent_pid:
                self._stop_reason = "parent died"
                self._close_timeout = ORPHAN_CLOSE_TIMEOUT
            if self._flushes:
                self._check_flushes()
        self._shutdown()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                continue
        except BlockingIOError:
            return

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    say(f"mplog listener: accept failed: {exc}")
                    return
                # Out of descriptors (other things than workers took them): the listening
                # socket stays readable, so stop looking at it for a moment instead of
                # spinning; who connects waits in the backlog. Keep serving who we have.
                limit = _fd_limit()
                self.shortage.turn_away(limit, limit, count=False)
                self.sel.unregister(self.lsock)
                self._accept_again = time.monotonic() + ACCEPT_PAUSE
                return
            sock.setblocking(False)
            self.conns[sock] = _Conn(sock)
            self.sel.register(sock, selectors.EVENT_READ, "conn")
            self.accepted += 1

    def _fds_in_use(self) -> int:
        # Before Python 3.13 each ring's mmap object keeps a descriptor of its own.
        held = len(self.rings) if sys.version_info < (3, 13) else 0
        return self._base_fds + len(self.conns) + len(self.pipes) + held

    def _room_for_worker(self, taken: int) -> bool:
        """Whether one more worker connection (its socket already counted, *taken* of its
        descriptors received besides) leaves FD_RESERVE descriptors free."""
        return self._fds_in_use() + taken + FD_RESERVE <= _fd_limit()

    def _close_conn(self, sock: socket.socket) -> None:
        self._to_ack.pop(sock, None)  # a closed connection reads no acknowledgement
        self._acks_waiting.pop(sock, None)
        conn = self.conns.pop(sock, None)
        if conn is not None:
            self.sel.unregister(sock)
            self._close_pipe(conn)
        sock.close()

    def _close_pipe(self, conn: _Conn) -> None:
        fd, conn.pipe = conn.pipe, -1
        ring, conn.ring = conn.ring, None
        if ring is not None:
            del self.rings[conn.sock]
            ring.close()
        if fd >= 0:
            del self.pipes[fd]
            self.sel.unregister(fd)
            os.close(fd)

    def _first_read(self, sock: socket.socket, conn: _Conn) -> bytes:
        """The connection's first bytes, and the record pipe its hello hands over, if any
        (SCM_RIGHTS). Anything but one pipe closes the connection: a worker's fds are
        data from another process, and only a pipe is read from here."""
        flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
        data, ancillary, msg_flags, _ = sock.recvmsg(READ_SIZE, socket.CMSG_SPACE(8), flags)
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        conn.fresh = not data
        if (msg_flags & socket.MSG_CTRUNC and not fds) or (
                (fds or data.startswith(HELLO)) and not self._room_for_worker(len(fds))):
            # A worker's hello, and no descriptor to spare for it (the kernel dropped the
            # record pipe it handed over, or taking it would eat into FD_RESERVE).
            for fd in fds:
                os.close(fd)
            self.shortage.turn_away(self._fds_in_use(), _fd_limit())
            with contextlib.suppress(OSError):
                sock.send(GREETING + MODE_FULL, socket.MSG_DONTWAIT)
            raise _Full()
        if data.startswith(HELLO):
            self.shortage.room_again()
        if not fds and not msg_flags & socket.MSG_CTRUNC:
            return data
        problem = None
        ring = None
        if len(fds) > 2 or msg_flags & socket.MSG_CTRUNC:
            problem = "sent more than two file descriptors"
        else:
            try:
                if not stat.S_ISFIFO(os.fstat(fds[0]).st_mode):
                    problem = "sent a file descriptor that is not a pipe"
                else:
                    os.set_blocking(fds[0], False)
                    if len(fds) == 2:
                        ring = Ring.open(fds[1])
            except OSError as exc:
                problem = f"sent an unusable file descriptor ({exc})"
            except ProtocolError as exc:
                problem = str(exc)
        if len(fds) == 2:
            os.close(fds.pop())  # the ring's memfd: its mapping is all we keep
        if problem is not None:
            for fd in fds:
                os.close(fd)
            raise _Refused(problem)
        conn.pipe = fds[0]
        self.pipes[conn.pipe] = sock
        self.sel.register(conn.pipe, selectors.EVENT_READ, "pipe")
        if ring is not None:
            conn.ring = ring
            self.rings[sock] = conn
        return data

    def _read(self, sock: socket.socket, drain: bool = False) -> None:
        conn = self.conns.get(sock)
        if conn is None:
            return
        while True:
            try:
                data = self._first_read(sock, conn) if conn.fresh else sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except _Refused as exc:
                self._bad(sock, exc)
                return
            except _Full:
                self._close_conn(sock)  # the worker holds its records and comes back
                return
            except OSError:
                data = b""
            if not self._take(sock, conn, conn.splitter, data):
                return
            if not data:
                if conn.pipe >= 0:
                    # The worker closed its connection (or exited): everything it wrote
                    # into its pipe before that is there to read. A frame it began and
                    # never finished is counted as torn, as on the socket, also when no
                    # EOF comes from the pipe (a child of the worker still holds it).
                    self._read_pipe(conn.pipe, drain=True)
                    if sock in self.conns and conn.pipe >= 0:
                        self._take(sock, conn, conn.pipe_splitter, b"")
                elif sock in self.conns:
                    # Records on the socket: a worker that only ended its half (it gave
                    # the connection up mid-write) reads the last count.
                    self._last_count(sock, conn)
                self._close_conn(sock)
                return
            if not drain and len(data) < READ_SIZE:
                return

    def _read_pipe(self, fd: int, drain: bool = False) -> None:
        sock = self.pipes.get(fd)
        conn = self.conns.get(sock) if sock is not None else None
        if sock is None or conn is None:
            return
        if conn.ring is not None:
            self._read_ring(sock, conn)
            return
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data and _still_open(sock):
                # The pipe ended and the socket did not: the worker gave this connection
                # up mid-write (IntakeClient._abandon) and writes a frame it cut short
                # again, whole, on its next one. Not torn, and not lost.
                conn.pipe_splitter = FrameSplitter()
            if not self._take(sock, conn, conn.pipe_splitter, data):
                return
            if not data:
                # The worker closed it: it exited (its socket's EOF follows), or it gave
                # this connection up mid-write and waits for the last count.
                self._close_pipe(conn)
                conn.ending = True  # our half ends once this count is sent (_send_acks)
                self._last_count(sock, conn)
                return
            if not drain and len(data) < READ_SIZE:
                return

    def _read_ring(self, sock: socket.socket, conn: _Conn) -> None:
        """A ring's pipe is readable (wake-ups, or its end): take what the ring holds."""
        ended = False
        while True:
            try:
                if not os.read(conn.pipe, 4096):  # wake-up bytes: nothing in them
                    ended = True
                    break
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                ended = True
                break
        if not self._take_ring(sock, conn) or not ended:
            return
        # The pipe ended: as in _read_pipe, with what the ring held before it taken.
        if _still_open(sock):
            conn.pipe_splitter = FrameSplitter()  # a frame given up mid-write goes again
        if not self._take(sock, conn, conn.pipe_splitter, b""):
            return
        self._close_pipe(conn)
        conn.ending = True
        self._last_count(sock, conn)

    def _take_ring(self, sock: socket.socket, conn: _Conn) -> bool:
        """Handle what *conn*'s ring holds. False if the connection was closed (a ring
        position the worker could not have written)."""
        ring = conn.ring
        assert ring is not None
        while True:
            try:
                data = ring.take(READ_SIZE)
            except ProtocolError as exc:
                self._bad(sock, exc)
                return False
            if not data:
                break
            if not self._take(sock, conn, conn.pipe_splitter, data):
                return False
        if ring.room_wanted():
            self._to_ack[sock] = conn  # the worker polls its socket for this
        return True

    def _look_at_rings(self) -> bool:
        """Take what every ring holds; True if any held something."""
        busy = False
        for sock, conn in list(self.rings.items()):
            ring = conn.ring
            if ring is not None and ring.pending() and sock in self.conns:
                busy = True
                self._take_ring(sock, conn)
        return busy

    def _take(self, sock: socket.socket, conn: _Conn, splitter: FrameSplitter, data: bytes) -> bool:
        """Split and handle *data*, read from *sock*'s connection (its socket or its
        pipe: each has its own *splitter*). False if the connection was closed."""
        try:
            bodies = splitter.feed_frames(data) if self.relay is not None else splitter.feed(data)
        except ProtocolError as exc:
            if not data:
                # The end of a stream inside a frame: the worker died mid-write, or gave
                # the frame up (IntakeClient._abandon). The caller ends the connection.
                self.torn_frames += 1
                return True
            self.bad_frames += 1
            say(f"mplog listener: closing a connection: {exc}")
            self._close_conn(sock)
            return False
        if bodies:
            before = conn.records
            if self.relay is not None:
                if not self._relay_frames(sock, conn, bodies):
                    return False
            elif not self._process(sock, bodies):
                return False
            if conn.records != before:
                self._to_ack[sock] = conn
        return True

    def _ack_all(self) -> None:
        """Acknowledge what this turn handled, once the counters that include it are
        published (see ``before_ack``)."""
        if self.before_ack is not None:
            self.before_ack()
        conns, self._to_ack = self._to_ack, {}
        for conn in conns.values():
            self._ack(conn)

    def _ack(self, conn: _Conn) -> None:
        """Tell the worker how many of its records are handled (cumulative, 8 bytes), so
        it can forget them: until then it keeps them, to write them again to the next
        listener if this one dies before handling them. Never blocks: what the kernel does
        not take now (a worker that has not read its acks for a while) is sent when it
        does, from run(), the latest count replacing an unsent older one."""
        ack = ACK.pack(conn.records)
        conn.ack_out = (conn.ack_out[: -ACK.size] if conn.ack_fresh else conn.ack_out) + ack
        conn.ack_fresh = True
        self._send_acks(conn)

    def _send_acks(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.ack_out, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._acks_waiting.pop(conn.sock, None)
            return  # the worker is gone; its EOF is read next
        if n:
            conn.ack_out = conn.ack_out[n:]
            # A last ack the kernel took part of must go out whole as it is (the worker
            # reads 8-byte units); one it took nothing of is still replaceable.
            conn.ack_fresh = conn.ack_fresh and len(conn.ack_out) >= ACK.size
        if conn.ack_out:
            self._acks_waiting[conn.sock] = conn  # retried each turn until taken
        else:
            self._acks_waiting.pop(conn.sock, None)
            if conn.ending:
                self._end(conn)

    def _last_count(self, sock: socket.socket, conn: _Conn) -> None:
        """Acknowledge now everything handled from *conn*, whose records have ended."""
        self._to_ack.pop(sock, None)
        if self.before_ack is not None:
            self.before_ack()  # the counters that include them, published first
        self._ack(conn)

    @staticmethod
    def _end(conn: _Conn) -> None:
        """End our half of the socket: the worker reads the last count, then EOF."""
        with contextlib.suppress(OSError):  # the worker is gone: its EOF is read next
            conn.sock.shutdown(socket.SHUT_WR)

    def _relay_frames(self, sock: socket.socket, conn: _Conn, frames: list[bytes]) -> bool:
        """Relay mode: forward the stdlib-wire frames of one read as they are; anything
        else (a compact record written before the greeting was read, a control message)
        goes the decoding way, in order. False if the connection was closed."""
        if all(f[4] == 0x7D for f in frames):  # b"}": every frame a pickled record dict
            self._relay_batch(conn, frames)
            return True
        run: list[bytes] = []
        for f in frames:
            if f[4] == 0x7D:
                run.append(f)
                continue
            if run:
                self._relay_batch(conn, run)
                run = []
            if not self._process(sock, [f[4:]]):
                return False
        if run:
            self._relay_batch(conn, run)
        return True

    def _relay_batch(self, conn: _Conn, frames: list[bytes]) -> None:
        self.received += len(frames)
        self._to_handlers(self.listener.relay_batch, frames)
        conn.records += len(frames)

    def _to_handlers(self, fn: Callable[[Any], None], batch: Any) -> None:
        try:
            fn(batch)
        except Exception as exc:  # a handler bug must not end the listener
            self.handler_errors += 1
            # Acknowledged to the worker all the same (it cannot be handled again): counted
            # as dropped, the whole batch (an upper bound: some may have been buffered).
            self.handler_lost += len(batch)
            self.listener.failures.report(self.listener, exc,
                                          f"failed on a batch of {len(batch)} records",
                                          " (counted in dropped)")

    def _process(self, sock: socket.socket, bodies: list[bytes]) -> bool:
        """Handle the frames of one read; False if the connection was closed."""
        if any(b[:1] == b"}" for b in bodies):
            # Stdlib-wire frames to a listener that does not relay them (written to a
            # listener that did, and resent here): decoded the data-only way.
            return self._process_mixed(sock, bodies)
        records = [b for b in bodies if is_record(b)]
        if len(records) != len(bodies):
            for body in bodies:
                if not is_record(body):
                    try:
                        msg = decode_control(body)
                    except ProtocolError as exc:
                        return self._bad(sock, exc)
                    self._control(sock, msg)
        if records:
            batch, error = decode_records(records)
            self._handle_batch(batch)
            conn = self.conns.get(sock)
            if conn is not None:
                conn.records += len(batch)
            if error is not None:
                return self._bad(sock, error)
        return sock in self.conns

    def _process_mixed(self, sock: socket.socket, bodies: list[bytes]) -> bool:
        from ._unpickle import decode_record as decode_pickled

        for body in bodies:
            if body[:1] != b"}":
                if not self._process(sock, [body]):
                    return False
                continue
            try:
                d = decode_pickled(body)
            except ProtocolError as exc:
                return self._bad(sock, exc)
            self._handle_batch([d])
            conn = self.conns.get(sock)
            if conn is not None:
                conn.records += 1
        return sock in self.conns

    def _bad(self, sock: socket.socket, exc: Exception) -> bool:
        self.bad_frames += 1
        say(f"mplog listener: closing a connection that sent a bad frame: {exc}")
        self._close_conn(sock)
        return False

    def _handle_batch(self, batch: list[dict[str, Any]]) -> None:
        self.received += len(batch)
        self._to_handlers(self.listener.handle_batch, batch)

    # -- control --------------------------------------------------------------------------

    def _reply(self, sock: socket.socket, message: dict[str, Any]) -> None:
        message.setdefault("op", "reply")
        try:
            sock.setblocking(True)
            sock.settimeout(5.0)
            sock.sendall(encode_control(message))
            sock.setblocking(False)
        except OSError:
            self._close_conn(sock)  # the asker is gone; nothing to answer

    def _control(self, sock: socket.socket, msg: dict[str, Any]) -> None:
        try:
            check_control(msg)
        except RemoteProtocolError as exc:
            self._bad(sock, exc)
            return
        op = msg.get("op")
        if op == "stats":
            self._reply(sock, {"stats": self.stats()})
        elif op == "flush":
            self.drain_all()
            for h in self.handlers:
                if h not in self.socket_handlers:
                    try:
                        h.flush()
                    except Exception as exc:  # a full disk under a FileHandler: say, go on
                        self.listener.failures.failed(h, exc, record=False,
                                                      what="failed to flush")
            timeout = msg.get("timeout", 5.0)
            marks = [h.flush_mark() for h in self.socket_handlers]
            self._flushes.append((sock, time.monotonic() + timeout, marks))
            self._check_flushes()
        elif op == "stop":
            self._stop_reply = sock
            self._stop_reason = "stop requested"
            self._close_timeout = msg.get("timeout", 5.0)
        elif op == "top":
            self._reply(sock, self.detail(sock))
        elif op == "lost":
            self._worker_lost(msg)
        elif op == "hello":
            conn = self.conns.get(sock)
            if conn is not None and not conn.ack_out and not conn.records:
                conn.ack_out = GREETING + self._mode  # first on the acknowledgement stream
                conn.ack_fresh = False
                self._send_acks(conn)
        else:  # check_control lets only known ops through
            raise AssertionError(f"unchecked control op {op!r}")

    def _worker_lost(self, msg: dict[str, Any]) -> None:
        count = msg["count"]
        self.worker_lost += count
        pid = msg["pid"]
        first, last = iso_local(msg["first"]), iso_local(msg["last"])
        record = logging.LogRecord(
            "mplog", logging.WARNING, __file__, 0,
            "mplog: process %s could not reach the listener and wrote %d records to its "
            "stderr instead, between %s and %s",
            (pid, count, first, last), None, func="worker_lost",
        )
        record.mplog_dropped = count
        self.received += 1
        self.listener.handle(make_record(record.__dict__))

    def _check_flushes(self) -> None:
        now = time.monotonic()
        still = []
        for sock, deadline, marks in self._flushes:
            done = all(h.flushed(m) for h, m in zip(self.socket_handlers, marks, strict=True))
            if done or now >= deadline:
                self._reply(sock, {"ok": done})
            else:
                still.append((sock, deadline, marks))
        self._flushes = still

    def drain_all(self) -> None:
        """Read and handle everything the workers have written so far."""
        for sock, conn in list(self.conns.items()):
            if conn.pipe >= 0:
                self._read_pipe(conn.pipe, drain=True)
            self._read(sock, drain=True)
        if self._to_ack:
            self._ack_all()

    def counters(self) -> dict[str, Any]:
        """The record counters, without the process figures (cheap: called per turn)."""
        out: dict[str, Any] = {
            "received": self.received,
            "handled": self.listener.handled,
            "sent": 0,
            "buffered": 0,
            "buffered_bytes": 0,
            "dropped": (self.worker_lost + self.torn_frames + self.handler_lost
                        + self.listener.failures.lost),
            "reconnects": 0,
            "connected": 0,
            "drop_reports": 0,
            "spooled": 0,
            "spool_bytes": 0,
            "spool_damaged": 0,
            "too_large": 0,
            "sender_restarts": 0,
            "poisoned": 0,
            "worker_lost": self.worker_lost,
            "torn_frames": self.torn_frames,
            "bad_frames": self.bad_frames,
            "turned_away": self.shortage.turned_away,
            "handler_errors": self.handler_errors + self.listener.errors,
            "connections": len(self.conns),
            "restarts": self.incarnation,
            "pid": os.getpid(),
        }
        last: tuple[float, str] | None = None
        for h in self.socket_handlers:
            for k, v in h.stats(locked=False).items():
                out[k] = out.get(k, 0) + v
            error, at = h.last_error()
            if error is not None and at is not None and (last is None or at > last[0]):
                last = (at, error)
        out["last_error"] = last[1] if last else None
        out["last_error_at"] = last[0] if last else None
        return out

    def stats(self) -> dict[str, Any]:
        """:meth:`counters`, plus the listener's own figures (port, RSS, CPU)."""
        out = self.counters()
        if self.metrics_port is not None:
            out["metrics_port"] = self.metrics_port
        import psutil  # here, not at the top: a worker's import of mplog needs no psutil

        p = psutil.Process()
        with p.oneshot():
            out["listener_rss"] = p.memory_info().rss
            cpu = p.cpu_times()
            out["listener_cpu"] = cpu.user + cpu.system
        return out

    def detail(self, asker: socket.socket | None = None) -> dict[str, Any]:
        """What ``mplog top`` shows: the stats, each worker connection (pid, records read
        so far) and each handler (for socket handlers: connection state, buffer, the next
        retry while backing off, the last error). *asker* (the control connection) is
        left out of the connections."""
        clients = [
            {"pid": c.pid, "records": c.records, "since": c.since}
            for s, c in self.conns.items()
            if s is not asker
        ]
        handlers: list[dict[str, Any]] = []
        for h in self.handlers:
            info: dict[str, Any] = {"type": type(h).__name__}
            if h in self.socket_handlers:
                sh: Any = h
                port = sh.port
                info["target"] = f"{sh.host}:{port}" if port is not None else str(sh.host)
                info["wire"] = getattr(sh, "wire", None)
                info.update(sh.stats())
                info["retry_time"] = sh.retryTime
                info["last_error"] = sh._sender.last_error
                info["buffer_records"] = sh._sender.buffer.max_records
                info["buffer_bytes"] = sh._sender.buffer.max_bytes
            else:
                target = getattr(h, "baseFilename", None)
                if target is not None:
                    info["target"] = str(target)
            handlers.append(info)
        return {"stats": self.stats(), "clients": clients, "handlers": handlers,
                "time": time.time()}

    def _shutdown(self) -> None:
        if not self._accept_again:  # else not registered (accept paused, see _accept)
            self.sel.unregister(self.lsock)
        self.lsock.close()
        pathlib.Path(self.address).unlink(missing_ok=True)
        self.drain_all()
        timeout = self._close_timeout if self._close_timeout is not None else 5.0
        for sh in self.socket_handlers:
            sh.close_timeout = min(sh.close_timeout, timeout)
        self.listener.stop()
        for h in self.handlers:
            try:
                h.close()
            except Exception as exc:
                self.listener.failures.failed(h, exc, record=False, what="failed to close")
        for sock, _, _ in self._flushes:
            self._reply(sock, {"ok": False})
        if self._stop_reply is not None:
            self._reply(self._stop_reply, {"stats": self.stats()})
        for sock in list(self.conns):
            self._close_conn(sock)
