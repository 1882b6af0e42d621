"""The mplog wire, version 2, sans-IO: handshake, acks, HMAC binding, version refusals, fuzz."""

from __future__ import annotations

import hashlib
import hmac
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mplog import ProtocolError
from mplog._errors import RefusedError
from mplog._wires.mplog import (
    MAGIC,
    MAX_FRAME,
    MIN_FRAME_LIMIT,
    V1_REFUSAL,
    ClientSession,
    Close,
    Hello,
    MplogWire,
    Record,
    ServerConnection,
    _SessionMac,
    hello_proof,
    record_payload,
    session_prefix,
)
from tests.unit import mplog_wire_v1 as v1

KEY = b"k" * 32
CN_A, CN_B = b"\xa1" * 16, b"\xb2" * 16  # client nonces
SN_1, SN_2 = b"\x01" * 16, b"\x02" * 16  # server nonces
_LEN = struct.Struct(">L")


def _pair(
    client_key: bytes | None = None, server_key: bytes | None = None, sender: str = "sender-1",
    nonce: bytes = CN_A,
) -> tuple[ClientSession, ServerConnection, list[object]]:
    c = ClientSession(sender, client_key, window=8, nonce=nonce)
    s = ServerConnection(server_key)
    events = s.receive(c.handshake())
    return c, s, events


def _open(
    key: bytes | None = KEY, sender: str = "sender-1", cnonce: bytes = CN_A, snonce: bytes = SN_1,
) -> tuple[ClientSession, ServerConnection]:
    c, s, events = _pair(key, key, sender, cnonce)
    assert events == [Hello(sender, 8)]
    assert c.receive(s.welcome(0, 8, nonce=snonce)) == 0 and c.ready
    return c, s


def _session_bytes(
    key: bytes | None = KEY, sender: str = "sender-1", seqs: range = range(1, 6),
    cnonce: bytes = CN_A, snonce: bytes = SN_1,
) -> tuple[bytes, list[bytes], bytes]:
    """A whole valid client->server session: (preamble + hello, record frames, close)."""
    c = ClientSession(sender, key, 8, nonce=cnonce)
    s = ServerConnection(key)
    head = c.handshake()
    s.receive(head)
    c.receive(s.welcome(0, 8, nonce=snonce))
    frames = [c.frame(record_payload(q, {"msg": f"{sender} {q}", "q": q})) for q in seqs]
    return head, frames, c.close_frame()


def _records(events: list[object]) -> list[tuple[int, object]]:
    return [(e.seq, e.record.get("q")) for e in events if isinstance(e, Record)]


def _doc_mac(
    key: bytes, sender: bytes, cnonce: bytes, snonce: bytes, position: int, kind: bytes,
    body: bytes, label: bytes = b"mplog2",
) -> bytes:
    """The MAC exactly as docs/protocol.md lays out its input (written from the page,
    not from the module's helpers)."""
    data = (label + bytes([len(sender)]) + sender + cnonce + bytes([len(snonce)]) + snonce
            + position.to_bytes(8, "big") + kind + body)
    return hmac.new(key, data, hashlib.sha256).digest()


def _frame(kind: bytes, body: bytes, mac: bytes = b"") -> bytes:
    return _LEN.pack(1 + len(body) + len(mac)) + kind + body + mac


# -- the ordinary session ------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
def test_handshake_records_acks_close(key: bytes | None) -> None:
    c, s = _open(key)
    assert c.window == 8
    data = b"".join(c.frame(record_payload(i, {"q": i})) for i in (1, 2, 3))
    assert _records(s.receive(data)) == [(1, 1), (2, 2), (3, 3)]
    assert c.receive(s.ack(2)) == 2
    assert c.receive(s.ack(3)) == 1
    assert s.receive(c.close_frame()) == [Close()]


def test_welcome_window_and_acked_reach_the_client() -> None:
    c, s, _ = _pair(KEY, KEY)
    c.receive(s.welcome(41230, 4, nonce=SN_1))
    assert c.ready and c.window == 4 and c.resume_acked == 41230


