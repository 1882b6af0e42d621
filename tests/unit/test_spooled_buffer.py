"""SpooledBuffer: one order across memory and disk, pins and acks across the boundary,
overflow when both are full, and what a restart finds (real files in tmp_path)."""

from __future__ import annotations

import pathlib

import pytest

from mplog import ConfigError
from mplog._spool import SpooledBuffer


def _buf(tmp: pathlib.Path, records: int = 3, mode: str = "overflow", overflow: str = "drop_newest",
         spool_max: int = 1 << 20) -> SpooledBuffer:
    b = SpooledBuffer(records, 1 << 20, overflow, spool_dir=str(tmp), spool_max_bytes=spool_max,
                      spool_mode=mode)
    b.open()
    return b


def test_memory_then_disk_in_one_order(tmp_path: pathlib.Path) -> None:
    b = _buf(tmp_path)
    frames = [b"f%02d" % i for i in range(10)]
    for f in frames:
        assert b.push(f, 0.0)
    assert len(b._frames) == 3 and len(b.spool) == 7  # type: ignore[arg-type]
    # Room in memory again must not let a new record jump the spooled ones.
    assert b.pin_batch(1 << 20) == frames
    b.release(2)
    assert b.push(b"new", 0.0)
    assert len(b.spool) == 8  # type: ignore[arg-type]
    assert b.pin_batch(1 << 20) == [*frames[2:], b"new"]
    b.release(len(b))
    assert len(b) == 0 and b.removed == 11 and b.pushed == 11
    assert b.push(b"mem again", 0.0) and len(b._frames) == 1  # spool empty: memory first


def test_pin_more_and_ack_across_the_boundary(tmp_path: pathlib.Path) -> None:
    b = _buf(tmp_path)
    frames = [b"f%02d" % i for i in range(8)]
    for f in frames:
        b.push(f, 0.0)
    assert b.pin_more(1 << 20, 2) == frames[:2]
    assert b.pin_more(1 << 20, 3) == frames[2:5]  # crosses into the spool
    assert b.unpinned == 3
    b.ack(4)
    assert b.pin_more(1 << 20, 10) == frames[5:]
    b.unpin()
    assert b.pin_more(1 << 20, 10) == frames[4:]
    b.ack(4)
    assert len(b) == 0


def test_all_mode_spools_everything(tmp_path: pathlib.Path) -> None:
    b = _buf(tmp_path, mode="all")
    for i in range(5):
        b.push(b"r%d" % i, 0.0)
    assert len(b._frames) == 0 and len(b.spool) == 5  # type: ignore[arg-type]
    b.clear(0.0)  # close: records stay on disk, nothing counted as dropped
    assert b.dropped == 0 and b.left_on_disk == 5 and len(b) == 5
    assert b.spool_stats()["spooled"] == 5
    b2 = _buf(tmp_path, mode="all")
    assert b2.pin_batch(1 << 20) == [b"r%d" % i for i in range(5)]
    assert b2.pushed == 5  # replayed records count as buffered for flush marks
    b2.clear(0.0)


@pytest.mark.parametrize("overflow", ["drop_newest", "drop_oldest", "block"])
def test_both_full(tmp_path: pathlib.Path, overflow: str) -> None:
    b = _buf(tmp_path, records=2, overflow=overflow, spool_max=64 * 1024)
    big = b"x" * 4000
    stored = 0
    while b.push(big, 1.0):
        stored += 1
    assert 2 < stored < 20
    # Records on disk are never evicted for newer ones: the new one is refused.
    assert b.dropped == (0 if overflow == "block" else 1)
    assert len(b) == stored
    b.clear(2.0)


def test_drop_oldest_evicts_memory_while_nothing_is_spooled(tmp_path: pathlib.Path) -> None:
    b = SpooledBuffer(2, 1 << 20, "drop_oldest", spool_dir=str(tmp_path),
                      spool_max_bytes=64 * 1024, spool_mode="overflow")
    b.open()
    assert b.spool is not None
    b.spool.max_bytes = 0  # the disk refuses everything from here on (as when full)
    for i in range(4):
        b.push(b"r%d" % i, 0.0)
    assert b.pin_batch(1 << 20) == [b"r2", b"r3"]
    assert b.dropped == 2


def test_closed_spool_drops_and_counts(tmp_path: pathlib.Path) -> None:
    b = _buf(tmp_path)
    b.clear(0.0)
    assert not b.push(b"late", 0.0)
    assert b.dropped == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"spool_mode": "sometimes"}, "spool_mode"),
        ({"spool_max_bytes": 10}, "spool_max_bytes"),
        ({"spool_max_bytes": "1G"}, "spool_max_bytes"),
        ({"spool_dir": ""}, "spool_dir"),
    ],
)
def test_bad_options(tmp_path: pathlib.Path, kw: dict, match: str) -> None:
    args = {"spool_dir": str(tmp_path), "spool_max_bytes": 1 << 20, "spool_mode": "overflow"}
    args.update(kw)
    with pytest.raises(ConfigError, match=match):
        SpooledBuffer(10, 1000, "drop_oldest", **args)


def test_delivered_segments_make_room_before_the_spool_is_empty(tmp_path: pathlib.Path) -> None:
    b = _buf(tmp_path, records=1, mode="all", overflow="block", spool_max=256 * 1024)
    frame = b"y" * 1000
    while b.push(frame, 0.0):
        pass
    full = len(b)
    assert b.dropped == 0 and full > 200  # block: refused, not counted
    b.pin_batch(1 << 30)
    b.release(full // 2)  # half delivered: the oldest segments are deleted whole
    assert b.push(frame, 0.0), "no room although half of the spool was delivered"
    assert len(b) == full - full // 2 + 1
    b.clear(0.0)


def test_records_cut_from_disk_while_pinned_leave_the_buffer_counted(tmp_path: pathlib.Path) -> None:
    """A segment cut short under a running buffer: the records left whole are sent, the
    others leave the buffer (counted in spool_damaged), and a flush mark is reached."""
    import os

    from mplog._spoolfmt import HEADER, RECORD_OVERHEAD

    b = _buf(tmp_path, mode="all")
    frames = [b"frame %03d" % i for i in range(30)]
    for f in frames:
        assert b.push(f, 0.0)
    mark = b.pushed
    assert b.pin_more(1 << 20, 5) == frames[:5]
    seg = max(tmp_path.glob("*.seg"))
    os.truncate(seg, len(HEADER) + 12 * (RECORD_OVERHEAD + 9))  # frames 12.. cut
    assert b.pin_more(1 << 20, 100) == frames[5:12]
    assert len(b) == 12 and b.unpinned == 0
    b.ack(12)
    assert len(b) == 0 and b.removed >= mark and b.dropped == 0
    assert b.spool_stats()["spool_damaged"] == 1 and b.spool_stats()["spooled"] == 0
    assert b.push(b"after", 0.0) and b.pin_batch(1 << 20) == [b"after"]
    b.clear(0.0)
