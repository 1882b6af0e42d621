from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mplog._spoolfmt import HEADER, encode_record, scan


def _segment(payloads: list[bytes]) -> bytes:
    return HEADER + b"".join(encode_record(p) for p in payloads)


def test_roundtrip() -> None:
    payloads = [b"a", b"", b"x" * 1000]
    r = scan(_segment(payloads))
    assert r.records == payloads and r.damaged == 0 and r.end == len(_segment(payloads))


def test_torn_tail_is_counted_and_skipped() -> None:
    seg = _segment([b"one", b"two", b"three"])
    r = scan(seg[:-2])
    assert r.records == [b"one", b"two"] and r.damaged == 1
    assert r.end == len(_segment([b"one", b"two"]))


def test_flipped_payload_byte_loses_only_that_record() -> None:
    seg = bytearray(_segment([b"first", b"second", b"third"]))
    i = seg.index(b"second")
    seg[i] ^= 0xFF
    r = scan(bytes(seg))
    assert r.records == [b"first", b"third"] and r.damaged == 1


def test_corrupt_length_resynchronises() -> None:
    seg = bytearray(_segment([b"first", b"second" * 10, b"third"]))
    i = len(HEADER) + len(encode_record(b"first"))
    seg[i : i + 4] = b"\xff\xff\xff\x00"
    r = scan(bytes(seg))
    assert r.records == [b"first", b"third"] and r.damaged == 1


def test_bad_header() -> None:
    r = scan(b"garbage")
    assert r.bad_header and r.records == [] and r.damaged == 1
    assert scan(b"").records == [] and scan(b"").damaged == 0


@given(st.lists(st.binary(max_size=50), max_size=10), st.data())
def test_any_damage_never_raises_and_keeps_intact_prefix(payloads: list[bytes], data: st.DataObject) -> None:
    seg = _segment(payloads)
    cut = data.draw(st.integers(len(HEADER), len(seg)))
    flips = data.draw(st.lists(st.integers(len(HEADER), max(len(HEADER), len(seg) - 1)), max_size=3))
    damaged = bytearray(seg[:cut])
    for f in flips:
        if f < len(damaged):
            damaged[f] ^= 0x5A
    r = scan(bytes(damaged))
    # Whatever survives is a subsequence of what was written (CRC32 makes a forged
    # record vanishingly unlikely for these sizes).
    it = iter(payloads)
    assert all(any(p == q for q in it) for p in r.records)
    if not flips:
        k = max(i for i in range(len(payloads) + 1) if len(_segment(payloads[:i])) <= cut)
        assert r.records[:k] == payloads[:k]
