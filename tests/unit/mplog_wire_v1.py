# The mplog wire version 1, verbatim from mplog 7546702 (mplog/_wires/mplog.py) with its
# imports made absolute: the old peer the version-2 tests talk to. Not used by mplog itself.
# ruff: noqa
# mypy: ignore-errors
"""``wire="mplog"``: mplog's own protocol, version 1 (``docs/protocol.md``), sans-IO.

Both sides live here: :class:`ClientSession` and :class:`MplogWire` (the sender), and
:class:`ServerConnection` (the collector).

Rules this module keeps:

- Bytes in, events out; frames out as bytes. No sockets, no clocks, no threads.
- Every length is checked against :data:`MAX_FRAME` before anything is buffered for it.
- A peer that breaks the protocol gets :class:`ProtocolError` naming what it did; nothing
  else is ever raised for received bytes (the decoders are fuzzed for that).
- Data only: record bodies are JSON objects. Nothing here unpickles anything.

Stream layout (both directions after the client's 8-byte preamble)::

    preamble (client -> server, once) = b"MPLG" 0x01 0x00 0x00 0x00
    frame = length:u32be || type:u8 || body || [hmac-sha256(key, type || body): 32 bytes]

The hello is not framed with a MAC; with HMAC negotiated it carries ``proof`` =
hex(HMAC(key, b"H" + sender)), and every later frame both ways carries a MAC.
Client frames: ``H`` hello (JSON), ``R`` record (seq:u64be || JSON object), ``C`` close.
Server frames: ``W`` welcome (JSON), ``A`` ack (seq:u64be, cumulative), ``E`` error (UTF-8).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import struct
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mplog._errors import ConfigError, ProtocolError

__all__ = [
    "MAGIC",
    "MAX_FRAME",
    "VERSION",
    "Ack",
    "ClientSession",
    "Close",
    "Hello",
    "MplogWire",
    "Record",
    "ServerConnection",
]

VERSION = 1
MAGIC = b"MPLG" + bytes([VERSION, 0, 0, 0])
#: Largest frame (type + body + MAC) either side accepts: 1 MiB. A record with a long
#: traceback is a few KiB; the limit is what bounds a connection's memory.
MAX_FRAME = 1024 * 1024
MAC_SIZE = 32
#: Default number of records a client may have unacknowledged (the server may lower it).
DEFAULT_WINDOW = 1024
_SENDER_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_LEN = struct.Struct(">L")
_SEQ = struct.Struct(">Q")


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _frame(kind: bytes, body: bytes, key: bytes | None) -> bytes:
    data = kind + body
    if key is not None:
        data += _mac(key, data)
    return _LEN.pack(len(data)) + data


class _Splitter:
    """Split ``length || data`` frames; verify and strip the MAC when there is a key."""

    def __init__(self, who: str) -> None:
        self._buf = bytearray()
        self._who = who
        self.key: bytes | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> tuple[bytes, bytes] | None:
        """The next whole frame as (type, body), checked against the current key."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (n,) = _LEN.unpack_from(buf)
        if n > MAX_FRAME:
            raise ProtocolError(f"{self._who} sent a frame of {n} bytes (limit {MAX_FRAME})")
        if n < 1:
            raise ProtocolError(f"{self._who} sent an empty frame")
        if len(buf) - 4 < n:
            return None
        data = bytes(buf[4 : 4 + n])
        del buf[: 4 + n]
        if self.key is not None:
            if n < 1 + MAC_SIZE:
                raise ProtocolError(f"{self._who} sent a frame too short for its MAC")
            data, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
            if not hmac.compare_digest(mac, _mac(self.key, data)):
                raise ProtocolError(f"{self._who} sent a frame with a wrong HMAC")
        return data[:1], data[1:]


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return value


# -- events the server gets ----------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    sender: str
    window: int


@dataclass(frozen=True)
class Record:
    seq: int
    record: dict[str, Any]


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Ack:
    seq: int


