from __future__ import annotations

import random

import pytest

from mplog import ConfigError
from mplog._backoff import Backoff
from mplog._buffer import FrameBuffer


def test_backoff_doubles_and_caps_without_jitter() -> None:
    b = Backoff(1.0, 2.0, 30.0, jitter=0)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert b.delay(10_000) == 30  # no overflow after a long outage


def test_backoff_jitter_is_bounded_and_seeded() -> None:
    b = Backoff(1.0, 2.0, 30.0, jitter=0.1)
    d1 = [b.delay(3, random.Random(7)) for _ in range(3)]
    d2 = [b.delay(3, random.Random(7)) for _ in range(3)]
    assert d1 == d2
    rng = random.Random(1)
    for _ in range(200):
        assert 3.6 <= b.delay(3, rng) <= 4.4


@pytest.mark.parametrize("kw", [{"start": 0}, {"factor": 0.5}, {"start": 5, "max": 1}, {"jitter": 2}])
def test_backoff_rejects_bad_values(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Backoff(**kw)


def test_drop_oldest_keeps_newest_and_counts() -> None:
    b = FrameBuffer(3, 10_000, "drop_oldest")
    for i in range(5):
        assert b.push(bytes([i]), now=float(i))
    assert b.pin_batch(100) == [b"\x02", b"\x03", b"\x04"]
    assert b.dropped == 2
    r = b.take_report()
    assert r is not None and (r.count, r.first, r.last) == (2, 3.0, 4.0)
    assert b.take_report() is None


def test_drop_newest_keeps_oldest() -> None:
    b = FrameBuffer(3, 10_000, "drop_newest")
    results = [b.push(bytes([i]), now=0.0) for i in range(5)]
    assert results == [True, True, True, False, False]
    assert b.pin_batch(100) == [b"\x00", b"\x01", b"\x02"]
    assert b.dropped == 2


def test_block_neither_stores_nor_counts() -> None:
    b = FrameBuffer(1, 10_000, "block")
    assert b.push(b"a", 0.0)
    assert not b.push(b"b", 0.0)
    assert b.dropped == 0 and len(b) == 1
    b.drop(1.0)
    assert b.dropped == 1


def test_byte_bound() -> None:
    b = FrameBuffer(100, 10, "drop_oldest")
    b.push(b"12345", 0.0)
    b.push(b"12345", 0.0)
    b.push(b"123", 0.0)
    assert b.nbytes <= 10 and b.dropped == 1
    assert not b.push(b"x" * 11, 0.0)  # larger than the whole buffer: dropped itself
    assert b.dropped == 2


def test_pinned_frames_are_never_evicted() -> None:
    b = FrameBuffer(3, 10_000, "drop_oldest")
    for i in range(3):
        b.push(bytes([i]), 0.0)
    assert b.pin_batch(1) == [b"\x00"]
    b.push(b"\x03", 0.0)  # evicts 1, not the pinned 0
    b.release(1)
    assert b.pin_batch(100) == [b"\x02", b"\x03"]


def test_release_partial_and_restore_report() -> None:
    b = FrameBuffer(10, 10_000)
    for i in range(4):
        b.push(bytes([i]), 0.0)
    b.pin_batch(100)
    b.release(2)
    assert b.pin_batch(100) == [b"\x02", b"\x03"]
    with pytest.raises(ValueError):
        b.release(3)
    b.drop(5.0, 2)
    r = b.take_report()
    assert r is not None
    b.drop(7.0)
    b.restore_report(r)
    r2 = b.take_report()
    assert r2 is not None and (r2.count, r2.first, r2.last) == (3, 5.0, 7.0)


@pytest.mark.parametrize(("args", "match"), [((0, 10), "buffer_records"), ((1, 0), "buffer_bytes"), ((1, 1, "x"), "overflow")])
def test_buffer_rejects_bad_config(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FrameBuffer(*args)  # type: ignore[arg-type]


def test_pushed_and_removed_marks() -> None:
    b = FrameBuffer(3, 10_000, "drop_oldest")
    for i in range(5):
        b.push(bytes([i]), 0.0)
    assert (b.pushed, b.removed) == (5, 2)  # two evicted
    b.pin_batch(100)
    b.release(2)
    assert b.removed == 4
    b.pin_more(100, 10)
    b.ack(1)
    assert b.removed == 5 == b.pushed


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_push_many_is_push_in_order(overflow: str) -> None:
    # The one-step path (everything fits) and the per-frame path (it does not) give the
    # buffer and the counters exactly what push() one by one gives.
    for batch in ([b"a" * 10] * 3, [b"b" * 10] * 8, [b"c" * 200], [b"d" * 5] * 20):
        one, many = FrameBuffer(10, 100, overflow), FrameBuffer(10, 100, overflow)
        for b in (one, many):
            b.push(b"x" * 30, 0.0)
        for f in batch:
            one.push(f, 1.0)
        many.push_many(batch, 1.0)
        assert list(one._frames) == list(many._frames)
        assert (one.nbytes, one.dropped, one.pushed, len(one)) == (
            many.nbytes, many.dropped, many.pushed, len(many))
        assert len(many) <= 10 and many.nbytes <= 100