@pytest.mark.parametrize("key", [None, KEY])
def test_byte_by_byte_both_directions(key: bytes | None) -> None:
    c = ClientSession("s", key, 8, nonce=CN_A)
    s = ServerConnection(key)
    events: list[object] = []
    for b in c.handshake():
        events += s.receive(bytes([b]))
    assert events == [Hello("s", 8)]
    welcome = s.welcome(0, 8, nonce=SN_1)
    for b in welcome:
        assert c.receive(bytes([b])) == 0
    assert c.ready
    stream = c.frame(record_payload(1, {"a": "b"})) + c.frame(record_payload(2, {"a": "c"}))
    for b in stream:
        events += s.receive(bytes([b]))
    assert [e.record for e in events if isinstance(e, Record)] == [{"a": "b"}, {"a": "c"}]
    acks = s.ack(1) + s.ack(2)
    assert sum(c.receive(bytes([b])) for b in acks) == 2


def test_trailing_data_is_kept_for_the_next_frame() -> None:
    c, s = _open()
    f1, f2 = c.frame(record_payload(1, {"q": 1})), c.frame(record_payload(2, {"q": 2}))
    assert _records(s.receive(f1 + f2[:7])) == [(1, 1)]
    assert _records(s.receive(f2[7:])) == [(2, 2)]


# -- keys ------------------------------------------------------------------------------------


def test_hmac_wrong_key_refused_at_hello() -> None:
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        _pair(KEY, b"other" * 8)


def test_unsigned_client_refused_by_keyed_server() -> None:
    with pytest.raises(ProtocolError, match="requires HMAC"):
        _pair(None, KEY)


def test_signed_client_refused_by_keyless_server() -> None:
    with pytest.raises(ProtocolError, match="no HMAC key"):
        _pair(KEY, None)


def test_signed_client_refuses_an_unsigned_welcome() -> None:
    # A keyless server (or anyone on the path) cannot make a signed client talk unsigned.
    c = ClientSession("s", KEY, 8, nonce=CN_A)
    c.handshake()
    unsigned = _frame(b"W", json.dumps({"version": 2, "acked": 0, "window": 8, "nonce": SN_1.hex()}).encode())
    with pytest.raises(ProtocolError, match=r"welcome|too short"):
        c.receive(unsigned)
    assert not c.ready


def test_non_ascii_proof_is_a_protocol_error_not_a_crash() -> None:
    # hmac.compare_digest raises TypeError for a str with non-ASCII characters (v1 let it out).
    hello = {"version": 2, "sender": "s", "hmac": True, "window": 8, "nonce": CN_A.hex(), "proof": "é" * 64}
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        ServerConnection(KEY).receive(MAGIC + _frame(b"H", json.dumps(hello).encode()))
    v1_hello = {"version": 1, "sender": "s", "hmac": True, "window": 8, "proof": "é"}
    with pytest.raises(ProtocolError, match="version 2"):
        ServerConnection(KEY).receive(v1.MAGIC + _frame(b"H", json.dumps(v1_hello).encode()))


def test_a_signed_session_needs_a_nonce() -> None:
    with pytest.raises(ValueError, match="nonce"):
        ClientSession("s", KEY, 8)
    with pytest.raises(ValueError, match="nonce"):
        ClientSession("s", KEY, 8, nonce=b"short")
    _, s, _ = _pair()
    with pytest.raises(ValueError, match="nonce"):
        s.welcome(0, 8, nonce=b"\x00" * 15)


def test_wire_draws_a_fresh_nonce_per_session() -> None:
    wire = MplogWire(hmac_key=KEY, sender_id="w")
    drawn: list[int] = []

    def fake(n: int) -> bytes:
        drawn.append(n)
        return bytes([len(drawn)]) * n

    wire.random_bytes = fake
    h1, h2 = wire.new_session().handshake(), wire.new_session().handshake()
    assert drawn == [16, 16]
    assert (b"01" * 16) in h1 and (b"02" * 16) in h2
    real = MplogWire(hmac_key=KEY, sender_id="w")
    assert real.new_session().handshake() != real.new_session().handshake()


# -- the MAC input, field by field -----------------------------------------------------------


