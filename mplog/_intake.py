"""IO: the worker-side intake client and the one-shot control client.

Rules this module keeps:

- One Unix stream connection per process, opened lazily, written with one ``sendall`` per
  record under a per-connection lock, before ``emit()`` returns: nothing waits in the
  worker, so ``os._exit`` or SIGKILL right after a log call loses nothing.
- Fork safety: ``os.register_at_fork`` gives every child fresh locks and no inherited
  connection (a child never shares a socket, or a half-written frame, with its parent).
- A listener that cannot be reached (being restarted) is retried for a bounded time per
  outage, not per record; after that, records go to stderr with a clear prefix and are
  counted, and the count is reported to the listener once it is back. Nothing here ever
  raises into application code or blocks forever.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from typing import Any

from ._errors import MplogError, ProtocolError
from ._framing import FrameSplitter
from ._record import decode_control, decode_record, encode_control

__all__ = ["IntakeClient", "control_request"]

#: How long a worker keeps retrying an unreachable listener, per outage (not per record).
OUTAGE_BUDGET = 2.0
#: Pause between two connection attempts during an outage.
RETRY_INTERVAL = 0.02
#: Socket send buffer of a worker's intake connection (the kernel caps it at wmem_max).
SEND_BUFFER = 1024 * 1024
#: A send that makes no progress for this long is abandoned (the listener is stuck).
SEND_TIMEOUT = 60.0

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
