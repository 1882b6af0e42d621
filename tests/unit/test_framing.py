from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mplog import ProtocolError
from mplog._framing import FrameSplitter, frame


def test_whole_frames_in_one_feed() -> None:
    s = FrameSplitter()
    assert s.feed(frame(b"a") + frame(b"") + frame(b"xyz")) == [b"a", b"", b"xyz"]
    assert s.pending == 0


def test_byte_by_byte() -> None:
    data = frame(b"hello") + frame(b"world")
    s = FrameSplitter()
    out: list[bytes] = []
    for i in range(len(data)):
        out += s.feed(data[i : i + 1])
    assert out == [b"hello", b"world"]


def test_trailing_partial_is_kept_until_complete() -> None:
    s = FrameSplitter()
    data = frame(b"one") + frame(b"two")
    assert s.feed(data[:-1]) == [b"one"]
    assert s.pending == len(frame(b"two")) - 1
    assert s.feed(data[-1:]) == [b"two"]


def test_eof_inside_a_frame_is_a_protocol_error() -> None:
    s = FrameSplitter()
    s.feed(frame(b"abc")[:5])
    with pytest.raises(ProtocolError, match="inside a frame"):
        s.feed(b"")


def test_clean_eof() -> None:
    assert FrameSplitter().feed(b"") == []


def test_oversized_length_refused_before_body_arrives() -> None:
    s = FrameSplitter(max_frame=10)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        s.feed(struct.pack(">L", 11))  # only the header: nothing buffered for the body
    assert s.pending == 0


@given(st.lists(st.binary(max_size=300), max_size=20), st.data())
def test_any_split_yields_the_same_frames(bodies: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(frame(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    s = FrameSplitter()
    out: list[bytes] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        out += s.feed(stream[prev:c]) if c > prev else []
        prev = c
    assert out == bodies


@given(st.binary(max_size=2000))
def test_fuzz_only_protocol_error(data: bytes) -> None:
    s = FrameSplitter(max_frame=1000)
    try:
        for body in s.feed(data):
            assert len(body) <= 1000
        s.feed(b"")
    except ProtocolError:
        return


def test_feed_frames_returns_whole_frames_across_any_split() -> None:
    frames = [frame(b"a" * n) for n in (0, 1, 5, 300, 70000)]
    stream = b"".join(frames)
    for cut in (1, 3, 4, 7, 1000, len(stream)):
        s = FrameSplitter()
        got = []
        for i in range(0, len(stream), cut):
            got += s.feed_frames(stream[i : i + cut])
        assert got == frames and s.pending == 0


def test_a_large_frame_over_many_small_reads_is_joined_once() -> None:
    # Each piece of a frame still incomplete is appended, not copied with all the
    # pieces before it: 16 MiB in 512-byte reads is 32,768 feeds. Joined afresh on every
    # feed it would copy 256 GiB (40 s here); appended, it takes 0.1 s.
    body = bytes(range(256)) * (16 * 4096)
    stream = frame(body) + frame(b"next")
    s = FrameSplitter(max_frame=len(body))
    got: list[bytes] = []
    t0 = time.perf_counter()
    for i in range(0, len(stream), 512):
        got += s.feed_frames(stream[i : i + 512])
    elapsed = time.perf_counter() - t0
    assert got == [frame(body), frame(b"next")]
    assert elapsed < 5, f"{elapsed:.1f} s: the pending bytes are copied on every feed"


def test_frames_are_bytes_whatever_buffer_they_were_fed_in() -> None:
    data = frame(b"one") + frame(b"two")
    for kind in (bytes, bytearray, memoryview):
        s = FrameSplitter()
        out = s.feed(kind(data[:5])) + s.feed(kind(data[5:]))
        assert out == [b"one", b"two"]
        assert all(type(b) is bytes for b in out)
