"""IO: the one connection of a socket handler, owned by one sender thread.

Rules this module keeps:

- ``submit()`` (called from ``emit``) only appends to the in-order buffer; the sender thread
  alone connects, writes, detects a closed peer and reads acknowledgements. What to do and
  when is decided by the sans-IO :class:`mplog._sendstate.SendState` (one back-off timer for
  every reconnect, whatever ended the last connection); this module only carries it out.
- Writes are coalesced (many frames per ``send``), and partial sends are tracked to the
  byte, so a frame counts as sent only once the kernel took all of it (or, on an acked
  wire, once the receiver acknowledged it); a frame cut by a broken connection goes again,
  whole, on the next one.
- Every drop is counted by the buffer; once connected, a WARNING record says how many
  records were dropped and between which times. On an acked wire it is sent just before
  the oldest unacknowledged record, numbered to fit there, so it never overtakes or
  blocks older records.
- Errors are mapped to one line in one place (:func:`describe`) and acted on by type: an
  ``OSError`` or a :class:`~mplog.RemoteProtocolError` is a delivery failure (back off,
  report once per outage); anything else is a bug in mplog: the thread that met it reports
  it loudly, hands over to a fresh sender thread, and a record that keeps failing is
  dropped and counted rather than retried for ever.
- Clocks: ``time.monotonic`` for scheduling; wall-clock time only labels drops and errors.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import ssl
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

from . import _poll, _sigpipe
from ._backoff import Backoff
from ._buffer import DropReport, FrameBuffer
from ._errors import LocalProtocolError, ProtocolError, RefusedError
from ._framing import REFUSAL_PREFIX
from ._sendstate import Action, SendState
from ._stderr import say
from ._text import iso_local, one_line
from ._tls import TLSError
from ._wires import AckedWire, Session

__all__ = ["Sender", "describe", "drop_record"]

#: Seconds a connection has to complete an acknowledged wire's handshake.
HANDSHAKE_TIMEOUT = 5.0
#: Most bytes handed to one ``send`` call: large enough to amortize the syscall over
#: hundreds of records, small enough to keep a slow receiver from pinning much memory.
BATCH_BYTES = 256 * 1024
#: How often an idle connection is checked for a peer that closed it.
IDLE_PROBE = 0.5
#: A ``send`` that makes no progress for this long is retried (the connection is kept:
#: a slow receiver is not a dead one); used so ``close()`` can always give up on time.
SEND_SLICE = 0.5
#: On a wire without acknowledgements, the first record of a new connection is written
#: alone and counts as sent only if the receiver has not refused the connection within
#: this time: a keyed ``mplog serve`` refuses the stdlib wire with a line starting with
#: :data:`REFUSAL_PREFIX` and closes, and those records must not count as sent.
PROBATION = 0.5
#: A sender thread that failed this many times in a row without delivering anything
#: drops the record at the head of the buffer (counted): it is what keeps failing.
POISON_FAILURES = 2


def describe(exc: BaseException, name: str) -> str:
    """One line saying why talking to *name* failed (the one place errors are mapped)."""
    if isinstance(exc, TLSError):
        return str(exc)  # already one line naming the receiver (mplog._tls.reason)
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {name}: {exc.strerror or exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake with {name} failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS with {name} failed: {exc.reason or exc}"
    if isinstance(exc, RefusedError):
        return f"{name} refused: {exc}"
    if isinstance(exc, ProtocolError):
        return f"protocol error with {name}: {exc}"
    if isinstance(exc, TimeoutError):
        return f"{name} did not answer in time"
    if isinstance(exc, OSError):
        if exc.errno == errno.ECONNREFUSED:
            return f"connection to {name} refused"
        if exc.errno is not None and exc.strerror:
            return f"{name}: {exc.strerror}"
        return f"{name}: {exc}"
    return f"{name}: {type(exc).__name__}: {exc}"


def _set_keepalive(sock: socket.socket) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        opt = getattr(socket, name, None)
        if opt is not None:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _peer_said(sock: socket.socket, wait: float) -> bytes | None:
    """What the peer sent or did within *wait* s: None if nothing, b"" if it closed, or
    the first bytes it sent (left unread: only peeked)."""
    try:
        readable = _poll.readable([sock], wait)
        if not readable:
            return None
        return sock.recv(4096, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    except (OSError, ValueError):
        return b""


def _refusal(said: bytes | None) -> RefusedError | None:
    if said and said.startswith(REFUSAL_PREFIX):
        reason = said[len(REFUSAL_PREFIX) :].split(b"\n", 1)[0]
        return RefusedError(one_line(reason.decode("ascii", "replace"), 300))
    return None


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            continue
    except BlockingIOError:
        return


class Sender:
    """The connection, buffer and back-off timer behind one socket handler.

    *connect* makes a new connected socket or raises ``OSError``; *backoff* returns the
    current policy; *drop_payload(report, head)* encodes the WARNING record for a drop
    report, to be sent just before the buffered payload *head* (None: the buffer is
    empty), or returns None if it cannot be placed there yet.
    """

    def __init__(
        self,
        name: str,
        buffer: FrameBuffer,
        connect: Callable[[], socket.socket],
        backoff: Callable[[], Backoff],
        drop_payload: Callable[[DropReport, bytes | None], bytes | None],
        *,
        block_timeout: float = 5.0,
        rng: random.Random | None = None,
        acked: AckedWire | None = None,
    ) -> None:
        self.name = name
        self.buffer = buffer
        self.state = SendState(name, backoff, rng or random.Random())
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
        self._connect_fn = connect
        self._drop_payload = drop_payload
        self.block_timeout = block_timeout
        self._cond = threading.Condition(threading.Lock())
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._probation = False
        self._sending = False
        self._crashes = 0
        self._action = Action.WAIT
        #: Wall-clock time of the next connection attempt while backing off, else None.
        self.retry_time: float | None = None
        self.sent = 0
        self.reports_sent = 0
        #: Times a sender thread died of an unexpected error and a fresh one took over.
        self.thread_restarts = 0
        #: Records dropped at the head because they kept killing the sender thread.
        self.poisoned = 0
        self.last_error_at: float | None = None
        self._last_error: str | None = None

    # -- called from emit() and the listener ------------------------------------------

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @last_error.setter
    def last_error(self, value: str | None) -> None:
        self._last_error = value
        self.last_error_at = time.time() if value is not None else None

    @property
    def reconnects(self) -> int:
        return self.state.reconnects

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None or self.state.closing:
                return
            if self._acked is not None:
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
            self._spawn_thread()

    def _spawn_thread(self) -> None:
        # Called with the lock held.
        self._thread = threading.Thread(
            target=self._thread_main, name=f"mplog-sender[{self.name}]", daemon=True
        )
        self._thread.start()

    def submit(self, frame: bytes) -> None:
        with self._cond:
            self._submit_locked(frame)

    def _submit_locked(self, frame: bytes) -> None:
        if self.buffer.push(frame, time.time()):
            self._cond.notify_all()
            self._wake()
            return
        if self.buffer.overflow != "block":
            return  # dropped and counted by the buffer
        deadline = time.monotonic() + self.block_timeout
        while not self.state.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._cond.wait(remaining)
            if self.buffer.push(frame, time.time()):
                self._cond.notify_all()
                return
        self.buffer.drop(time.time())

    def submit_many(self, frames: list[bytes]) -> None:
        """``submit`` each frame, taking the lock once."""
        with self._cond:
            if self.buffer.overflow == "block":
                for f in frames:
                    self._submit_locked(f)
                return
            self.buffer.push_many(frames, time.time())
            self._cond.notify_all()
            self._wake()

    def count_drop(self, reason: str) -> None:
        """Count a record that could not be buffered at all (e.g. too large for its wire)."""
        with self._cond:
            self.buffer.drop(time.time())
            self.last_error = reason

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

    def close(self, timeout: float) -> int:
        """Deliver what is buffered within *timeout*, then stop; count what is left.

        Returns how many records were left undelivered (dropped and counted); they are
        also named in one line on stderr.
        """
        with self._cond:
            self.state.close(time.monotonic(), timeout)
            self._cond.notify_all()
            self._wake()
        deadline = time.monotonic() + timeout + 2 * SEND_SLICE
        while True:
            with self._cond:
                thread = self._thread
            if thread is None or not thread.is_alive():
                break
            thread.join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                if thread.is_alive():
                    self.last_error = "sender thread did not stop in time"
                break
        with self._cond:
            spooled_before = self.buffer.spool_stats()["spooled"]
            left = self.buffer.clear(time.time())
            sock, self._sock = self._sock, None
            self._cond.notify_all()
        if sock is not None:
            sock.close()
        for w in (self._wake_r, self._wake_w):
            if w is not None:
                w.close()
        if left:
            why = f" (last error: {self.last_error})" if self.last_error else ""
            say(f"mplog: {left} records could not be delivered to {self.name} before "
                    f"the handler closed and were dropped{why}")
        elif spooled_before:
            say(f"mplog: {spooled_before} records for {self.name} stay in the spool for "
                    "the next run")
        return left

    # -- the sender thread ------------------------------------------------------------

    def _thread_main(self) -> None:
        # In a user's process that did not ignore SIGPIPE, a write to a receiver that
        # closed would kill it; in this thread it fails with EPIPE, as anywhere else.
        _sigpipe.block_in_this_thread()
        try:
            self._loop()
        except Exception as exc:  # a bug in mplog (or a user's override): hand over
            self._crashed(exc)

    def _crashed(self, exc: Exception) -> None:
        where = traceback.extract_tb(exc.__traceback__)[-1:]
        at = f" at {where[0].filename}:{where[0].lineno}" if where else ""
        reason = f"sender thread failed: {type(exc).__name__}: {exc}{at}"
        with self._cond:
            self.thread_restarts += 1
            self._crashes += 1
            self._drop_connection_locked()
            # Only a crash while sending can be the fault of a record (not one in connect).
            poisoned = (
                self._action in (Action.SEND, Action.AWAIT_ACKS)
                and self._crashes >= POISON_FAILURES
                and bool(self.buffer)
            )
            if poisoned:
                self.buffer.discard_head(time.time())
                self.poisoned += 1
                self._crashes = 0
                reason += "; the record it was sending was dropped (counted)"
            delay = self.state.failed(time.monotonic(), one_line(reason, 500))
            self.last_error = self.state.last_error
            self.retry_time = time.time() + delay
            self.state.take_notices()  # this line replaces the outage notice
            restart = not self.state.closing
            if restart:
                self._spawn_thread()
            else:
                self._thread = None
            self._cond.notify_all()
        say(f"mplog: {one_line(reason, 500)}; "
                + ("a new sender thread took over" if restart else "closing"))

    def _loop(self) -> None:
        while True:
            with self._cond:
                action = self._action = self._next_locked()
            if action is Action.EXIT:
                return
            if action is Action.CONNECT:
                self._connect()
            elif action is Action.PROBE:
                self._probe()
            elif action is Action.AWAIT_ACKS:
                self._await_acks()
            elif self._acked is not None:
                self._send_acked()
            else:
                self._send_batch()
            self._report()

    def _next_locked(self) -> Action:
        cond = self._cond
        while True:
            now = time.monotonic()
            acked = self._acked
            action = self.state.next(
                now,
                pending=len(self.buffer),
                unpinned=self.buffer.unpinned,
                inflight=len(self._inflight),
                window=acked.window if acked is not None else None,
            )
            if action is Action.WAIT:
                cond.wait(self.state.wake_at(now) - now)
                continue
            if action is Action.AWAIT_ACKS:
                self._selecting = True
            if action is Action.PROBE and cond.wait(IDLE_PROBE):
                continue  # woken: new records, or closing
            return action

    def _report(self) -> None:
        with self._cond:
            notices = self.state.take_notices()
            if self.state.last_error is not None and self.state.last_error != self._last_error:
                self.last_error = self.state.last_error
        for n in notices:
            say(n.text)

    def _failed_locked(self, exc: BaseException | str) -> None:
        reason = exc if isinstance(exc, str) else describe(exc, self.name)
        delay = self.state.failed(time.monotonic(), reason)
        self.last_error = reason
        self.retry_time = time.time() + delay
        if isinstance(exc, LocalProtocolError):
            # Our own bug: say so loudly, once per occurrence, with where it happened.
            say(f"mplog: internal protocol error (a bug in mplog, please report): {exc}")

    def _connect(self) -> None:
        try:
            sock = self._connect_fn()
        except (OSError, ProtocolError) as exc:
            with self._cond:
                self._failed_locked(exc)
            return
        try:
            _set_keepalive(sock)
            session = self._handshake(sock) if self._acked is not None else None
            sock.settimeout(SEND_SLICE)
        except (OSError, ProtocolError) as exc:
            sock.close()
            with self._cond:
                self._failed_locked(exc)
            return
        except BaseException:
            sock.close()
            raise
        with self._cond:
            self._sock = sock
            self._session = session
            self._probation = self._acked is None
            self.retry_time = None
            self.state.connected_now()
            self._cond.notify_all()

    def _handshake(self, sock: socket.socket) -> Session:
        assert self._acked is not None
        session = self._acked.new_session()
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.sendall(session.handshake())
        while not session.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("handshake timed out")
            sock.settimeout(remaining)
            if session.receive(sock.recv(65536)):
                raise ProtocolError("acknowledgement before the handshake completed")
        return session

    def _drop_connection_locked(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        self._sending = False
        self._selecting = False
        if self._acked is not None:
            # Everything not acknowledged goes again, in order, on the next connection.
            self._inflight.clear()
            self.buffer.unpin()
            self._session = None
            if self._report_inflight is not None:
                self.buffer.restore_report(self._report_inflight)
                self._report_inflight = None
        else:
            self.buffer.unpin()

    def _lose_connection(self, error: BaseException | str) -> None:
        # Called with the lock held. The next try waits for the back-off timer.
        if self._sock is None:
            return
        self._drop_connection_locked()
        self._failed_locked(error)

    def _delivered_locked(self, n: int) -> None:
        if n:
            self.sent += n
            self._crashes = 0
            self.state.delivered(n)

    def _probe(self) -> None:
        sock = self._sock
        if sock is None:
            return
        said = _peer_said(sock, 0)
        if said is not None and (said == b"" or self._acked is None):
            with self._cond:
                if self._sock is sock:
                    self._lose_connection(_refusal(said) or "peer closed the connection")

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
                    first = self.buffer.pin_more(1 << 62, 1)
                    self.buffer.unpin()
                    payload = self._drop_payload(report, first[0] if first else None)
                    if payload is None:
                        self.buffer.restore_report(report)
                    else:
                        head = session.frame(payload)
                        self._report_inflight = report
                        kinds.append(True)
            room = self._acked.window - len(self._inflight) - len(kinds)
            payloads = self.buffer.pin_more(BATCH_BYTES, room)
            self._sending = True
        data = head + session.frames(payloads)  # a sealed mplog session: one MAC
        kinds.extend([False] * len(payloads))
        error = self._write_all(sock, data)
        with self._cond:
            self._sending = False
            if self._sock is not sock:
                return
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
            readable = _poll.readable([sock, wake], IDLE_PROBE)
        except (OSError, ValueError) as exc:
            with self._cond:
                self._selecting = False
                self._lose_connection(exc)
            return
        with self._cond:
            self._selecting = False
        if wake in readable:
            _drain(wake)
        if sock in readable:
            self._read_acks(sock, session, block=True)

    def _read_acks(self, sock: socket.socket, session: Session, *, block: bool) -> None:
        acked = 0
        error: BaseException | None = None
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
        except (ProtocolError, OSError) as exc:
            error = exc
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
                self._delivered_locked(records)
            if error is not None and self._sock is sock:
                self._lose_connection(error)
            self._cond.notify_all()

    def _write_all(self, sock: socket.socket, data: bytes) -> OSError | str | None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                done += sock.send(view[done:])
            except (TimeoutError, InterruptedError):
                if self.state.closing and time.monotonic() >= self.state.close_deadline:
                    return "gave up sending at close"
            except OSError as exc:
                return exc
        return None

    def _send_batch(self) -> None:
        with self._cond:
            sock = self._sock
            if sock is None:
                return
            probation = self._probation
            report = self.buffer.take_report()
            head = b""
            if report is not None:
                head = self._drop_payload(report, None) or b""
            # (pin_batch returns at least one frame, so a bound of 1 byte pins exactly one.)
            frames = self.buffer.pin_batch(1 if probation else BATCH_BYTES)
            self._sending = True
        # A peer that already closed (or refused us) would swallow this write without an
        # error (the first write after a close "succeeds" locally): check first. This
        # narrows the window of undetectable loss on plain TCP; it cannot close it.
        said = _peer_said(sock, 0)
        if said is not None:
            with self._cond:
                self._sending = False
                if report is not None:
                    self.buffer.restore_report(report)
                self.buffer.release(0)
                self._lose_connection(_refusal(said) or "peer closed the connection")
                self._cond.notify_all()
            return
        data = memoryview(head + b"".join(frames))
        total = len(data)
        done = 0
        error: OSError | ProtocolError | str | None = None
        while done < total:
            try:
                done += sock.send(data[done:])
            except (TimeoutError, InterruptedError):
                if self.state.closing and time.monotonic() >= self.state.close_deadline:
                    error = "gave up sending at close"
                    break
            except OSError as exc:
                error = exc
                break
        if error is None and probation:
            # The first record of this connection: the receiver may still refuse it.
            said = _peer_said(sock, PROBATION)
            refused = _refusal(said)
            if refused is not None or said == b"":
                error = refused or "peer closed the connection"
                done = 0  # nothing counts as sent; it stays buffered for the next try
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
            if probation and error is None:
                self._probation = False
            self.buffer.release(sent_frames)
            self._delivered_locked(sent_frames)
            if report is not None:
                if head and done >= len(head):
                    self.reports_sent += 1
                else:
                    self.buffer.restore_report(report)
            if error is not None:
                self._lose_connection(error)
            self._cond.notify_all()




def drop_record(report: DropReport, handler_name: str, policy: str) -> logging.LogRecord:
    """The WARNING record (logger ``mplog``) that tells the receiver what was dropped."""
    record = logging.LogRecord(
        "mplog",
        logging.WARNING,
        __file__,
        0,
        "mplog dropped %d records between %s and %s (%s; overflow policy %s)",
        (report.count, iso_local(report.first), iso_local(report.last), handler_name, policy),
        None,
        func="drop_report",
    )
    record.mplog_dropped = report.count
    record.mplog_dropped_first = report.first
    record.mplog_dropped_last = report.last
    return record
