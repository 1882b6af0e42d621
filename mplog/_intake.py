"""IO: the intake, both ends: the worker-side client, the control client, and the
listener's selector server.

Rules this module keeps (client):

- One Unix stream connection per process, opened lazily, written with one ``sendall`` per
  record under a per-connection lock, before ``emit()`` returns: nothing waits in the
  worker, so ``os._exit`` or SIGKILL right after a log call loses nothing.
- Fork safety: ``os.register_at_fork`` gives every child fresh locks and no inherited
  connection (a child never shares a socket, or a half-written frame, with its parent).
- A listener that cannot be reached (being restarted) is retried for a bounded time per
  outage, not per record; after that, records go to stderr with a clear prefix and are
  counted, and the count is reported to the listener once it is back. Nothing here ever
  raises into application code or blocks forever.

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

import logging
import os
import pathlib
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ._errors import MplogError, ProtocolError
from ._framing import FrameSplitter
from ._record import (
    decode_control,
    decode_record,
    decode_records,
    encode_control,
    is_record,
    make_record,
)

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
#: Bytes read from a worker connection per ``recv``: big enough for hundreds of records.
READ_SIZE = 256 * 1024
#: Server loop wake-up period when idle: bounds how late a dead parent is noticed.
IDLE_TICK = 0.25
#: Seconds the handlers get to deliver what they hold when the parent died.
ORPHAN_CLOSE_TIMEOUT = 1.0

_clients: weakref.WeakSet[IntakeClient] = weakref.WeakSet()
_fork_hook_registered = False
_registry_lock = threading.Lock()


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
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid = os.getpid()
        self._outage_deadline: float | None = None
        self._lost = 0
        self._lost_first = 0.0
        self._lost_last = 0.0
        #: Records this process could not hand to the listener (written to stderr instead).
        self.lost_total = 0
        with _registry_lock:
            _clients.add(self)
            if not _fork_hook_registered:
                os.register_at_fork(after_in_child=_after_fork_in_child)
                _fork_hook_registered = True

    def _reset_after_fork(self) -> None:
        # The parent's lock may have been held by a thread that does not exist here, and
        # the parent's socket must stay the parent's: close only our copy of the fd.
        self._lock = threading.Lock()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._pid = os.getpid()
        self._outage_deadline = None
        self._lost = 0

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _connect(self) -> socket.socket | None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Room for bursts: a worker blocks (and pays for the context switches) only
            # when the listener is this far behind.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            s.settimeout(self.send_timeout)
            s.connect(self.address)
        except OSError:
            s.close()
            return None
        if self._lost:
            report = encode_control(
                {"op": "lost", "count": self._lost, "first": self._lost_first,
                 "last": self._lost_last, "pid": os.getpid()}
            )
            try:
                s.sendall(report)
            except OSError:
                s.close()
                return None
            self._lost = 0
        return s

    def send(self, frame: bytes) -> bool:
        """Write *frame* to the listener. Return False if it had to be written to stderr."""
        if self._pid != os.getpid():  # forked by something that bypassed at-fork hooks
            self._reset_after_fork()
        with self._lock:
            while True:
                sock = self._sock
                if sock is None:
                    sock = self._sock = self._connect()
                if sock is not None:
                    try:
                        sock.sendall(frame)
                    except OSError:
                        # The listener died or was restarted. A partial frame on the old
                        # connection is discarded there; the whole frame goes again on the
                        # next connection, so it is neither lost nor duplicated.
                        self._sock = None
                        sock.close()
                    else:
                        self._outage_deadline = None
                        return True
                now = time.monotonic()
                if self._outage_deadline is None:
                    self._outage_deadline = now + self.outage_budget
                if now >= self._outage_deadline:
                    self._lose(frame, now)
                    return False
                time.sleep(min(RETRY_INTERVAL, self._outage_deadline - now))

    def _lose(self, frame: bytes, now: float) -> None:
        wall = time.time()
        if not self._lost:
            self._lost_first = wall
        self._lost_last = wall
        self._lost += 1
        self.lost_total += 1
        try:
            d = decode_record(frame[4:])
            text = f"{d['levelname']} {d['name']}: {d['msg']}"
        except ProtocolError as exc:
            text = f"(undecodable record: {exc})"
        line = f"mplog: listener unreachable at {self.address}; record not delivered: {text}\n"
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
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(max(0.01, timeout))
        try:
            s.connect(address)
            s.sendall(encode_control(message))
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


def bind(address: str) -> socket.socket:
    """Bind and listen on the Unix socket *address*, replacing a stale socket file."""
    if os.path.lexists(address):
        if not stat.S_ISSOCK(os.lstat(address).st_mode):
            raise OSError(f"{address} exists and is not a socket")
        os.unlink(address)  # a dead listener's socket; start() refused a live one
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o077)
        try:
            s.bind(address)
        finally:
            os.umask(old)
        s.listen(1024)
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


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
    __slots__ = ("pid", "records", "since", "sock", "splitter")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.splitter = FrameSplitter()
        #: For ``mplog top``: who is writing, and how much (counted per read, not per record).
        self.pid = _peer_pid(sock)
        self.records = 0
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
        self.received = 0
        self.bad_frames = 0
        self.torn_frames = 0
        self.worker_lost = 0
        self.handler_errors = 0
        self.accepted = 0
        #: The port of ``GET /metrics`` when the listener serves it (``metrics_port=``).
        self.metrics_port: int | None = None
        #: Listeners of this pipeline that ran before this one (the supervisor's restarts).
        self.incarnation = 0
        self._flushes: list[tuple[socket.socket, float, list[int]]] = []
        self._stop_reply: socket.socket | None = None
        self._stop_reason: str | None = None
        self._close_timeout: float | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(lsock, selectors.EVENT_READ, "accept")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")

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
            timeout = 0.005 if self._flushes else IDLE_TICK
            for key, _ in self.sel.select(timeout):
                tag = key.data
                if tag == "accept":
                    self._accept()
                elif tag == "wake":
                    self._drain_wake()
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]
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
            except OSError as exc:  # EMFILE and friends: keep serving who we have
                sys.stderr.write(f"mplog listener: accept failed: {exc}\n")
                return
            sock.setblocking(False)
            self.conns[sock] = _Conn(sock)
            self.sel.register(sock, selectors.EVENT_READ, "conn")
            self.accepted += 1

    def _close_conn(self, sock: socket.socket) -> None:
        if self.conns.pop(sock, None) is not None:
            self.sel.unregister(sock)
        sock.close()

    def _read(self, sock: socket.socket, drain: bool = False) -> None:
        conn = self.conns.get(sock)
        if conn is None:
            return
        while True:
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            try:
                bodies = conn.splitter.feed(data)
            except ProtocolError as exc:
                if data:
                    self.bad_frames += 1
                    sys.stderr.write(f"mplog listener: closing a connection: {exc}\n")
                else:
                    self.torn_frames += 1
                self._close_conn(sock)
                return
            if bodies and not self._process(sock, bodies):
                return
            if not data:
                self._close_conn(sock)
                return
            if not drain and len(data) < READ_SIZE:
                return

    def _process(self, sock: socket.socket, bodies: list[bytes]) -> bool:
        """Handle the frames of one read; False if the connection was closed."""
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
            conn = self.conns.get(sock)
            if conn is not None:
                conn.records += len(records)
            batch, error = decode_records(records)
            self._handle_batch(batch)
            if error is not None:
                return self._bad(sock, error)
        return sock in self.conns

    def _bad(self, sock: socket.socket, exc: Exception) -> bool:
        self.bad_frames += 1
        sys.stderr.write(f"mplog listener: closing a connection that sent a bad frame: {exc}\n")
        self._close_conn(sock)
        return False

    def _handle_batch(self, batch: list[dict[str, Any]]) -> None:
        self.received += len(batch)
        try:
            self.listener.handle_batch(batch)
        except Exception as exc:  # a handler bug must not end the listener
            self.handler_errors += 1
            sys.stderr.write(f"mplog listener: handler failed: {type(exc).__name__}: {exc}\n")

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
        op = msg.get("op")
        if op == "stats":
            self._reply(sock, {"stats": self.stats()})
        elif op == "flush":
            self.drain_all()
            for h in self.handlers:
                if h not in self.socket_handlers:
                    h.flush()
            timeout = float(msg.get("timeout", 5.0))
            marks = [h.flush_mark() for h in self.socket_handlers]
            self._flushes.append((sock, time.monotonic() + timeout, marks))
            self._check_flushes()
        elif op == "stop":
            self._stop_reply = sock
            self._stop_reason = "stop requested"
            self._close_timeout = float(msg.get("timeout", 5.0))
        elif op == "top":
            self._reply(sock, self.detail(sock))
        elif op == "lost":
            self._worker_lost(msg)
        else:
            self._reply(sock, {"error": f"unknown control op {op!r}"})

    def _worker_lost(self, msg: dict[str, Any]) -> None:
        count = int(msg.get("count", 0))
        self.worker_lost += count
        pid = msg.get("pid")
        first = time.strftime("%H:%M:%S", time.localtime(float(msg.get("first", 0))))
        last = time.strftime("%H:%M:%S", time.localtime(float(msg.get("last", 0))))
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
        for sock in list(self.conns):
            self._read(sock, drain=True)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "received": self.received,
            "handled": self.listener.handled,
            "sent": 0,
            "buffered": 0,
            "buffered_bytes": 0,
            "dropped": self.worker_lost + self.torn_frames,
            "reconnects": 0,
            "connected": 0,
            "drop_reports": 0,
            "spooled": 0,
            "spool_bytes": 0,
            "spool_damaged": 0,
            "worker_lost": self.worker_lost,
            "torn_frames": self.torn_frames,
            "bad_frames": self.bad_frames,
            "handler_errors": self.handler_errors + self.listener.errors,
            "connections": len(self.conns),
            "restarts": self.incarnation,
            "pid": os.getpid(),
        }
        for h in self.socket_handlers:
            for k, v in h.stats().items():
                out[k] += v
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
                self.handler_errors += 1
                sys.stderr.write(f"mplog listener: closing a handler failed: {exc}\n")
        for sock, _, _ in self._flushes:
            self._reply(sock, {"ok": False})
        if self._stop_reply is not None:
            self._reply(self._stop_reply, {"stats": self.stats()})
        for sock in list(self.conns):
            self._close_conn(sock)