def test_mac_layout_is_the_documented_one() -> None:
    c, s, _ = _pair(KEY, KEY, "sender-1", CN_A)
    welcome = s.welcome(7, 8, nonce=SN_1)
    body = welcome[5:-32]
    assert welcome[-32:] == _doc_mac(KEY, b"sender-1", CN_A, SN_1, 0, b"W", body)
    c.receive(welcome)
    payload = record_payload(5, {"q": 5})
    f1, f2 = c.frame(payload), c.frame(record_payload(6, {"q": 6}))
    assert f1 == _frame(b"R", payload, _doc_mac(KEY, b"sender-1", CN_A, SN_1, 1, b"R", payload))
    assert f2[-32:] == _doc_mac(KEY, b"sender-1", CN_A, SN_1, 2, b"R", f2[5:-32])
    assert c.close_frame()[-32:] == _doc_mac(KEY, b"sender-1", CN_A, SN_1, 3, b"C", b"")
    ack = s.ack(6)
    assert ack == _frame(b"A", (6).to_bytes(8, "big"), _doc_mac(KEY, b"sender-1", CN_A, SN_1, 1, b"A", (6).to_bytes(8, "big")))
    hello = json.loads(c.handshake()[len(MAGIC) + 5 :])
    assert bytes.fromhex(hello["proof"]) == _doc_mac(KEY, b"sender-1", CN_A, b"", 0, b"H", b"")
    assert hello_proof(KEY, "sender-1", CN_A).hex() == hello["proof"]
    assert session_prefix("ab", CN_A, SN_1) == b"mplog2\x02ab" + CN_A + b"\x10" + SN_1


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_session_mac_is_hmac_sha256(key: bytes, body: bytes, position: int) -> None:
    # The precomputed RFC 2104 states give exactly hmac.new(key, prefix || data), for keys
    # shorter than, equal to and longer than SHA-256's 64-byte block.
    expected = _doc_mac(key, b"s", CN_A, SN_1, position, b"R", body)
    assert _SessionMac(key, "s", CN_A, SN_1).mac(position, b"R", body) == expected


# Each field of the MAC input changed alone: the record frame built with it is refused.
_FIELDS = {
    "version label": {"label": b"mplog1"},
    "sender": {"sender": b"sender-2"},
    "client nonce": {"cnonce": CN_B},
    "server nonce": {"snonce": SN_2},
    "position": {"position": 2},
    "type": {"kind": b"C"},
    "key": {"key": b"x" * 32},
}


@pytest.mark.parametrize("field", sorted(_FIELDS))
def test_record_mac_covers_each_field(field: str) -> None:
    c, s = _open()
    payload = record_payload(1, {"q": 1})
    args = {"key": KEY, "sender": b"sender-1", "cnonce": CN_A, "snonce": SN_1, "position": 1,
            "kind": b"R", "body": payload, "label": b"mplog2"}
    good = _doc_mac(**args)  # type: ignore[arg-type]
    args.update(_FIELDS[field])
    bad = _doc_mac(**args)  # type: ignore[arg-type]
    assert bad != good
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        s.receive(_frame(b"R", payload, bad))
    # and the real frame, had it come, carries the good one
    assert c.frame(payload) == _frame(b"R", payload, good)


@pytest.mark.parametrize("what", ["seq", "json", "type", "mac"])
def test_flipping_any_byte_of_a_signed_record_is_refused(what: str) -> None:
    c, s = _open()
    frame = bytearray(c.frame(record_payload(1, {"q": 1})))
    at = {"type": 4, "seq": 5 + 7, "json": 5 + 8 + 2, "mac": len(frame) - 1}[what]
    frame[at] ^= 0x01
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        s.receive(bytes(frame))


def test_every_single_bit_flip_of_a_record_frame_yields_no_record() -> None:
    for at in range(60):
        for bit in (0x01, 0x80):
            c, s = _open()
            frame = bytearray(c.frame(record_payload(1, {"q": 1, "msg": "hello"})))
            if at >= len(frame):
                break
            frame[at] ^= bit
            try:
                events = s.receive(bytes(frame))
            except ProtocolError:
                continue
            # a flipped length that is now longer: the server waits for the rest
            assert at < 4 and events == [], (at, bit, events)


