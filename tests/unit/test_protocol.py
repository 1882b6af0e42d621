from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mplog import ProtocolError
from mplog._wires.mplog import (
    MAGIC,
    MAX_FRAME,
    ClientSession,
    Close,
    Hello,
    Record,
    ServerConnection,
    record_payload,
)

KEY = b"k" * 32


def _pair(client_key: bytes | None = None, server_key: bytes | None = None) -> tuple[ClientSession, ServerConnection, list[object]]:
    c = ClientSession("sender-1", client_key, window=8)
    s = ServerConnection(server_key)
    events = s.receive(c.handshake())
    return c, s, events


def test_handshake_and_acks() -> None:
    c, s, events = _pair()
    assert events == [Hello("sender-1", 8)]
    assert c.receive(s.welcome(acked=0, window=4)) == 0
    assert c.ready and c.window == 4
    data = b"".join(c.frame(record_payload(i, {"msg": f"m{i}"})) for i in (1, 2, 3))
    evs = s.receive(data)
    assert [(e.seq, e.record["msg"]) for e in evs if isinstance(e, Record)] == [(1, "m1"), (2, "m2"), (3, "m3")]
    assert c.receive(s.ack(2)) == 2
    assert c.receive(s.ack(3)) == 1
    assert s.receive(c.close_frame()) == [Close()]


def test_byte_by_byte() -> None:
    c = ClientSession("s", None, 8)
    s = ServerConnection()
    stream = c.handshake() + c.frame(record_payload(1, {"a": "b"}))
    events: list[object] = []
    for i in range(len(stream)):
        events += s.receive(stream[i : i + 1])
    assert isinstance(events[0], Hello) and isinstance(events[1], Record)


def test_hmac_right_key() -> None:
    c, s, events = _pair(KEY, KEY)
    assert isinstance(events[0], Hello)
    c.receive(s.welcome(0, 8))
    evs = s.receive(c.frame(record_payload(1, {"x": 1})))
    assert isinstance(evs[0], Record)
    assert c.receive(s.ack(1)) == 1


def test_hmac_wrong_key_refused_at_hello() -> None:
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        _pair(KEY, b"other" * 8)


def test_unsigned_client_refused_by_keyed_server() -> None:
    with pytest.raises(ProtocolError, match="requires HMAC"):
        _pair(None, KEY)


def test_signed_client_refused_by_keyless_server() -> None:
    with pytest.raises(ProtocolError, match="no HMAC key"):
        _pair(KEY, None)


def test_tampered_record_refused() -> None:
    c, s, _ = _pair(KEY, KEY)
    frame = bytearray(c.frame(record_payload(1, {"x": 1})))
    frame[-40] ^= 1
    with pytest.raises(ProtocolError):
        s.receive(bytes(frame))


def test_bad_preamble_and_version() -> None:
    with pytest.raises(ProtocolError, match="preamble"):
        ServerConnection().receive(b"GET / HTTP/1.1\r\n")
    hello = json.dumps({"version": 2, "sender": "s", "hmac": False}).encode()
    frame = len(hello + b"H").to_bytes(4, "big") + b"H" + hello
    with pytest.raises(ProtocolError, match="version"):
        ServerConnection().receive(MAGIC + frame)


def test_oversized_frame_refused_before_buffering() -> None:
    s = ServerConnection()
    with pytest.raises(ProtocolError, match="limit"):
        s.receive(MAGIC + (MAX_FRAME + 1).to_bytes(4, "big"))


def test_seq_must_increase() -> None:
    c, s, _ = _pair()
    s.receive(c.frame(record_payload(5, {})))
    with pytest.raises(ProtocolError, match="seq"):
        s.receive(c.frame(record_payload(5, {})))


def test_server_error_frame_is_reported() -> None:
    c, s, _ = _pair()
    with pytest.raises(ProtocolError, match="go away"):
        c.receive(s.error("go away"))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_server_only_protocol_error(data: bytes) -> None:
    s = ServerConnection()
    try:
        s.receive(MAGIC + data)
        s.receive(data)
    except ProtocolError:
        return


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_fuzz_client_only_protocol_error(data: bytes) -> None:
    c = ClientSession("s", None, 8)
    c.handshake()
    try:
        c.receive(data)
    except ProtocolError:
        return


@given(st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_fuzz_lengths_never_allocate_past_the_limit(lengths: list[int]) -> None:
    s = ServerConnection()
    data = MAGIC + b"".join(n.to_bytes(4, "big") for n in lengths)
    try:
        s.receive(data)
    except ProtocolError:
        return
    assert len(s._split._buf) <= len(data)
