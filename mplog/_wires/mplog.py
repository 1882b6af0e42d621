"""``wire="mplog"``: mplog's own protocol, version 2 (``docs/protocol.md``), sans-IO.

Both sides live here: :class:`ClientSession` and :class:`MplogWire` (the sender), and
:class:`ServerConnection` (the collector).

Rules this module keeps:

- Bytes in, events out; frames out as bytes. No sockets, no clocks, no threads. The
  per-connection nonces come in as arguments (``ServerConnection.welcome(nonce=...)``,
  ``ClientSession(nonce=...)``); only the :class:`MplogWire` factory draws one, through an
  attribute tests can replace.
- Every length is checked against the frame limit before anything is buffered for it.
- A peer that breaks the protocol gets :class:`ProtocolError` naming what it did; nothing
  else is ever raised for received bytes (the decoders are fuzzed for that).
- With a key, no event is produced for a frame whose MAC does not verify, and every MAC
  binds the frame to the protocol version, the sender, both nonces of this connection and
  the frame's position on it: a frame replayed, reordered or spliced from any other
  place is refused.
- Data only: record bodies are JSON objects. Nothing here unpickles anything.

Stream layout (both directions after the client's 8-byte preamble)::

    preamble (client -> server, once) = b"MPLG" 0x02 0x00 0x00 0x00
    frame = length:u32be || type:u8 || body || [mac: 32 bytes, with a key]
    mac   = HMAC-SHA256(key, b"mplog2" || u8 len(sender) || sender || client_nonce:16
                             || u8 len(server_nonce) || server_nonce || position:u64be
                             || type || body)

Client frames: ``H`` hello (JSON, never MACed; with a key it carries ``proof``), ``R``
record (seq:u64be || JSON object), ``S`` seal, ``C`` close. Server frames: ``W`` welcome
(JSON, with the server nonce), ``A`` ack (seq:u64be, cumulative), ``E`` error (UTF-8).

Sealed sessions (a signed hello with ``"seal": true``, a welcome that says the same):
record frames carry no MAC; an ``S`` frame after them carries one MAC over their exact
bytes, and the server takes none of them before it verifies::

    seal mac = HMAC-SHA256(key, prefix || position of the first covered frame:u64be
                                || b"S" || the covered frames, length prefixes included)

One MAC per batch instead of one per record: the collector's cost of HMAC drops from
about 2 µs per record to the hashing of the bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import struct
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError, ProtocolError, RefusedError, RemoteProtocolError
from .._limits import MPLOG_PAYLOAD, WIRE_FRAME
from .._text import one_line

__all__ = [
    "EPOCH_SHIFT",
    "MAC_LABEL",
    "MAGIC",
    "MAX_FRAME",
    "MIN_FRAME_LIMIT",
    "NONCE_SIZE",
    "SEQ_LIMIT",
    "UNSENT_KEYS",
    "VERSION",
    "Ack",
    "ClientSession",
    "Close",
    "Hello",
    "MplogWire",
    "Record",
    "RecordBatch",
    "SEAL_SPAN",
    "ServerConnection",
    "hello_proof",
    "record_payload",
    "session_prefix",
]

VERSION = 2
MAGIC = b"MPLG" + bytes([VERSION, 0, 0, 0])
#: The first bytes of every MAC input: the protocol and its version, so that no MAC of
#: another version (v1 MACed ``type || body``) or another protocol can be reused here.
MAC_LABEL = b"mplog2"
#: Largest frame (type + body + MAC) either side accepts by default: 1 MiB. A record with a
#: long traceback is a few KiB; the limit is what bounds a connection's memory.
MAX_FRAME = WIRE_FRAME
#: The smallest frame limit a server may be given: a hello (sender, nonce, proof) is
#: under 300 bytes, and an error frame of 4096 bytes is cut, not refused.
MIN_FRAME_LIMIT = 1024
MAC_SIZE = 32
#: The client's nonce is exactly this long; the server's at least this long (at most 64).
#: 128 random bits: a nonce is never drawn twice in the life of a key.
NONCE_SIZE = 16
MAX_NONCE = 64
#: Default number of records a client may have unacknowledged (the server may lower it).
DEFAULT_WINDOW = 1024
#: Every sequence number is below 2**63: the sender numbers records 1, 2, ... or, with a
#: disk spool, ``epoch << 40 | n`` with ``epoch < 2**23``. Anything else is refused, so a
#: forged number cannot be as large as the format allows.
SEQ_LIMIT = 1 << 63
#: ``seq >> EPOCH_SHIFT`` is the spool epoch of a record (0 without a spool).
EPOCH_SHIFT = 40
#: Longest error text a server sends (in bytes, UTF-8).
MAX_ERROR = 4096

_SENDER_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_HEX_RE = re.compile(r"(?:[0-9a-f]{2}){1,64}\Z")
_LEN = struct.Struct(">L")
_SEQ = struct.Struct(">Q")
_POS = struct.Struct(">Q")
_R = b"R"
_S = b"S"
#: A seal covers frames totalling at most this many bytes (length prefixes included), or
#: a single frame of any accepted size: what a server holds unverified per connection is
#: bounded as a partial frame is. Senders seal every batch they write (<= 256 KiB).
SEAL_SPAN = 256 * 1024

#: What a version-1 peer is told (in a frame it can read) and what it raises with.
V1_REFUSAL = (
    f"this collector speaks mplog wire version {VERSION}; upgrade the sender (it speaks version 1)"
)
#: The text a version-1 collector answers a version-2 preamble with.
_V1_PREAMBLE_ERROR = "client did not start with the mplog preamble"


def session_prefix(sender: str, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """The start of every MAC input on one connection (see ``docs/protocol.md``)."""
    s = sender.encode("ascii")
    return b"".join((MAC_LABEL, bytes([len(s)]), s, client_nonce,
                     bytes([len(server_nonce)]), server_nonce))


def hello_proof(key: bytes, sender: str, client_nonce: bytes) -> bytes:
    """The hello's ``proof``: the MAC of an empty ``H`` frame at position 0 before the
    server has chosen its nonce (an empty server nonce). It proves the key early; it is
    replayable, which is harmless because every later frame binds the server's nonce."""
    data = session_prefix(sender, client_nonce, b"") + _POS.pack(0) + b"H"
    return hmac.new(key, data, "sha256").digest()