def test_a_changed_welcome_is_refused() -> None:
    c, s, _ = _pair(KEY, KEY)
    w = bytearray(s.welcome(0, 8, nonce=SN_1))
    w[-1] ^= 1
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        c.receive(bytes(w))
    assert not c.ready


@pytest.mark.parametrize("what", ["ack", "error"])
def test_a_changed_ack_or_error_is_refused(what: str) -> None:
    c, s = _open()
    c.frame(record_payload(1, {}))
    frame = bytearray(s.ack(1) if what == "ack" else s.error("stop"))
    frame[5] ^= 1
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        c.receive(bytes(frame))


def test_signed_error_after_welcome_shows_its_text() -> None:
    c, s = _open()
    with pytest.raises(RefusedError, match="go away"):
        c.receive(s.error("go away"))


def test_error_text_is_one_escaped_line() -> None:
    c = ClientSession("s", None, 8)
    c.handshake()
    with pytest.raises(ProtocolError) as info:
        c.receive(_frame(b"E", b"bad\nFAKE LINE\x1b[31m"))
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert "bad\\nFAKE LINE" in str(info.value)


# -- replay, splicing, reordering, truncation ------------------------------------------------


def test_replayed_session_into_a_new_connection_writes_nothing() -> None:
    head, frames, close = _session_bytes(seqs=range(1, 201))
    s = ServerConnection(KEY)  # a new connection: the server draws a new nonce
    assert s.receive(head) == [Hello("sender-1", 8)]
    s.welcome(0, 8, nonce=SN_2)
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        s.receive(b"".join(frames) + close)
    assert s.last_seq == 0


def test_replay_after_a_restart_writes_nothing() -> None:
    # A restarted collector has no memory of the session (new output file): the nonce alone
    # refuses the replay, whatever the replay's first record number is.
    head, frames, _ = _session_bytes(seqs=range(1, 4))
    for frame in frames:
        s = ServerConnection(KEY)
        s.receive(head)
        s.welcome(0, 8, nonce=SN_2)
        with pytest.raises(ProtocolError, match="wrong HMAC"):
            s.receive(frame)


def test_splice_records_of_a_after_the_hello_of_b_is_refused() -> None:
    # Even were the server nonce the same (it never is), B's hello does not make A's
    # records B's: the MAC binds the sender.
    _, frames_a, _ = _session_bytes(sender="sender-a", cnonce=CN_A, snonce=SN_1)
    head_b, _, _ = _session_bytes(sender="sender-b", cnonce=CN_A, snonce=SN_1)
    s = ServerConnection(KEY)
    assert s.receive(head_b) == [Hello("sender-b", 8)]
    s.welcome(0, 8, nonce=SN_1)
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        s.receive(frames_a[0])


def test_splice_across_connections_of_one_sender_is_refused() -> None:
    # Same sender, same server nonce, another connection (client nonce): refused.
    _, frames_1, _ = _session_bytes(cnonce=CN_A, snonce=SN_1)
    _, s = _open(cnonce=CN_B, snonce=SN_1)
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        s.receive(frames_1[0])


@pytest.mark.parametrize("order", [[1, 0, 2], [0, 0, 1], [0, 2], [0, 1, 2, 1]])
def test_reordered_dropped_or_repeated_frames_are_refused(order: list[int]) -> None:
    head, frames, _ = _session_bytes(seqs=range(1, 4), snonce=SN_1)
    s = ServerConnection(KEY)
    s.receive(head)
    s.welcome(0, 8, nonce=SN_1)
    got: list[tuple[int, object]] = []
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        for i in order:
            got += _records(s.receive(frames[i]))
    # what came before the first misplaced frame was the true prefix, in order
    assert got == [(q, q) for q in range(1, len(got) + 1)]


def test_reordered_acks_are_refused() -> None:
    c, s = _open()
    for q in (1, 2):
        c.frame(record_payload(q, {}))
    a1, a2 = s.ack(1), s.ack(2)
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        c.receive(a2 + a1)


