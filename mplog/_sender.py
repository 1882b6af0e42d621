"""IO: the one connection of a socket handler, owned by one sender thread.

Rules this module keeps:

- ``submit()`` (called from ``emit``) only appends to the in-order buffer; the sender thread
  alone connects, writes, detects a closed peer and keeps the back-off timer. Retrying
  happens on that timer, whether or not new records arrive.
- Writes are coalesced (many frames per ``send``), and partial sends are tracked to the
  byte, so a frame counts as sent only once the kernel took all of it; a frame cut by a
  broken connection goes again, whole, on the next one.
- Every drop is counted by the buffer; once connected, the first thing written is a
  WARNING record saying how many records were dropped and between which times.
- All clocks are ``time.monotonic`` for scheduling; wall-clock time only labels drops.
"""

from __future__ import annotations

import logging
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from ._backoff import Backoff
from ._buffer import DropReport, FrameBuffer
from ._errors import ProtocolError
from ._wires import AckedWire, Session

#: Seconds a connection has to complete an acknowledged wire's handshake.
HANDSHAKE_TIMEOUT = 5.0

__all__ = ["Sender"]

#: Most bytes handed to one ``send`` call: large enough to amortize the syscall over
#: hundreds of records, small enough to keep a slow receiver from pinning much memory.
BATCH_BYTES = 256 * 1024
#: How often an idle connection is checked for a peer that closed it.
IDLE_PROBE = 0.5
#: A ``send`` that makes no progress for this long is retried (the connection is kept:
#: a slow receiver is not a dead one); used so ``close()`` can always give up on time.
SEND_SLICE = 0.5