class _SessionMac:
    """HMAC-SHA256 (RFC 2104) of ``prefix || data``, with the key schedule and the session
    prefix hashed once: each frame then costs two copies of hashlib states and three
    updates. (``hmac.HMAC.copy()`` does the same through a Python wrapper, about 1 us
    more per frame; tests check the result equals ``hmac.new(key, prefix + data)``.)"""

    __slots__ = ("_inner", "_outer")

    _BLOCK = 64  # SHA-256's block size, in bytes

    def __init__(self, key: bytes, sender: str, client_nonce: bytes, server_nonce: bytes) -> None:
        if len(key) > self._BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(self._BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._inner.update(session_prefix(sender, client_nonce, server_nonce))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def mac(self, position: int, kind: bytes, body: bytes | memoryview) -> bytes:
        inner = self._inner.copy()
        inner.update(_POS.pack(position) + kind)
        inner.update(body)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def _v1_mac(key: bytes, data: bytes) -> bytes:
    # Version 1's MAC (type || body), only to sign the refusal a v1 sender must be able to read.
    return hmac.new(key, data, "sha256").digest()


class _Splitter:
    """Split ``length || data`` frames, the length checked before anything is buffered."""

    def __init__(self, who: str, limit: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._who = who
        self._limit = limit

    def feed(self, data: bytes) -> None:
        self._buf += data

    def take(self, data: bytes) -> bytes:
        """What is buffered, then *data*, as one bytes object; the buffer is emptied
        (the caller puts back what it leaves)."""
        if not self._buf:
            return data
        buf = bytes(self._buf) + data
        self._buf.clear()
        return buf

    def next(self) -> bytes | None:
        """The next whole frame's ``type || body || [mac]``, or None until it is whole."""
        buf = self._buf
        if len(buf) < 4:
            return None
        (n,) = _LEN.unpack_from(buf)
        if n > self._limit:
            raise RemoteProtocolError(
                f"{self._who} sent a frame of {n} bytes (limit {self._limit})"
            )
        if n < 1:
            raise RemoteProtocolError(f"{self._who} sent an empty frame")
        if len(buf) - 4 < n:
            return None
        data = bytes(buf[4 : 4 + n])
        del buf[: 4 + n]
        return data


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what} is not a JSON object")
    return value


def _hex_field(value: object, what: str, min_size: int, max_size: int) -> bytes:
    if not isinstance(value, str) or not _HEX_RE.match(value) or not (
        min_size <= len(value) // 2 <= max_size
    ):
        size = f"{min_size}" if min_size == max_size else f"{min_size} to {max_size}"
        raise RemoteProtocolError(f"{what} must be {size} bytes in lowercase hex")
    return bytes.fromhex(value)


def _proof_ok(proof: object, expected: bytes) -> bool:
    # compare_digest raises TypeError on a str with non-ASCII characters: check first.
    return (isinstance(proof, str) and proof.isascii()
            and hmac.compare_digest(proof, expected.hex()))


def _split_mac(frame: bytes, who: str) -> tuple[bytes, bytes, bytes]:
    if len(frame) < 1 + MAC_SIZE:
        raise RemoteProtocolError(f"{who} sent a frame too short for its MAC")
    return frame[:1], frame[1:-MAC_SIZE], frame[-MAC_SIZE:]


# -- events the server gets ----------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """A client introduced itself: answer with :meth:`ServerConnection.welcome`."""

    sender: str
    window: int


@dataclass(frozen=True)
class Record:
    """One record, its MAC verified when the connection is signed."""

    seq: int
    record: dict[str, Any]


@dataclass(frozen=True)
class Close:
    """The client closed (a ``C`` frame, or EOF)."""


@dataclass(frozen=True)
class Ack:
    seq: int


class RecordBatch:
    """What :meth:`ServerConnection.receive_batch` got from one read: the record frames
    as ``seqs[i]`` and ``bodies[i]`` (the JSON object's bytes, **not parsed yet**: the
    caller must check each is one JSON object, e.g. with :func:`record_object`), a
    :class:`Hello` to answer, or the client's close. A hello comes alone (nothing may
    follow it before the welcome); a close comes last."""

    __slots__ = ("bodies", "close", "hello", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.bodies: list[bytes] = []
        self.hello: Hello | None = None
        self.close = False


def record_object(body: bytes) -> dict[str, Any]:
    """The record a body of :class:`RecordBatch` holds, or ProtocolError (refused with
    the words :meth:`ServerConnection.receive` uses for a record that is not one JSON
    object)."""
    return _json_object(body, "record")


class ServerConnection:
    """The server side of one connection.

    ``receive(data)`` returns events (:class:`Hello`, :class:`Record`, :class:`Close`);
    answer a Hello with :meth:`welcome` (or :meth:`error`), and records with :meth:`ack`
    once they are written. Every frame these methods return must be sent, in order (the
    MAC binds each to its position).

    Args:
        key: the collector's HMAC key, or None (then the collector trusts its senders).
        window: the most records a client may have unacknowledged.
        max_frame: the largest frame accepted (at least :data:`MIN_FRAME_LIMIT`).

    A version-1 client is refused with :data:`V1_REFUSAL`, raised as ProtocolError once
    its hello is in; :meth:`error` then frames the refusal so that client can read it.
    """

    def __init__(
        self, key: bytes | None = None, window: int = DEFAULT_WINDOW, *, max_frame: int = MAX_FRAME,
    ) -> None:
        if not isinstance(max_frame, int) or max_frame < MIN_FRAME_LIMIT:
            raise ValueError(f"max_frame must be an int >= {MIN_FRAME_LIMIT}, got {max_frame!r}")
        self._key = key
        self._window = window
        self._pre = bytearray()
        self._split = _Splitter("client", max_frame)
        # preamble -> hello -> welcome (waiting for ours) -> open -> closed; or v1.
        self._state = "preamble"
        self._client_nonce = b""
        self._mac: _SessionMac | None = None
        self._in_pos = 1  # the hello was client frame 0
        self._out_pos = 0
        self._v1_key: bytes | None = None
        #: The client asked for a sealed session (its hello); it is one once welcomed.
        self._seal_asked = False
        #: Records carry no MAC; ``S`` frames seal them in batches (see the module doc).
        self.sealed = False
        # In the buffer (which starts at the first frame the next seal covers): how many
        # bytes of whole record frames were already looked at, and how many frames: the
        # next read goes on from there instead of walking them again.
        self._scanned = 0
        self._covered = 0
        self.sender: str | None = None
        self.last_seq = 0

    def receive(self, data: bytes) -> list[Hello | Record | Close]:
        """Feed bytes read from the client (``b""``: EOF). Raises ProtocolError."""
        if not data:
            return [Close()]
        if self._state == "preamble":
            data = self._preamble(data)
            if self._state == "preamble":
                return []
        if self._state == "open" and self.sealed:
            batch = self._sealed_batch(data)
            pairs = zip(batch.seqs, batch.bodies, strict=True)
            events: list[Hello | Record | Close] = [
                Record(seq, record_object(body)) for seq, body in pairs]
            return [*events, Close()] if batch.close else events
        self._split.feed(data)
        if self._state == "v1":
            self._refuse_v1()
            return []
        events = []
        while (frame := self._split.next()) is not None:
            state = self._state
            if state == "open":
                events.append(self._frame(frame))
            elif state == "hello":
                if frame[:1] != b"H":
                    raise RemoteProtocolError("client sent a frame before its hello")
                events.append(self._hello(frame[1:]))
                self._state = "welcome"
            elif state == "welcome":
                raise RemoteProtocolError("client sent a frame before the server's welcome")
            else:
                raise RemoteProtocolError("client sent a frame after its close")
        return events

    def receive_batch(self, data: bytes) -> RecordBatch:
        """:meth:`receive`, with record frames left unparsed: every check of
        :meth:`receive` (frame length before buffering, MAC, type, seq range and order,
        close), but a record's JSON body is returned as bytes for the caller to
        validate (:func:`record_object`): a collector can then write the sender's bytes
        instead of parsing and re-encoding them. The frames of one read are split in
        place, without a copy of the buffer per frame. Raises ProtocolError; after one,
        nothing of this read may be used (as with :meth:`receive`)."""
        batch = RecordBatch()
        if self._state != "open" or not data:
            # The handshake (or EOF, or a peer past its close): rare, the general path.
            for ev in self.receive(data):
                if isinstance(ev, Hello):
                    batch.hello = ev
                elif isinstance(ev, Close):
                    batch.close = True
                else:  # receive() parses records only in the open state
                    raise AssertionError("a record before the welcome")
            return batch
        if self.sealed:
            return self._sealed_batch(data)
        split = self._split
        buf = split.take(data)  # with the partial frame left by the last read
        view = memoryview(buf)
        limit = split._limit
        mac = self._mac
        macsize = MAC_SIZE if mac is not None else 0
        seqs, bodies = batch.seqs, batch.bodies
        add_seq, add_body = seqs.append, bodies.append
        last = self.last_seq
        in_pos = self._in_pos
        unpack_len, unpack_seq, pack_pos = _LEN.unpack_from, _SEQ.unpack_from, _POS.pack
        if mac is not None:
            inner_copy, outer_copy = mac._inner.copy, mac._outer.copy
        compare = hmac.compare_digest
        shortest = 1 + macsize + _SEQ.size + 2  # a record frame's type, seq and "{}"
        closed = False
        end = len(buf)
        pos = 0
        try:
            while end - pos >= 4:
                (n,) = unpack_len(buf, pos)
                stop = pos + 4 + n
                if n > limit or n < 1 or stop > end or closed:
                    # The rare cases, checked in this order, as receive() does.
                    if n > limit:
                        raise RemoteProtocolError(
                            f"client sent a frame of {n} bytes (limit {limit})")
                    if n < 1:
                        raise RemoteProtocolError("client sent an empty frame")
                    if stop > end:
                        break  # not whole yet: kept for the next read
                    raise RemoteProtocolError("client sent a frame after its close")
                if mac is not None:
                    # Verified before anything of the frame is looked at (_SessionMac.mac,
                    # inline: this runs per frame). The MAC covers type || body, which
                    # lie together in the frame.
                    if n < 1 + MAC_SIZE:
                        raise RemoteProtocolError("client sent a frame too short for its MAC")
                    inner = inner_copy()
                    inner.update(pack_pos(in_pos))
                    inner.update(view[pos + 4 : stop - MAC_SIZE])
                    outer = outer_copy()
                    outer.update(inner.digest())
                    if not compare(view[stop - MAC_SIZE : stop], outer.digest()):
                        raise RemoteProtocolError(
                            "client sent a frame with a wrong HMAC (tampered, or replayed or "
                            "spliced from another connection or position)"
                        )
                    in_pos += 1
                kind = buf[pos + 4]
                if kind == 82:  # b"R"
                    if n < shortest:
                        raise RemoteProtocolError("client sent a record frame too short")
                    (seq,) = unpack_seq(buf, pos + 5)
                    if not last < seq < SEQ_LIMIT:  # last >= 0: so also 0 < seq
                        if not 0 < seq < SEQ_LIMIT:
                            raise RemoteProtocolError(
                                f"client sent seq {seq}, outside 1 .. 2**63-1")
                        raise RemoteProtocolError(f"client sent seq {seq} after {last}")
                    last = seq
                    add_seq(seq)
                    add_body(buf[pos + 13 : stop - macsize])
                elif kind == 67:  # b"C"
                    closed = batch.close = True
                else:
                    raise RemoteProtocolError(
                        f"client sent unknown frame type {bytes([kind])!r}")
                pos = stop
        finally:
            self.last_seq = last
            self._in_pos = in_pos
            if closed:
                self._state = "closed"
        if pos < end:
            split._buf += buf[pos:] if pos else buf
        return batch

    def _sealed_batch(self, data: bytes) -> RecordBatch:
        """:meth:`receive_batch` for a sealed session: the records of every whole batch
        whose seal verifies; the frames after the last seal wait in the buffer (they are
        nothing until sealed). Checks, in order, per frame: its length (before buffering),
        its type, the span its seal would cover; per seal: the MAC over the covered bytes,
        then every covered record's length, seq range and order."""
        batch = RecordBatch()
        split = self._split
        buf = split.take(data)  # with the unsealed frames left by the last read
        mac = self._mac
        assert mac is not None  # sealed implies signed
        view = memoryview(buf)
        limit = split._limit
        unpack_len, unpack_seq = _LEN.unpack_from, _SEQ.unpack_from
        shortest = 1 + _SEQ.size + 2  # a record frame's type, seq and "{}"
        seqs, bodies = batch.seqs, batch.bodies
        last = self.last_seq
        in_pos = self._in_pos
        end = len(buf)
        start = 0  # the first frame the next seal covers
        scan, covered = self._scanned, self._covered  # frames since the last seal
        try:
            while end - scan >= 4:
                (n,) = unpack_len(buf, scan)
                if n > limit:
                    raise RemoteProtocolError(f"client sent a frame of {n} bytes (limit {limit})")
                if n < 1:
                    raise RemoteProtocolError("client sent an empty frame")
                stop = scan + 4 + n
                if stop > end:
                    break  # not whole yet: kept for the next read
                if batch.close:
                    raise RemoteProtocolError("client sent a frame after its close")
                kind = buf[scan + 4]
                if kind == 82:  # b"R": covered by the next seal
                    if covered and stop - start > SEAL_SPAN:
                        raise RemoteProtocolError(
                            f"client sent more than {SEAL_SPAN} bytes of records without a seal")
                    covered += 1
                    scan = stop
                    continue
                if kind == 83:  # b"S"
                    if n != 1 + MAC_SIZE or not covered:
                        raise RemoteProtocolError(
                            "client sent a malformed seal" if covered else
                            "client sent a seal that covers no record")
                    inner = mac._inner.copy()
                    inner.update(_POS.pack(in_pos) + _S)
                    inner.update(view[start:scan])
                    outer = mac._outer.copy()
                    outer.update(inner.digest())
                    if not hmac.compare_digest(view[scan + 5 : stop], outer.digest()):
                        raise RemoteProtocolError(
                            "client sent a seal with a wrong HMAC (records tampered with, or "
                            "replayed or spliced from another connection or position)"
                        )
                    in_pos += covered + 1
                    at = start
                    while at < scan:  # verified: now look at the records
                        (k,) = unpack_len(buf, at)
                        if k < shortest:
                            raise RemoteProtocolError("client sent a record frame too short")
                        (seq,) = unpack_seq(buf, at + 5)
                        if not last < seq < SEQ_LIMIT:
                            if not 0 < seq < SEQ_LIMIT:
                                raise RemoteProtocolError(
                                    f"client sent seq {seq}, outside 1 .. 2**63-1")
                            raise RemoteProtocolError(f"client sent seq {seq} after {last}")
                        last = seq
                        seqs.append(seq)
                        bodies.append(buf[at + 13 : at + 4 + k])
                        at += 4 + k
                    start = scan = stop
                    covered = 0
                    continue
                if kind == 67:  # b"C": MACed on its own, after a seal
                    if covered:
                        raise RemoteProtocolError("client closed with records it never sealed")
                    _, _, in_pos = _open(buf[scan + 4 : stop], "client", mac, in_pos)
                    batch.close = True
                    start = scan = stop
                    continue
                raise RemoteProtocolError(f"client sent unknown frame type {bytes([kind])!r}")
        finally:
            self.last_seq = last
            self._in_pos = in_pos
            if batch.close:
                self._state = "closed"
        self._scanned, self._covered = scan - start, covered
        if start < end:
            split._buf += buf[start:] if start else buf
        return batch

    def _preamble(self, data: bytes) -> bytes:
        need = len(MAGIC) - len(self._pre)
        self._pre += data[:need]
        pre = bytes(self._pre)
        if not pre.startswith(b"MPLG"[: len(pre)]) or any(pre[5:]):
            raise RemoteProtocolError("client did not start with the mplog preamble")
        if len(pre) < len(MAGIC):
            return b""
        version = pre[4]
        if version == 1:
            self._state = "v1"
        elif version != VERSION:
            hint = "; upgrade the collector" if version > VERSION else ""
            raise RemoteProtocolError(
                f"client speaks mplog wire version {version}; this collector speaks "
                f"version {VERSION}{hint}"
            )
        else:
            self._state = "hello"
        return data[need:]

    def _refuse_v1(self) -> None:
        # Wait for the v1 hello: it says whether the sender checks MACs on what we send,
        # and only a refusal it can verify shows the sender our reason.
        frame = self._split.next()
        if frame is None:
            return
        if frame[:1] == b"H" and self._key is not None:
            try:
                hello = _json_object(frame[1:], "hello")
            except ProtocolError:
                hello = {}
            sender = hello.get("sender")
            if hello.get("hmac") is True and isinstance(sender, str) and _proof_ok(
                hello.get("proof"), _v1_mac(self._key, b"H" + sender.encode())
            ):
                self._v1_key = self._key
        raise RemoteProtocolError(V1_REFUSAL)

    def _hello(self, body: bytes) -> Hello:
        # The hello itself is never MACed; it says whether everything after it is.
        hello = _json_object(body, "hello")
        if hello.get("version") != VERSION:
            raise RemoteProtocolError(
                f"client hello says version {hello.get('version')!r} after a version "
                f"{VERSION} preamble"
            )
        sender = hello.get("sender")
        if not isinstance(sender, str) or not _SENDER_RE.match(sender):
            raise RemoteProtocolError("hello: 'sender' must be 1-64 of [A-Za-z0-9_.:-]")
        nonce = _hex_field(hello.get("nonce"), "hello: 'nonce'", NONCE_SIZE, NONCE_SIZE)
        window = hello.get("window", DEFAULT_WINDOW)
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise RemoteProtocolError("hello: 'window' must be a positive int")
        signed = hello.get("hmac", False)
        if not isinstance(signed, bool):
            raise RemoteProtocolError("hello: 'hmac' must be true or false")
        if signed:
            if self._key is None:
                raise RemoteProtocolError(
                    "client signs its frames but this collector has no HMAC key"
                )
            if not _proof_ok(hello.get("proof"), hello_proof(self._key, sender, nonce)):
                raise RemoteProtocolError("client hello has a wrong HMAC (different key)")
        elif self._key is not None:
            raise RemoteProtocolError("this collector requires HMAC-signed frames")
        seal = hello.get("seal", False)
        if not isinstance(seal, bool):
            raise RemoteProtocolError("hello: 'seal' must be true or false")
        self._seal_asked = seal and signed
        self.sender = sender
        self._client_nonce = nonce
        return Hello(sender, min(window, self._window))

    def _frame(self, frame: bytes) -> Record | Close:
        kind, body, self._in_pos = _open(frame, "client", self._mac, self._in_pos)
        if kind == _R:
            if len(body) < _SEQ.size + 2:
                raise RemoteProtocolError("client sent a record frame too short")
            (seq,) = _SEQ.unpack_from(body)
            if not 0 < seq < SEQ_LIMIT:
                raise RemoteProtocolError(f"client sent seq {seq}, outside 1 .. 2**63-1")
            if seq <= self.last_seq:
                raise RemoteProtocolError(f"client sent seq {seq} after {self.last_seq}")
            self.last_seq = seq
            return Record(seq, _json_object(body[_SEQ.size :], "record"))
        if kind == b"C":
            self._state = "closed"
            return Close()
        raise RemoteProtocolError(f"client sent unknown frame type {kind!r}")

    def _out(self, kind: bytes, body: bytes) -> bytes:
        data = kind + body
        if self._mac is not None:
            data += self._mac.mac(self._out_pos, kind, body)
            self._out_pos += 1
        return _LEN.pack(len(data)) + data

    def welcome(self, acked: int, window: int, *, nonce: bytes) -> bytes:
        """Answer the hello. *acked*: the highest seq of this sender already written;
        *window*: the client's window (at most the hello's); *nonce*: at least
        :data:`NONCE_SIZE` fresh random bytes (``os.urandom(16)``), never used before."""
        if self._state != "welcome":
            raise RuntimeError("welcome() answers a hello, once")
        if not isinstance(nonce, bytes) or not NONCE_SIZE <= len(nonce) <= MAX_NONCE:
            raise ValueError(f"the server nonce must be {NONCE_SIZE} to {MAX_NONCE} bytes")
        assert self.sender is not None
        welcome: dict[str, Any] = {
            "version": VERSION, "acked": acked, "window": window, "nonce": nonce.hex()}
        if self._seal_asked:
            welcome["seal"] = True
        body = json.dumps(welcome).encode()
        if self._key is not None:
            self._mac = _SessionMac(self._key, self.sender, self._client_nonce, nonce)
        self.sealed = self._seal_asked
        self._state = "open"
        return self._out(b"W", body)

    def ack(self, seq: int) -> bytes:
        """Every record of this connection with a seq up to *seq* is written."""
        if self._state not in ("open", "closed"):
            raise RuntimeError("ack() before the welcome")
        return self._out(b"A", _SEQ.pack(seq))

    def error(self, reason: str) -> bytes:
        """A refusal the client can read (MACed once the connection is signed); the
        caller closes the connection after sending it."""
        body = reason.encode("utf-8", "replace")[:MAX_ERROR]
        if self._state == "v1":
            data = b"E" + body
            if self._v1_key is not None:
                data += _v1_mac(self._v1_key, data)
            return _LEN.pack(len(data)) + data
        return self._out(b"E", body)


class ClientSession:
    """The client side of one connection (an acknowledged-wire Session).

    *nonce*: 16 fresh random bytes for this connection; required with a *key* (a signed
    session binds every frame the server sends to it), optional without. *seal*: with a
    key, ask for a sealed session (records MACed in batches, see :meth:`frames`); the
    server's welcome decides (:attr:`sealed`).
    """

    def __init__(
        self, sender: str, key: bytes | None, window: int, *, nonce: bytes | None = None,
        seal: bool = False,
    ) -> None:
        if not _SENDER_RE.match(sender):
            raise ValueError(f"bad sender id {sender!r}")
        if nonce is None:
            if key is not None:
                raise ValueError("a signed session needs a fresh nonce of 16 random bytes")
            nonce = bytes(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"the client nonce must be {NONCE_SIZE} bytes")
        self._sender = sender
        self._key = key
        self._nonce = nonce
        self._window = window
        self._split = _Splitter("server")
        self._mac: _SessionMac | None = None
        self._out_pos = 1  # the hello is client frame 0
        self._in_pos = 1  # the welcome is server frame 0
        self._inflight: deque[int] = deque()
        self._seal = seal and key is not None
        #: The welcome agreed to seal: records go in batches, each ending with a seal.
        self.sealed = False
        self.ready = False
        #: Highest seq the server says it had already written when we connected.
        self.resume_acked = 0
        self.window = window

    def handshake(self) -> bytes:
        """The preamble and the hello."""
        hello: dict[str, Any] = {"version": VERSION, "sender": self._sender,
                                 "hmac": self._key is not None, "window": self._window,
                                 "nonce": self._nonce.hex()}
        if self._key is not None:
            # Proves the key before any record is sent, so a wrong key is refused at once.
            hello["proof"] = hello_proof(self._key, self._sender, self._nonce).hex()
            if self._seal:
                hello["seal"] = True
        body = b"H" + json.dumps(hello).encode()
        return MAGIC + _LEN.pack(len(body)) + body

    def frame(self, payload: bytes) -> bytes:
        """The bytes that send a payload made by :func:`record_payload` (seq already
        inside): its frame, and in a sealed session the seal after it."""
        if self.sealed:
            return self.frames([payload])
        if not self.ready:
            raise RuntimeError("frame() before the server's welcome")
        self._inflight.append(_SEQ.unpack_from(payload)[0])
        mac = self._mac
        if mac is None:
            return _LEN.pack(len(payload) + 1) + _R + payload
        tag = mac.mac(self._out_pos, _R, payload)
        self._out_pos += 1
        return b"".join((_LEN.pack(len(payload) + 1 + MAC_SIZE), _R, payload, tag))

    def frames(self, payloads: list[bytes]) -> bytes:
        """The bytes that send *payloads*, in order: in a sealed session the record frames
        with a seal after each :data:`SEAL_SPAN` bytes of them and after the last (so what
        is written is always sealed); otherwise :meth:`frame` of each."""
        if not self.sealed:  # (sealed only once welcomed: frame() checks readiness)
            return b"".join([self.frame(p) for p in payloads])
        out: list[bytes] = []
        group: list[bytes] = []
        size = 0
        pack_len, seqs = _LEN.pack, self._inflight
        for p in payloads:
            frame = pack_len(len(p) + 1) + _R + p
            if group and size + len(frame) > SEAL_SPAN:
                out.append(self._sealed(group))
                group, size = [], 0
            group.append(frame)
            size += len(frame)
            seqs.append(_SEQ.unpack_from(p)[0])
        if group:
            out.append(self._sealed(group))
        return b"".join(out)

    def _sealed(self, group: list[bytes]) -> bytes:
        """*group* (whole record frames) and the seal that covers them."""
        mac = self._mac
        assert mac is not None
        covered = b"".join(group)
        inner = mac._inner.copy()
        inner.update(_POS.pack(self._out_pos) + _S)
        inner.update(covered)
        outer = mac._outer.copy()
        outer.update(inner.digest())
        self._out_pos += len(group) + 1
        return covered + _LEN.pack(1 + MAC_SIZE) + _S + outer.digest()

    def close_frame(self) -> bytes:
        """``C``, or nothing before the welcome (there is no session to close yet)."""
        if not self.ready:
            return b""
        data = b"C"
        if self._mac is not None:
            data += self._mac.mac(self._out_pos, b"C", b"")
            self._out_pos += 1
        return _LEN.pack(len(data)) + data

    def receive(self, data: bytes) -> int:
        """Feed bytes from the server; the number of records newly acknowledged.
        Raises ProtocolError (the connection is over) for EOF, a refusal or bad bytes."""
        if not data:
            raise RemoteProtocolError("server closed the connection")
        acked = 0
        self._split.feed(data)
        while (frame := self._split.next()) is not None:
            if not self.ready:
                self._before_welcome(frame)
                continue
            kind, body, self._in_pos = _open(frame, "server", self._mac, self._in_pos)
            if kind == b"A":
                if len(body) != _SEQ.size:
                    raise RemoteProtocolError("server sent a malformed ack")
                (seq,) = _SEQ.unpack(body)
                inflight = self._inflight
                while inflight and inflight[0] <= seq:
                    inflight.popleft()
                    acked += 1
            elif kind == b"E":
                raise _refused(_error_text(body))
            elif kind == b"W":
                raise RemoteProtocolError("server sent a second welcome")
            else:
                raise RemoteProtocolError(f"server sent unknown frame type {kind!r}")
        return acked

    def _before_welcome(self, frame: bytes) -> None:
        kind = frame[:1]
        if kind == b"E":
            # A refusal before the welcome cannot be MACed yet (no server nonce); it only
            # ends the connection, which anyone on the path could do anyway.
            text = _error_text(frame[1:])
            if text == _V1_PREAMBLE_ERROR:
                text += (f" (the collector speaks an older mplog wire version; this sender "
                         f"speaks version {VERSION}: upgrade the collector)")
            raise _refused(text)
        if kind != b"W":
            raise RemoteProtocolError(f"server sent frame type {kind!r} before its welcome")
        got = b""
        if self._key is not None:
            _, body, got = _split_mac(frame, "server")
        else:
            body = frame[1:]
        w = _json_object(body, "welcome")
        if w.get("version") != VERSION:
            raise RemoteProtocolError(f"server speaks version {w.get('version')!r}, not {VERSION}")
        acked_seq, window = w.get("acked"), w.get("window")
        if (not isinstance(acked_seq, int) or isinstance(acked_seq, bool) or acked_seq < 0
                or not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise RemoteProtocolError("welcome without a valid 'acked' and 'window'")
        server_nonce = _hex_field(w.get("nonce"), "welcome: 'nonce'", NONCE_SIZE, MAX_NONCE)
        if self._key is not None:
            mac = _SessionMac(self._key, self._sender, self._nonce, server_nonce)
            if not hmac.compare_digest(got, mac.mac(0, b"W", body)):
                raise RemoteProtocolError(
                    "server sent a welcome with a wrong HMAC (a different key, or a "
                    "welcome replayed from another connection)"
                )
            self._mac = mac
            granted = w.get("seal", False)
            if granted is not False and not (granted is True and self._seal):
                raise RemoteProtocolError(
                    "server sent a welcome with a 'seal' this client did not ask for")
            self.sealed = granted
        self.resume_acked = acked_seq
        self.window = min(self.window, window)
        self.ready = True


def _open(frame: bytes, who: str, mac: _SessionMac | None, pos: int) -> tuple[bytes, bytes, int]:
    """(type, body, next position) of a received *frame*, its MAC checked (with *mac*,
    the connection's keyed MAC state, at position *pos*) when the session is signed."""
    if mac is None:
        return frame[:1], frame[1:], pos
    kind, body, got = _split_mac(frame, who)
    if not hmac.compare_digest(got, mac.mac(pos, kind, body)):
        raise RemoteProtocolError(
            f"{who} sent a frame with a wrong HMAC (tampered, or replayed or spliced from "
            "another connection or position)"
        )
    return kind, body, pos + 1


def _refused(text: str) -> ProtocolError:
    # The one place a refusal (an E frame) becomes an exception.
    return RefusedError(text)


def _error_text(body: bytes) -> str:
    return one_line(body.decode("utf-8", "replace"), 500)


_record_encoder = json.JSONEncoder(separators=(",", ":"), default=repr)


#: Keys of a record's ``__dict__`` a receiver drops (``docs/protocol.md``: ``args`` and
#: ``exc_info`` "are absent or null"; ``message`` is ``msg`` again): not sent, so the
#: collector has nothing to cut out of the bytes. Older senders send them (null, and
#: the message); the collector drops them from those records, with the same result.
UNSENT_KEYS = ("args", "exc_info", "message")


def record_payload(seq: int, record: Mapping[str, Any]) -> bytes:
    """The buffered payload of one record: its seq and its JSON object (without the
    :data:`UNSENT_KEYS`)."""
    d = dict(record)
    for key in UNSENT_KEYS:
        d.pop(key, None)
    return _SEQ.pack(seq) + _record_encoder.encode(d).encode("ascii")


class MplogWire:
    """Options: ``hmac_key`` (bytes, already resolved by :func:`mplog._options.load_key`
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
        #: Where each connection's client nonce comes from (the one entropy source of the
        #: client side; tests may replace it).
        self.random_bytes: Callable[[int], bytes] = secrets.token_bytes
        self.sender_id = sender_id or uuid.uuid4().hex
        try:
            ClientSession(self.sender_id, None, window)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        # Even numbers only: a drop report is numbered head - 1, to travel just before
        # the oldest record still unacknowledged (see report_payload).
        self._seq = itertools.count(2, 2)

    #: The largest buffered payload (seq || JSON) this wire carries (mplog._limits).
    max_payload = MPLOG_PAYLOAD

    def resume(self, sender_id: str, epoch: int) -> None:
        """Continue a spool's numbering: its persistent *sender_id*, and sequence numbers
        ``epoch << 40 | n`` (*epoch* grows at every open of the spool), so numbers keep
        growing across restarts and the receiver's de-duplication holds."""
        if not 1 <= epoch < 1 << (63 - EPOCH_SHIFT):
            raise ConfigError(f"spool epoch {epoch} out of range; remove the spool's epoch file")
        self.sender_id = sender_id
        self._seq = itertools.count((epoch << EPOCH_SHIFT) + 2, 2)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        return record_payload(next(self._seq), record)

    def report_payload(self, record: Mapping[str, Any], head: bytes | None) -> bytes | None:
        """The payload of a drop report to be sent just before the buffered payload
        *head*: numbered one below it (records are even, so the number is free), so it
        neither overtakes older records nor is refused as out of order. None (send it
        later) when nothing is buffered: there is no number yet that fits."""
        if head is None or len(head) < _SEQ.size:
            return None
        (seq,) = _SEQ.unpack_from(head)
        return record_payload(seq - 1, record)

    def new_session(self) -> ClientSession:
        """A session for one new connection, with a fresh client nonce; signed sessions
        ask to be sealed (a collector that does not know seals ignores the ask, and the
        session then MACs every frame)."""
        return ClientSession(self.sender_id, self.key, self.window,
                             nonce=self.random_bytes(NONCE_SIZE), seal=True)