class ServerConnection:
    """The server side of one connection.

    ``receive(data)`` returns events (:class:`Hello`, :class:`Record`, :class:`Close`);
    answer a Hello with :meth:`welcome` (or :meth:`error`), and records with :meth:`ack`
    once they are written. *key*: the collector's HMAC key, or None.
    """

    def __init__(self, key: bytes | None = None, window: int = DEFAULT_WINDOW) -> None:
        self._key = key
        self._window = window
        self._pre = bytearray()
        self._split = _Splitter("client")
        self._signed = False
        self.sender: str | None = None
        self.last_seq = 0

    def receive(self, data: bytes) -> list[Hello | Record | Close]:
        if not data:
            return [Close()]
        if len(self._pre) < len(MAGIC):
            need = len(MAGIC) - len(self._pre)
            self._pre += data[:need]
            data = data[need:]
            if not MAGIC.startswith(bytes(self._pre)):
                raise ProtocolError("client did not start with the mplog preamble")
            if len(self._pre) < len(MAGIC):
                return []
        events: list[Hello | Record | Close] = []
        self._split.feed(data)
        while (frame := self._split.next()) is not None:
            kind, body = frame
            if self.sender is None:
                if kind != b"H":
                    raise ProtocolError("client sent a frame before its hello")
                events.append(self._hello(body))
                continue
            if kind == b"R":
                if len(body) < _SEQ.size + 2:
                    raise ProtocolError("client sent a record frame too short")
                (seq,) = _SEQ.unpack_from(body)
                if seq <= self.last_seq:
                    raise ProtocolError(f"client sent seq {seq} after {self.last_seq}")
                self.last_seq = seq
                events.append(Record(seq, _json_object(body[_SEQ.size :], "record")))
            elif kind == b"C":
                events.append(Close())
            else:
                raise ProtocolError(f"client sent unknown frame type {kind!r}")
        return events

    def _hello(self, body: bytes) -> Hello:
        # The hello itself is never signed; it says whether everything after it is.
        hello = _json_object(body, "hello")
        if hello.get("hmac"):
            if self._key is None:
                raise ProtocolError("client signs its frames but this collector has no HMAC key")
            proof = hello.get("proof")
            expected = _mac(self._key, b"H" + str(hello.get("sender")).encode()).hex()
            if not isinstance(proof, str) or not hmac.compare_digest(proof, expected):
                raise ProtocolError("client hello has a wrong HMAC (different key)")
            self._split.key = self._key
            self._signed = True
        elif self._key is not None:
            raise ProtocolError("this collector requires HMAC-signed frames")
        if hello.get("version") != VERSION:
            raise ProtocolError(f"client speaks version {hello.get('version')!r}, not {VERSION}")
        sender = hello.get("sender")
        if not isinstance(sender, str) or not _SENDER_RE.match(sender):
            raise ProtocolError("hello: 'sender' must be 1-64 of [A-Za-z0-9_.:-]")
        window = hello.get("window", DEFAULT_WINDOW)
        if not isinstance(window, int) or window < 1:
            raise ProtocolError("hello: 'window' must be a positive int")
        self.sender = sender
        return Hello(sender, min(window, self._window))

    def _out(self, kind: bytes, body: bytes) -> bytes:
        return _frame(kind, body, self._key if self._signed else None)

    def welcome(self, acked: int, window: int) -> bytes:
        """Answer the hello: *acked* is the highest seq of this sender already written."""
        body = json.dumps({"version": VERSION, "acked": acked, "window": window}).encode()
        return self._out(b"W", body)

    def ack(self, seq: int) -> bytes:
        return self._out(b"A", _SEQ.pack(seq))

    def error(self, reason: str) -> bytes:
        return self._out(b"E", reason.encode("utf-8", "replace")[:4096])


