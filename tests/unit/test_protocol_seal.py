"""Sealed sessions of the mplog wire: records MACed in batches by an ``S`` frame.

Every test here could fail: each tampers with, drops, moves or splits a sealed batch and
checks that the server takes no record it cannot verify, or checks a documented byte.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct

import pytest

from mplog import ProtocolError
from mplog._wires.mplog import (
    SEAL_SPAN,
    ClientSession,
    Close,
    Hello,
    MplogWire,
    Record,
    ServerConnection,
    record_payload,
)

KEY = b"k" * 32
CN, SN = b"\xa1" * 16, b"\x01" * 16
_LEN = struct.Struct(">L")


def _open(seal_client: bool = True, key: bytes | None = KEY) -> tuple[ClientSession, ServerConnection]:
    c = ClientSession("sender-1", key, window=64, nonce=CN, seal=seal_client)
    s = ServerConnection(key)
    assert s.receive(c.handshake()) == [Hello("sender-1", 64)]
    assert c.receive(s.welcome(0, 64, nonce=SN)) == 0 and c.ready
    return c, s


def _payloads(seqs: range, pad: int = 0) -> list[bytes]:
    return [record_payload(q, {"q": q, "msg": "x" * pad}) for q in seqs]


def _got(events: list[object]) -> list[int]:
    return [e.seq for e in events if isinstance(e, Record)]


def _split_frames(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        (n,) = _LEN.unpack_from(data, at)
        out.append(data[at : at + 4 + n])
        at += 4 + n
    return out


def test_a_signed_session_asks_for_a_seal_and_the_welcome_grants_it() -> None:
    c, s = _open()
    assert c.sealed and s.sealed
    data = c.frames(_payloads(range(1, 6)))
    frames = _split_frames(data)
    assert [f[4:5] for f in frames] == [b"R"] * 5 + [b"S"]  # one MAC for the five
    assert all(len(f) == 4 + 1 + len(p) for f, p in zip(frames, _payloads(range(1, 6)), strict=False))
    assert _got(s.receive(data)) == [1, 2, 3, 4, 5]
    assert c.receive(s.ack(5)) == 5


def test_the_seal_mac_is_the_documented_one() -> None:
    # docs/protocol.md, written from the page: HMAC over the session prefix, the position
    # of the first covered frame, "S", and the covered frames' exact bytes.
    c, _ = _open()
    data = c.frames(_payloads(range(1, 4)))
    frames = _split_frames(data)
    covered = b"".join(frames[:-1])
    prefix = b"mplog2" + bytes([8]) + b"sender-1" + CN + bytes([16]) + SN
    want = hmac.new(KEY, prefix + (1).to_bytes(8, "big") + b"S" + covered, hashlib.sha256).digest()
    assert frames[-1] == _LEN.pack(33) + b"S" + want


def test_records_wait_for_their_seal_and_a_read_may_end_anywhere() -> None:
    c, _ = _open()
    data = c.frames(_payloads(range(1, 4))) + c.frames(_payloads(range(4, 6)))
    first = _end_of_first_batch(data)
    for cut in range(len(data) + 1):
        _, s = _open()  # the same nonces: the same session bytes verify on each
        got = _got(s.receive(data[:cut])) if cut else []
        want = [1, 2, 3, 4, 5] if cut == len(data) else [1, 2, 3] if cut >= first else []
        assert got == want, cut
        rest = _got(s.receive(data[cut:])) if cut < len(data) else []
        assert got + rest == [1, 2, 3, 4, 5], cut


def _end_of_first_batch(data: bytes) -> int:
    at = 0
    for f in _split_frames(data):
        at += len(f)
        if f[4:5] == b"S":
            return at
    raise AssertionError("no seal")


def test_receive_and_receive_batch_agree_on_sealed_sessions() -> None:
    c, s1 = _open()
    _, s2 = _open()
    data = c.frames(_payloads(range(1, 40), pad=50))
    events = s1.receive(data)
    batch = s2.receive_batch(data)
    assert _got(events) == batch.seqs == list(range(1, 40))
    assert [e.record for e in events if isinstance(e, Record)] == [
        json.loads(b) for b in batch.bodies]


@pytest.mark.parametrize("where", ["length", "type", "seq", "json", "seal type", "mac"])
def test_a_changed_byte_in_a_sealed_batch_yields_no_record(where: str) -> None:
    c, s = _open()
    data = bytearray(c.frames(_payloads(range(1, 4))))
    frames = _split_frames(bytes(data))
    second = len(frames[0])  # the second record frame starts here
    at = {"length": second + 3, "type": second + 4, "seq": second + 12,
          "json": second + 16, "seal type": len(data) - 33, "mac": len(data) - 1}[where]
    data[at] ^= 0x01
    try:
        events = s.receive(bytes(data))
    except ProtocolError:
        return
    # a length made longer: the server waits for the rest; the seal made a record frame
    # (S ^ 1 is R): it waits for a seal. Either way it has taken nothing.
    assert where in ("length", "seal type") and _got(events) == [], events
    assert s.receive(b"") == [Close()]


def test_every_bit_flip_of_a_small_sealed_batch_yields_no_record() -> None:
    c0, _ = _open()
    good = c0.frames(_payloads(range(1, 3)))
    for at in range(len(good)):
        for bit in (0x01, 0x80):
            _, s = _open()
            data = bytearray(good)
            data[at] ^= bit
            try:
                events = s.receive(bytes(data))
            except ProtocolError:
                continue
            assert _got(events) == [], (at, bit)


@pytest.mark.parametrize("change", ["drop a record", "swap two records", "repeat a record", "drop the seal then seal again"])
def test_moved_dropped_or_repeated_frames_under_a_seal_are_refused(change: str) -> None:
    c, s = _open()
    frames = _split_frames(c.frames(_payloads(range(1, 4))))
    records, seal = frames[:-1], frames[-1]
    if change == "drop a record":
        data = records[0] + records[2] + seal
    elif change == "swap two records":
        data = records[1] + records[0] + records[2] + seal
    elif change == "repeat a record":
        data = records[0] + records[0] + records[1] + records[2] + seal
    else:
        later = _split_frames(c.frames(_payloads(range(4, 5))))
        data = b"".join(records) + later[0] + later[1]  # the first seal left out
    with pytest.raises(ProtocolError, match="seal with a wrong HMAC"):
        s.receive(data)


def test_a_batch_replayed_on_another_connection_is_refused() -> None:
    c, _ = _open()
    data = c.frames(_payloads(range(1, 4)))
    s = ServerConnection(KEY)
    other = ClientSession("sender-1", KEY, 64, nonce=b"\xb2" * 16, seal=True)
    s.receive(other.handshake())
    s.welcome(0, 64, nonce=SN)
    with pytest.raises(ProtocolError, match="seal with a wrong HMAC"):
        s.receive(data)


def test_unsealed_records_at_eof_are_never_taken() -> None:
    c, s = _open()
    data = c.frames(_payloads(range(1, 4)))
    assert s.receive(data[:-33]) == []  # everything but the seal
    assert s.receive(b"") == [Close()]


def test_a_seal_covering_nothing_and_a_malformed_seal_are_refused() -> None:
    _, s = _open()
    with pytest.raises(ProtocolError, match="covers no record"):
        s.receive(_LEN.pack(33) + b"S" + bytes(32))
    c, s = _open()
    frames = _split_frames(c.frames(_payloads(range(1, 2))))
    with pytest.raises(ProtocolError, match="malformed seal"):
        s.receive(frames[0] + _LEN.pack(5) + b"S" + bytes(4))


def test_more_than_the_seal_span_unsealed_is_refused_before_it_is_all_buffered() -> None:
    c, s = _open()
    frame = _split_frames(c.frames(_payloads(range(1, 2), pad=1000)))[0]
    count = SEAL_SPAN // len(frame) + 1
    with pytest.raises(ProtocolError, match="without a seal"):
        s.receive(frame * count)  # never sealed, and more than a seal may cover


def test_a_sender_seals_every_span_and_one_big_record_alone() -> None:
    c, s = _open()
    payloads = _payloads(range(1, 200), pad=3000) + _payloads(range(200, 201), pad=900_000)
    data = c.frames(payloads)
    frames = _split_frames(data)
    spans, size = [], 0
    for f in frames:
        if f[4:5] == b"S":
            spans.append(size)
            size = 0
        else:
            size += len(f)
    assert len(spans) >= 3 and max(spans[:-1]) <= SEAL_SPAN and spans[-1] > SEAL_SPAN
    assert _got(s.receive(data)) == list(range(1, 201))


def test_close_must_follow_a_seal_and_is_macd_itself() -> None:
    c, s = _open()
    assert _got(s.receive(c.frames(_payloads(range(1, 3))))) == [1, 2]
    assert s.receive(c.close_frame()) == [Close()]
    c, s = _open()
    record = _split_frames(c.frames(_payloads(range(1, 2))))[0]
    with pytest.raises(ProtocolError, match="never sealed"):
        s.receive(record + c.close_frame())


def test_a_collector_that_does_not_seal_gets_a_mac_per_frame() -> None:
    # An older collector ignores "seal" and its welcome does not grant it: the session
    # then MACs every frame, as version 2 always did.
    c = ClientSession("sender-1", KEY, window=64, nonce=CN, seal=True)
    s = ServerConnection(KEY)
    s.receive(c.handshake())
    s._seal_asked = False  # what an older collector's hello parsing amounts to
    c.receive(s.welcome(0, 64, nonce=SN))
    assert not c.sealed and not s.sealed
    data = c.frames(_payloads(range(1, 4)))
    assert [f[4:5] for f in _split_frames(data)] == [b"R"] * 3
    assert all(len(f) == 4 + 1 + len(p) + 32 for f, p in zip(_split_frames(data), _payloads(range(1, 4)), strict=True))
    assert _got(s.receive(data)) == [1, 2, 3]


def test_without_a_key_nothing_is_sealed_and_a_seal_is_refused() -> None:
    c, s = _open(key=None)
    assert not c.sealed and not s.sealed
    assert _got(s.receive(c.frames(_payloads(range(1, 3))))) == [1, 2]
    with pytest.raises(ProtocolError, match="unknown frame type"):
        s.receive(_LEN.pack(33) + b"S" + bytes(32))


def test_the_wire_asks_for_sealed_sessions() -> None:
    wire = MplogWire(hmac_key=KEY)
    c = wire.new_session()
    s = ServerConnection(KEY)
    s.receive(c.handshake())
    c.receive(s.welcome(0, 64, nonce=SN))
    assert c.sealed


def test_a_welcome_granting_a_seal_nobody_asked_for_is_refused() -> None:
    # The hello is not MACed: someone on the path may add "seal" to it. The client sees
    # the (MACed) welcome grant what it never asked, and stops, rather than talk past it.
    c = ClientSession("sender-1", KEY, window=64, nonce=CN, seal=False)
    hello = c.handshake()
    s = ServerConnection(KEY)
    s.receive(hello)
    s._seal_asked = True  # what a hello with "seal": true added on the way amounts to
    with pytest.raises(ProtocolError, match="did not ask for"):
        c.receive(s.welcome(0, 64, nonce=SN))
    assert not c.ready