def _set_keepalive(sock: socket.socket) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        opt = getattr(socket, name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer_closed(sock: socket.socket) -> bool:
    """True if the peer has closed the connection (EOF or error pending)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        data = sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True
    return data == b""


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            continue
    except BlockingIOError:
        return


class Sender:
    """The connection, buffer and back-off timer behind one socket handler.

    *connect* makes a new connected socket or raises ``OSError``; *backoff* returns the
    current policy (read each time, so ``retryStart`` and friends can be changed on a live
    handler, as with the stdlib); *drop_frame* encodes the WARNING record for a report.
    """

    def __init__(
        self,
        name: str,
        buffer: FrameBuffer,
        connect: Callable[[], socket.socket],
        backoff: Callable[[], Backoff],
        drop_frame: Callable[[DropReport], bytes],
        *,
        block_timeout: float = 5.0,
        rng: random.Random | None = None,
        acked: AckedWire | None = None,
    ) -> None:
        self.name = name
        self._acked = acked
        self._session: Session | None = None
        # Acknowledged wires: what is on the wire and not yet acknowledged, in order;
        # True marks a drop-report frame (not in the buffer), False a buffered record.
        self._inflight: deque[bool] = deque()
        # Made by start(), so a handler that is only built (e.g. to be shipped to the
        # listener process) holds no socket.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._selecting = False
        self._report_inflight: DropReport | None = None
        self.buffer = buffer
        self._connect_fn = connect
        self._backoff = backoff
        self._drop_frame = drop_frame
        self.block_timeout = block_timeout
        self._rng = rng or random.Random()
        self._cond = threading.Condition(threading.Lock())
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._close_deadline = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self._had_trouble = False
        self._sending = False
        #: Wall-clock time of the next connection attempt while backing off, else None.
        self.retry_time: float | None = None
        self.sent = 0
        self.reconnects = 0
        self.reports_sent = 0
        self.last_error: str | None = None

    # -- called from emit() and the listener ------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self._closing:
                return
            if self._acked is not None:
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
            self._thread = threading.Thread(
                target=self._run, name=f"mplog-sender[{self.name}]", daemon=True
            )
            self._thread.start()

    def submit(self, frame: bytes) -> None:
        with self._cond:
            if self.buffer.push(frame, time.time()):
                self._cond.notify_all()
                self._wake()
                return
            if self.buffer.overflow != "block":
                return  # dropped and counted by the buffer
            deadline = time.monotonic() + self.block_timeout
            while not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                if self.buffer.push(frame, time.time()):
                    self._cond.notify_all()
                    return
            self.buffer.drop(time.time())

    def submit_many(self, frames: list[bytes]) -> None:
        """``submit`` each frame, taking the lock once (``block`` falls back to one by one)."""
        if self.buffer.overflow == "block":
            for f in frames:
                self.submit(f)
            return
        with self._cond:
            now = time.time()
            push = self.buffer.push
            for f in frames:
                push(f, now)
            self._cond.notify_all()
            self._wake()

    def _wake(self) -> None:
        # Called with the lock held: rouse the sender from select() (acknowledged wires).
        if self._selecting and self._wake_w is not None:
            self._selecting = False
            try:
                self._wake_w.send(b"x", socket.MSG_DONTWAIT)
            except BlockingIOError:
                return  # a wake-up is already pending

    def idle(self) -> bool:
        """True when nothing is buffered or being written."""
        with self._cond:
            return not self.buffer and not self._sending

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.buffer or self._sending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self, timeout: float) -> None:
        """Deliver what is buffered within *timeout*, then stop; count what is left."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._close_deadline = time.monotonic() + timeout
                if self.buffer and self._sock is None:
                    self._retry_at = min(self._retry_at, time.monotonic())
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout + 2 * SEND_SLICE)
            if thread.is_alive():
                self.last_error = "sender thread did not stop in time"
        with self._cond:
            self.buffer.clear(time.time())
            sock, self._sock = self._sock, None
            self._cond.notify_all()
        if sock is not None:
            sock.close()
        for w in (self._wake_r, self._wake_w):
            if w is not None:
                w.close()

    # -- the sender thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                action = self._next_action()
            if action == "exit":
                return
            if action == "connect":
                self._connect()
            elif action == "probe":
                self._probe()
            elif action == "await":
                self._await_acks()
            elif self._acked is not None:
                self._send_acked()
            else:
                self._send_batch()

    def _next_action(self) -> str:
        cond = self._cond
        while True:
            now = time.monotonic()
            if self._closing and (not self.buffer or now >= self._close_deadline):
                return "exit"
            if self._sock is None:
                if now >= self._retry_at:
                    return "connect"
                wait = self._retry_at - now
                if self._closing:
                    wait = min(wait, self._close_deadline - now)
                cond.wait(wait)
                continue
            if self._acked is not None:
                if self.buffer.unpinned and len(self._inflight) < self._acked.window:
                    return "send"
                if self._inflight:
                    self._selecting = True
                    return "await"
            elif self.buffer:
                return "send"
            if self._closing:
                return "exit"
            if not cond.wait(IDLE_PROBE):
                return "probe"

    def _connect(self) -> None:
        try:
            sock = self._connect_fn()
            _set_keepalive(sock)
            if self._acked is not None:
                self._session = self._handshake(sock)
            sock.settimeout(SEND_SLICE)
        except (OSError, ProtocolError) as exc:
            with self._cond:
                self._failures += 1
                self._had_trouble = True
                self.last_error = f"connect: {exc}"
                delay = self._backoff().delay(self._failures, self._rng)
                self._retry_at = time.monotonic() + delay
                self.retry_time = time.time() + delay
            return
        with self._cond:
            self._sock = sock
            self._failures = 0
            self.retry_time = None
            if self._had_trouble:
                self.reconnects += 1
                self._had_trouble = False
            self._cond.notify_all()

    def _handshake(self, sock: socket.socket) -> Session:
        assert self._acked is not None
        session = self._acked.new_session()
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            sock.sendall(session.handshake())
            while not session.ready:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProtocolError("handshake timed out")
                sock.settimeout(remaining)
                if session.receive(sock.recv(65536)):
                    raise ProtocolError("acknowledgement before the handshake completed")
        except BaseException:
            sock.close()
            raise
        return session

    def _lose_connection(self, error: str) -> None:
        # Called with the lock held. Reconnect at once: the receiver may already be back.
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._acked is not None:
            # Everything not acknowledged goes again, in order, on the next connection.
            self._inflight.clear()
            self.buffer.unpin()
            self._session = None
            if self._report_inflight is not None:
                self.buffer.restore_report(self._report_inflight)
                self._report_inflight = None
        self._had_trouble = True
        self.last_error = error
        self._retry_at = time.monotonic()

    def _probe(self) -> None:
        sock = self._sock
        if sock is not None and _peer_closed(sock):
            with self._cond:
                self._lose_connection("peer closed the connection")

    def _send_acked(self) -> None:
        assert self._acked is not None
        with self._cond:
            sock, session = self._sock, self._session
            if sock is None or session is None:
                return
            head = b""
            kinds: list[bool] = []
            if not self._inflight and self._report_inflight is None:
                report = self.buffer.take_report()
                if report is not None:
                    head = session.frame(self._drop_frame(report))
                    self._report_inflight = report
                    kinds.append(True)
            room = self._acked.window - len(self._inflight) - len(kinds)
            payloads = self.buffer.pin_more(BATCH_BYTES, room)
            self._sending = True
        data = head + b"".join([session.frame(p) for p in payloads])
        kinds.extend([False] * len(payloads))
        error = self._write_all(sock, data)
        with self._cond:
            self._sending = False
            if error is None:
                self._inflight.extend(kinds)
            else:
                self._lose_connection(error)
            self._cond.notify_all()
        if error is None:
            self._read_acks(sock, session, block=False)

    def _await_acks(self) -> None:
        sock, session, wake = self._sock, self._session, self._wake_r
        if sock is None or session is None or wake is None:
            return
        try:
            readable, _, _ = select.select([sock, wake], [], [], IDLE_PROBE)
        except (OSError, ValueError) as exc:
            with self._cond:
                self._selecting = False
                self._lose_connection(f"select: {exc}")
            return
        with self._cond:
            self._selecting = False
        if wake in readable:
            _drain(wake)
        if sock in readable:
            self._read_acks(sock, session, block=True)

    def _read_acks(self, sock: socket.socket, session: Session, *, block: bool) -> None:
        acked = 0
        error: str | None = None
        try:
            while True:
                flags = 0 if block else socket.MSG_DONTWAIT
                data = sock.recv(65536, flags)
                acked += session.receive(data)
                block = False
                if len(data) < 65536:
                    break
        except (BlockingIOError, InterruptedError, TimeoutError):
            error = None
        except ProtocolError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"recv: {exc}"
        with self._cond:
            if acked:
                records = 0
                for _ in range(acked):
                    if self._inflight.popleft():
                        self.reports_sent += 1
                        self._report_inflight = None
                    else:
                        records += 1
                self.buffer.ack(records)
                self.sent += records
            if error is not None and self._sock is sock:
                self._lose_connection(error)
            self._cond.notify_all()

    def _write_all(self, sock: socket.socket, data: bytes) -> str | None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += sock.send(view[done:])
            except (TimeoutError, InterruptedError):
                if self._closing and time.monotonic() >= self._close_deadline:
                    return "gave up sending at close"
            except OSError as exc:
                return f"send: {exc}"
        return None

    def _send_batch(self) -> None:
        with self._cond:
            sock = self._sock
            if sock is None:
                return
            report = self.buffer.take_report()
            head = self._drop_frame(report) if report is not None else b""
            frames = self.buffer.pin_batch(BATCH_BYTES)
            self._sending = True
        # A peer that already closed would swallow this write without an error (the
        # first write after a close "succeeds" locally): check first. This narrows the
        # window of undetectable loss on plain TCP; it cannot close it.
        if _peer_closed(sock):
            with self._cond:
                self._sending = False
                if report is not None:
                    self.buffer.restore_report(report)
                self.buffer.release(0)
                self._lose_connection("peer closed the connection")
                self._cond.notify_all()
            return
        data = memoryview(head + b"".join(frames))
        total = len(data)
        done = 0
        error: str | None = None
        while done < total:
            try:
                done += sock.send(data[done:])
            except (TimeoutError, InterruptedError):
                if self._closing and time.monotonic() >= self._close_deadline:
                    error = "gave up sending at close"
                    break
            except OSError as exc:
                error = f"send: {exc}"
                break
        # Count whole frames the kernel took; a frame cut short goes again, whole.
        sent_frames = 0
        pos = len(head)
        if done >= pos:
            for f in frames:
                pos += len(f)
                if pos > done:
                    break
                sent_frames += 1
        with self._cond:
            self._sending = False
            self.buffer.release(sent_frames)
            self.sent += sent_frames
            if report is not None:
                if done >= len(head):
                    self.reports_sent += 1
                else:
                    self.buffer.restore_report(report)
            if error is not None:
                self._lose_connection(error)
            self._cond.notify_all()


def drop_record(report: DropReport, handler_name: str, policy: str) -> logging.LogRecord:
    """The WARNING record (logger ``mplog``) that tells the receiver what was dropped."""

    def iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"

    record = logging.LogRecord(
        "mplog",
        logging.WARNING,
        __file__,
        0,
        "mplog dropped %d records between %s and %s (%s; overflow policy %s)",
        (report.count, iso(report.first), iso(report.last), handler_name, policy),
        None,
        func="drop_report",
    )
    record.mplog_dropped = report.count
    record.mplog_dropped_first = report.first
    record.mplog_dropped_last = report.last
    return record