def test_acks_replayed_from_another_connection_are_refused() -> None:
    c1, s1 = _open(cnonce=CN_A, snonce=SN_1)
    c1.frame(record_payload(1, {}))
    old_ack = s1.ack(1)
    c2, _ = _open(cnonce=CN_B, snonce=SN_1)
    c2.frame(record_payload(1, {}))
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        c2.receive(old_ack)


def test_welcome_replayed_to_another_connection_is_refused() -> None:
    _, s1, _ = _pair(KEY, KEY, nonce=CN_A)
    old = s1.welcome(0, 8, nonce=SN_1)
    c2 = ClientSession("sender-1", KEY, 8, nonce=CN_B)
    c2.handshake()
    with pytest.raises(ProtocolError, match="welcome with a wrong HMAC"):
        c2.receive(old)


@pytest.mark.parametrize("key", [None, KEY])
def test_truncated_session_gives_exactly_the_whole_frames(key: bytes | None) -> None:
    head, frames, close = _session_bytes(key, seqs=range(1, 4))
    body = b"".join(frames) + close
    ends = [sum(len(f) for f in frames[:i]) for i in range(len(frames) + 1)]
    for cut in range(len(body) + 1):
        s = ServerConnection(key)
        s.receive(head)
        s.welcome(0, 8, nonce=SN_1)
        events = s.receive(body[:cut]) if cut else []
        whole = sum(1 for e in ends[1:] if e <= cut)
        assert _records(events) == [(q, q) for q in range(1, whole + 1)], cut
        assert s.receive(b"") == [Close()]  # EOF mid-frame: a close, never a record


# -- what the server refuses outright --------------------------------------------------------


def test_bad_preamble_and_version() -> None:
    with pytest.raises(ProtocolError, match="preamble"):
        ServerConnection().receive(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProtocolError, match="preamble"):
        ServerConnection().receive(b"MPLG\x02\x00\x01\x00")
    hello = json.dumps({"version": 3, "sender": "s", "hmac": False, "nonce": CN_A.hex()}).encode()
    with pytest.raises(ProtocolError, match="version"):
        ServerConnection().receive(MAGIC + _frame(b"H", hello))
    with pytest.raises(ProtocolError, match="version 3; this collector speaks version 2; upgrade the collector"):
        ServerConnection().receive(b"MPLG\x03\x00\x00\x00")


def test_hello_needs_a_nonce() -> None:
    for nonce in (None, "", "ab", CN_A.hex().upper(), "zz" * 16, CN_A.hex() + "00"):
        hello = {"version": 2, "sender": "s", "hmac": False, "window": 8, "nonce": nonce}
        with pytest.raises(ProtocolError, match="nonce"):
            ServerConnection().receive(MAGIC + _frame(b"H", json.dumps(hello).encode()))


def test_oversized_frame_refused_before_buffering() -> None:
    s = ServerConnection()
    with pytest.raises(ProtocolError, match="limit"):
        s.receive(MAGIC + (MAX_FRAME + 1).to_bytes(4, "big"))


def test_max_frame_argument() -> None:
    c, _ = _open(None)
    s = ServerConnection(max_frame=2048)
    s.receive(c.handshake())
    s.welcome(0, 8, nonce=SN_1)
    assert _records(s.receive(c.frame(record_payload(1, {"q": 1, "m": "x" * 1900})))) == [(1, 1)]
    with pytest.raises(ProtocolError, match="limit 2048"):
        s.receive(c.frame(record_payload(2, {"q": 2, "m": "x" * 2100})))
    with pytest.raises(ValueError, match="max_frame"):
        ServerConnection(max_frame=MIN_FRAME_LIMIT - 1)


def test_frames_before_the_welcome_or_after_close_are_refused() -> None:
    _, s, _ = _pair()
    with pytest.raises(ProtocolError, match="before the server's welcome"):
        s.receive(_frame(b"R", record_payload(1, {})))
    c, s = _open(None)
    s.receive(c.close_frame())
    with pytest.raises(ProtocolError, match="after its close"):
        s.receive(_frame(b"R", record_payload(1, {})))
    with pytest.raises(ProtocolError, match="before its hello"):
        ServerConnection().receive(MAGIC + _frame(b"R", record_payload(1, {})))