class ClientSession:
    """The client side of one connection (an acknowledged-wire Session)."""

    def __init__(self, sender: str, key: bytes | None, window: int) -> None:
        if not _SENDER_RE.match(sender):
            raise ValueError(f"bad sender id {sender!r}")
        self._sender = sender
        self._key = key
        self._window = window
        self._split = _Splitter("server")
        self._split.key = key
        self._inflight: deque[int] = deque()
        self.ready = False
        #: Highest seq the server says it had already written when we connected.
        self.resume_acked = 0
        self.window = window

    def handshake(self) -> bytes:
        hello: dict[str, Any] = {"version": VERSION, "sender": self._sender,
                                 "hmac": self._key is not None, "window": self._window}
        if self._key is not None:
            # Proves the key before any record is sent, so a wrong key is refused at once.
            hello["proof"] = _mac(self._key, b"H" + self._sender.encode()).hex()
        return MAGIC + _frame(b"H", json.dumps(hello).encode(), None)

    def frame(self, payload: bytes) -> bytes:
        """Frame a payload made by :func:`record_payload` (seq already inside)."""
        (seq,) = _SEQ.unpack_from(payload)
        self._inflight.append(seq)
        return _frame(b"R", payload, self._key)

    def close_frame(self) -> bytes:
        return _frame(b"C", b"", self._key)

    def receive(self, data: bytes) -> int:
        if not data:
            raise ProtocolError("server closed the connection")
        acked = 0
        self._split.feed(data)
        while (frame := self._split.next()) is not None:
            kind, body = frame
            if kind == b"W":
                w = _json_object(body, "welcome")
                if w.get("version") != VERSION:
                    raise ProtocolError(f"server speaks version {w.get('version')!r}")
                acked_seq, window = w.get("acked"), w.get("window")
                if not isinstance(acked_seq, int) or not isinstance(window, int) or window < 1:
                    raise ProtocolError("welcome without a valid 'acked' and 'window'")
                self.resume_acked = acked_seq
                self.window = min(self.window, window)
                self.ready = True
            elif kind == b"A":
                if not self.ready or len(body) != _SEQ.size:
                    raise ProtocolError("server sent a malformed ack")
                (seq,) = _SEQ.unpack(body)
                while self._inflight and self._inflight[0] <= seq:
                    self._inflight.popleft()
                    acked += 1
            elif kind == b"E":
                raise ProtocolError(f"server refused: {body.decode('utf-8', 'replace')}")
            else:
                raise ProtocolError(f"server sent unknown frame type {kind!r}")
        return acked


_record_encoder = json.JSONEncoder(separators=(",", ":"), default=repr)


def record_payload(seq: int, record: Mapping[str, Any]) -> bytes:
    """The buffered payload of one record: its seq and its JSON object."""
    return _SEQ.pack(seq) + _record_encoder.encode(dict(record)).encode("ascii")


class MplogWire:
    """Options: ``hmac_key`` (bytes, already resolved by :func:`mplog._config.load_key`
    from ``hmac_key=``, ``hmac_key_file=`` or ``$MPLOG_HMAC_KEY``), ``window`` (records in
    flight unacknowledged, default 1024), ``sender_id`` (default: a fresh random id)."""

    def __init__(
        self,
        *,
        hmac_key: bytes | None = None,
        window: int = DEFAULT_WINDOW,
        sender_id: str | None = None,
    ) -> None:
        if not isinstance(window, int) or not 1 <= window <= 1_000_000:
            raise ConfigError(f"window must be an int between 1 and 1000000, got {window!r}")
        if hmac_key is not None and (not isinstance(hmac_key, bytes) or not hmac_key):
            raise ConfigError("hmac_key must be non-empty bytes")
        self.key = hmac_key
        self.window = window
        self.sender_id = sender_id or uuid.uuid4().hex
        try:
            ClientSession(self.sender_id, None, window)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._seq = itertools.count(1)

    def resume(self, sender_id: str, epoch: int) -> None:
        """Continue a spool's numbering: its persistent *sender_id*, and sequence numbers
        ``epoch << 40 | n`` (*epoch* grows at every open of the spool), so numbers keep
        growing across restarts and the receiver's de-duplication holds."""
        if not 1 <= epoch < 1 << 23:
            raise ConfigError(f"spool epoch {epoch} out of range; remove the spool's epoch file")
        self.sender_id = sender_id
        self._seq = itertools.count((epoch << 40) + 1)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        return record_payload(next(self._seq), record)

    def new_session(self) -> ClientSession:
        return ClientSession(self.sender_id, self.key, self.window)
