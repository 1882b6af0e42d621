"""Sans-IO RELP client session (rsyslog's Reliable Event Logging Protocol).

Facts from librelp's ``doc/relp.md`` and what rsyslog's imrelp was seen to do
(``shared/recipes/real-receivers.md``):

- Frame: ``TXNR SP COMMAND SP DATALEN [SP DATA] LF``. TXNR runs 1, 2, 3, ... within a
  session and must be exactly the previous one plus one (the server closes the session on a
  gap or repeat); it wraps after 999,999,999 back to 1. DATALEN counts DATA only.
- The client opens with ``1 open N relp_version=0\\nrelp_software=...\\ncommands=syslog``;
  the session is usable once a ``rsp`` starting with ``200`` comes back for it.
- Each ``syslog`` command carries one message; its ``rsp`` (``200 OK``) is the
  acknowledgement. Responses come back in command order. ``serverclose`` (TXNR 0) or a
  non-200 response ends the session: everything not acknowledged is sent again on the
  next session, with new TXNRs (so a receiver may see duplicates: at-least-once).
- ``close`` is answered by ``rsp`` with DATALEN 0.

Nothing here touches a socket or a clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from .._errors import ConfigError, LocalProtocolError, RefusedError, RemoteProtocolError
from .._limits import RELP_DATA
from .syslog import SyslogWire

__all__ = ["MAX_DATA", "RelpSession", "RelpWire"]

#: Largest DATA we accept in a server frame: the librelp default maximum (mplog._limits).
MAX_DATA = RELP_DATA
#: TXNR wraps after this (librelp ``relp.h``).
MAX_TXNR = 999_999_999
_OFFERS = b"relp_version=0\nrelp_software=mplog,1,-\ncommands=syslog"
#: Longest header we wait for before calling the bytes garbage: "999999999 serverclose 131072 "
_MAX_HEADER = 64


class RelpSession:
    """One RELP session: frames outgoing commands and matches incoming responses.

    Use: send :meth:`open_frame`; feed everything the server sends to :meth:`receive`
    until :attr:`ready`; then frame each message with :meth:`syslog_frame`; every call to
    :meth:`receive` returns how many messages were acknowledged, in order.
    """

    def __init__(self) -> None:
        self._txnr = 0
        self._buf = bytearray()
        self._pending: deque[int] = deque()  # txnrs of syslog commands awaiting rsp
        self._open_txnr: int | None = None
        self._close_txnr: int | None = None
        self.ready = False
        self.closed = False

    def _next(self) -> int:
        self._txnr = 1 if self._txnr >= MAX_TXNR else self._txnr + 1
        return self._txnr

    def _frame(self, command: bytes, data: bytes) -> bytes:
        txnr = self._next()
        head = b"%d %s %d" % (txnr, command, len(data))
        return head + (b" " + data if data else b"") + b"\n"

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def open_frame(self) -> bytes:
        if self._txnr:
            raise LocalProtocolError("RELP session already opened")
        frame = self._frame(b"open", _OFFERS)
        self._open_txnr = self._txnr
        return frame

    def syslog_frame(self, message: bytes) -> bytes:
        if not self.ready:
            raise LocalProtocolError("RELP session not open yet")
        frame = self._frame(b"syslog", message)
        self._pending.append(self._txnr)
        return frame

    def close_frame(self) -> bytes:
        frame = self._frame(b"close", b"")
        self._close_txnr = self._txnr
        return frame

    def receive(self, data: bytes) -> int:
        """Feed server bytes; return how many syslog commands are newly acknowledged.

        ``receive(b"")`` means the server closed the connection. Raises
        :class:`RemoteProtocolError` when the server ends or breaks the session.
        """
        if not data:
            raise RemoteProtocolError("RELP server closed the connection")
        buf = self._buf
        buf += data
        acked = 0
        while True:
            frame = self._next_frame()
            if frame is None:
                return acked
            txnr, command, payload = frame
            if command == b"serverclose":
                self.closed = True
                raise RemoteProtocolError("RELP server closed the session (serverclose)")
            if command != b"rsp":
                raise RemoteProtocolError(f"RELP server sent unexpected command {command!r}")
            if txnr == self._open_txnr and not self.ready:
                if not payload.startswith(b"200"):
                    raise RefusedError(f"RELP open refused: {payload[:200]!r}")
                if b"relp_version" not in payload:
                    raise RemoteProtocolError("RELP open response without relp_version")
                self.ready = True
                continue
            if txnr == self._close_txnr:
                self.closed = True
                continue
            if not self._pending or txnr != self._pending[0]:
                raise RemoteProtocolError(f"RELP rsp for unexpected txnr {txnr}")
            if not payload.startswith(b"200"):
                raise RefusedError(f"RELP server refused a message: {payload[:200]!r}")
            self._pending.popleft()
            acked += 1

    def _next_frame(self) -> tuple[int, bytes, bytes] | None:
        buf = self._buf
        a = buf.find(b" ")
        if a < 0:
            if len(buf) > _MAX_HEADER:
                raise RemoteProtocolError("RELP frame header too long")
            return None
        b = buf.find(b" ", a + 1)
        # DATALEN ends at SP (data follows) or LF (DATALEN 0, no data).
        if b < 0:
            if len(buf) > _MAX_HEADER:
                raise RemoteProtocolError("RELP frame header too long")
            return None
        j = b + 1
        while j < len(buf) and 48 <= buf[j] <= 57:
            j += 1
        if j >= len(buf):
            if j - b > 10:
                raise RemoteProtocolError("RELP DATALEN too long")
            return None
        try:
            txnr = int(buf[:a])
            command = bytes(buf[a + 1 : b])
            n = int(buf[b + 1 : j])
        except ValueError:
            raise RemoteProtocolError("RELP frame header malformed") from None
        if n > MAX_DATA or not command.isalpha():
            raise RemoteProtocolError("RELP frame header malformed or too large")
        if n == 0:
            end = j + 1
            payload = b""
            if buf[j] != 10:
                raise RemoteProtocolError("RELP frame without LF trailer")
        else:
            if buf[j] != 32:
                raise RemoteProtocolError("RELP frame: expected SP after DATALEN")
            end = j + 2 + n
            if len(buf) < end:
                return None
            payload = bytes(buf[j + 1 : j + 1 + n])
            if buf[end - 1] != 10:
                raise RemoteProtocolError("RELP frame without LF trailer")
        del buf[:end]
        return txnr, command, payload


#: librelp's default window (``RELP_DFLT_WINDOW_SIZE``).
DEFAULT_WINDOW = 128


class _Session:
    def __init__(self) -> None:
        self._relp = RelpSession()

    @property
    def ready(self) -> bool:
        return self._relp.ready

    def handshake(self) -> bytes:
        return self._relp.open_frame()

    def frame(self, payload: bytes) -> bytes:
        return self._relp.syslog_frame(payload)

    def frames(self, payloads: list[bytes]) -> bytes:
        return b"".join([self._relp.syslog_frame(p) for p in payloads])

    def receive(self, data: bytes) -> int:
        return self._relp.receive(data)

    def close_frame(self) -> bytes:
        return self._relp.close_frame()


class RelpWire:
    """Options: ``window`` (unacknowledged messages in flight, default 128) and every
    option of ``wire="syslog"`` except ``framing`` (RELP frames the messages itself)."""

    def __init__(self, *, window: int = DEFAULT_WINDOW, **syslog_options: Any) -> None:
        if not isinstance(window, int) or not 1 <= window <= 1_000_000:
            raise ConfigError(f"window must be an int between 1 and 1000000, got {window!r}")
        if "framing" in syslog_options:
            raise ConfigError("wire='relp' frames messages itself: drop the framing option")
        self.window = window
        self._syslog = SyslogWire(**syslog_options)
        if self._syslog.max_length > RELP_DATA - 64:
            raise ConfigError(
                f"max_length {self._syslog.max_length} is too large for RELP: a receiver "
                f"takes at most {RELP_DATA} bytes of data per command (librelp's default)"
            )
        self.max_payload = RELP_DATA

    def encode(self, record: Mapping[str, Any]) -> bytes:
        return self._syslog.message(record)

    def new_session(self) -> _Session:
        return _Session()