def test_local_misuse_is_not_a_protocol_error() -> None:
    c = ClientSession("s", None, 8)
    with pytest.raises(RuntimeError):
        c.frame(record_payload(1, {}))
    assert c.close_frame() == b""
    _, s = _open()
    with pytest.raises(RuntimeError):
        s.welcome(0, 8, nonce=SN_2)


def test_seq_must_increase() -> None:
    c, s = _open(None)
    s.receive(c.frame(record_payload(5, {})))
    with pytest.raises(ProtocolError, match="seq"):
        s.receive(c.frame(record_payload(5, {})))


@pytest.mark.parametrize("seq", [0, 2**63, 2**64 - 1])
def test_seq_outside_the_senders_range_is_refused(seq: int) -> None:
    c, s = _open(None)
    with pytest.raises(ProtocolError, match="outside"):
        s.receive(c.frame(record_payload(seq, {})))


def test_largest_spool_seq_is_accepted() -> None:
    c, s = _open(None)
    top = ((1 << 23) - 1) << 40 | ((1 << 40) - 1)
    assert top == 2**63 - 1
    assert _records(s.receive(c.frame(record_payload(top, {"q": 0})))) == [(top, 0)]


# -- version negotiation ----------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
def test_v1_client_gets_a_refusal_it_can_read(key: bytes | None) -> None:
    old = v1.ClientSession("old-sender", key, 8)
    s = ServerConnection(key)
    with pytest.raises(ProtocolError) as info:
        s.receive(old.handshake())
    assert str(info.value) == V1_REFUSAL
    with pytest.raises(ProtocolError, match="speaks mplog wire version 2; upgrade the sender"):
        old.receive(s.error(str(info.value)))


def test_v1_refusal_waits_for_the_whole_v1_hello() -> None:
    old = v1.ClientSession("old-sender", KEY, 8)
    data = old.handshake()
    s = ServerConnection(KEY)
    assert s.receive(data[:-3]) == []
    with pytest.raises(ProtocolError, match="upgrade the sender"):
        s.receive(data[-3:])
    with pytest.raises(ProtocolError, match="upgrade the sender"):
        old.receive(s.error(V1_REFUSAL))


def test_v1_client_with_another_key_cannot_read_the_refusal() -> None:
    # The documented limit: the refusal is only MACed (v1 style) for the right key, and a
    # signing v1 client rejects anything else as a wrong HMAC. It is still refused.
    old = v1.ClientSession("old-sender", b"other-key", 8)
    s = ServerConnection(KEY)
    with pytest.raises(ProtocolError, match="upgrade the sender"):
        s.receive(old.handshake())
    with pytest.raises(ProtocolError, match="wrong HMAC"):
        old.receive(s.error(V1_REFUSAL))


@pytest.mark.parametrize("key", [None, KEY])
def test_v2_client_told_to_upgrade_a_v1_collector(key: bytes | None) -> None:
    c = ClientSession("new-sender", key, 8, nonce=CN_A)
    old = v1.ServerConnection(key)
    with pytest.raises(ProtocolError) as info:
        old.receive(c.handshake())
    with pytest.raises(ProtocolError, match=r"older mplog wire version.*upgrade the collector"):
        c.receive(old.error(str(info.value)))
    assert not c.ready


# -- fuzz ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_server_only_protocol_error(data: bytes) -> None:
    s = ServerConnection()
    try:
        s.receive(MAGIC + data)
        s.receive(data)
    except ProtocolError:
        return


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_client_only_protocol_error(data: bytes) -> None:
    c = ClientSession("s", KEY, 8, nonce=CN_A)
    c.handshake()
    try:
        c.receive(data)
    except ProtocolError:
        return


@settings(deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_fuzz_lengths_never_allocate_past_the_limit(lengths: list[int]) -> None:
    s = ServerConnection()
    data = MAGIC + b"".join(n.to_bytes(4, "big") for n in lengths)
    try:
        s.receive(data)
    except ProtocolError:
        return
    assert len(s._split._buf) <= len(data)


_N = 6
_HEAD, _FRAMES, _CLOSE = _session_bytes(seqs=range(1, _N + 1), snonce=SN_1)
_VALID = _HEAD + b"".join(_FRAMES) + _CLOSE
_OTHER_HEAD, _OTHER_FRAMES, _ = _session_bytes(sender="sender-2", seqs=range(1, 4), cnonce=CN_B, snonce=SN_2)

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(_VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(_VALID) - 1), st.integers(1, 40)),
    st.tuples(st.just("insert"), st.integers(0, len(_VALID)), st.binary(min_size=1, max_size=40)),
    st.tuples(st.just("swap"), st.integers(0, _N - 1), st.integers(0, _N - 1)),
    st.tuples(st.just("splice"), st.integers(0, _N), st.integers(0, len(_OTHER_FRAMES) - 1)),
    st.tuples(st.just("repeat"), st.integers(0, _N - 1), st.integers(0, _N)),
)


def _mutate(mutations: list[tuple[str, int, object]]) -> bytes:
    frames = list(_FRAMES)
    tail: list[tuple[str, int, object]] = []
    for m in mutations:  # frame-level ones first, then byte-level ones on the result
        kind, a, b = m
        if kind == "swap":
            frames[a], frames[b] = frames[b], frames[a]  # type: ignore[index]
        elif kind == "splice":
            frames.insert(a, _OTHER_FRAMES[b])  # type: ignore[index]
        elif kind == "repeat":
            frames.insert(b, frames[a])  # type: ignore[arg-type]
        else:
            tail.append(m)
    data = bytearray(_HEAD + b"".join(frames) + _CLOSE)
    for kind, where, b in tail:
        a = min(where, len(data))
        if kind == "flip" and a < len(data):
            data[a] ^= b  # type: ignore[operator]
        elif kind == "delete":
            del data[a : a + b]  # type: ignore[operator]
        elif kind == "insert":
            data[a:a] = b  # type: ignore[assignment]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutation, min_size=1, max_size=4), st.lists(st.integers(1, 300), max_size=12))
def test_fuzz_mutated_valid_sessions(mutations: list[tuple[str, int, object]], chunks: list[int]) -> None:
    """From a valid signed session, mutated: only ProtocolError is raised, and every
    record the server yields is an untouched original, in order (a prefix of the
    session's records): no mutated authenticated frame ever becomes a record."""
    data = _mutate(mutations)
    s = ServerConnection(KEY)
    got: list[tuple[int, object]] = []
    records: list[dict[str, object]] = []
    pos = 0
    sizes = [*chunks, len(data)]
    try:
        for size in sizes:
            chunk, pos = data[pos : pos + size], pos + size
            if not chunk:
                break
            for ev in s.receive(chunk):
                if isinstance(ev, Hello):
                    s.welcome(0, ev.window, nonce=SN_1)
                elif isinstance(ev, Record):
                    got.append((ev.seq, ev.record.get("q")))
                    records.append(ev.record)
    except ProtocolError:
        pass
    assert got == [(q, q) for q in range(1, len(got) + 1)]
    assert records == [{"msg": f"sender-1 {q}", "q": q} for q in range(1, len(got) + 1)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 400), st.integers(1, 255), st.integers(1, 5))
def test_fuzz_mutated_server_stream_never_acks_more(at: int, xor: int, n_acks: int) -> None:
    """The server's signed welcome and acks, one byte changed: only ProtocolError, and
    the client never counts an ack the server did not send."""
    c = ClientSession("sender-1", KEY, 8, nonce=CN_A)
    s = ServerConnection(KEY)
    s.receive(c.handshake())
    welcome = s.welcome(0, 8, nonce=SN_1)
    acks = b"".join(s.ack(q) for q in range(1, n_acks + 1))
    stream = bytearray(welcome + acks)
    at %= len(stream)
    stream[at] ^= xor
    acked = 0
    try:
        acked += c.receive(bytes(stream[: len(welcome)]))
        assert c.ready or at < len(welcome)
        if c.ready:
            for q in range(1, 9):
                c.frame(record_payload(q, {}))
        acked += c.receive(bytes(stream[len(welcome) :]))
    except ProtocolError:
        pass
    assert acked <= n_acks
    if at < len(welcome):
        assert acked == 0
