"""A spool damaged on disk, end to end: what a power loss, a stray process or a hostile
user can leave in ``spool_dir``, met by a real pipeline (``mplog.start`` with an
``mplog.SocketHandler``) and a real receiver. Delivery must never stop: every intact
record arrives exactly once and in order, the damage is counted in ``spool_damaged``, and
records logged afterwards arrive too.

The records are spooled while the receiver is down (``spool_mode="all"``), the pipeline
stops (they stay on disk), the test damages the directory, and a second pipeline runs
with the receiver up.
"""

from __future__ import annotations

import logging
import os
import pathlib
import pickle
import struct
import zlib
from typing import Any

import pytest

import mplog
from mplog._spoolfmt import HEADER, scan
from tests.helpers import Receiver, Serve, wait_until

LOGGER = "spool.damage"


def _handler(port: int, spool: pathlib.Path, **kw: Any) -> mplog.SocketHandler:
    h = mplog.SocketHandler("127.0.0.1", port, spool_dir=str(spool), spool_mode="all", **kw)
    h.retryStart, h.retryMax = 0.05, 0.3
    return h


def _log(tag: str, n: int) -> None:
    log = logging.getLogger(LOGGER)
    for i in range(n):
        log.info("%s %d %s", tag, i, "x" * 200, extra={"tag": tag, "i": i})


def _spool_offline(port: int, spool: pathlib.Path, n: int, **kw: Any) -> None:
    """*n* records into the spool with nobody listening on *port*, then stop."""
    p = mplog.start([_handler(port, spool, **kw)])
    try:
        _log("r", n)
        wait_until(lambda: p.stats()["spooled"] == n, 60, f"{n} records in the spool")
    finally:
        p.stop(timeout=0.5)  # receiver down: the records stay on disk
    st = p.stats()
    assert st["spooled"] == n and st["dropped"] == 0 and st["spool_damaged"] == 0, st


def _segments(spool: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in spool.glob("*.seg") if p.stat().st_size > len(HEADER))


def _tags(recs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["tag"], r["i"]) for r in recs if r.get("name") == LOGGER]


def _down_receiver(tmp: pathlib.Path) -> Receiver:
    r = Receiver(tmp)  # learn a free port, then free it
    r.kill()
    return r


def test_zero_block_in_a_segment_delivers_every_intact_record_once(tmp_path: pathlib.Path, start_pipeline) -> None:
    """A 4 KiB block of zeros in the middle of a segment (what a power loss leaves on
    ext4/XFS). Version 1 read it as valid empty records and the first one killed the
    sender: 0 of 1,000 delivered, nothing counted, the same at every restart."""
    spool = tmp_path / "spool"
    receiver = _down_receiver(tmp_path)
    _spool_offline(receiver.port, spool, 1000)
    [seg] = _segments(spool)
    data = bytearray(seg.read_bytes())
    before = scan(bytes(data))
    assert len(before.records) == 1000
    overhead = before.offsets[0] - len(HEADER)  # bytes before each payload
    z = (len(data) // 2) // 4096 * 4096  # a block in the middle of the file
    data[z : z + 4096] = bytes(4096)
    seg.write_bytes(bytes(data))
    # The stdlib wire's payload: a 4-byte length, then a pickled dict (our own bytes).
    intact = [pickle.loads(rec[4:])["i"] for off, rec in zip(before.offsets, before.records, strict=True)
              if off + len(rec) <= z or off - overhead >= z + 4096]
    assert 980 < len(intact) < 1000
    receiver.start()
    try:
        p = start_pipeline([_handler(receiver.port, spool)])
        _log("after", 300)  # logged while the damaged spool is being replayed
        want = [("r", i) for i in intact] + [("after", i) for i in range(300)]
        recs = receiver.wait_records(len(want), 60, where=lambda r: r.get("name") == LOGGER)
        assert p.flush(20)
        assert _tags(receiver.records()) == want  # each once, in order, nothing else
        st = p.stats()
        assert st["spool_damaged"] == 1 and st["sent"] == len(want) and st["spooled"] == 0, st
        assert st["dropped"] == 0, st
        assert len(recs) == len(want)
    finally:
        receiver.stop()


@pytest.mark.parametrize("file,content", [("sender_id", b"\x00garbage id\n"), ("epoch", b"99999999999")])
def test_garbage_identity_file_does_not_stop_delivery(
    tmp_path: pathlib.Path, start_pipeline, file: str, content: bytes
) -> None:
    """A sender_id that is no id killed the sender (ValueError); an epoch out of the wire's
    range made start() fail. Both are replaced (a new sender id) and counted."""
    spool = tmp_path / "spool"
    srv = Serve(tmp_path / "out.jsonl")
    srv.kill()
    try:
        _spool_offline(srv.port, spool, 300, wire="mplog")
        (spool / file).write_bytes(content)
        srv.start()
        p = start_pipeline([_handler(srv.port, spool, wire="mplog")])
        _log("after", 50)
        wait_until(lambda: srv.count() >= 350, 60, "350 records at the collector")
        assert p.flush(20)
        want = [("r", i) for i in range(300)] + [("after", i) for i in range(50)]
        assert _tags(srv.lines()) == want
        st = p.stats()
        assert st["spool_damaged"] == 1 and st["sent"] == 350, st
    finally:
        srv.stop()


def test_epoch_damaged_after_delivery_does_not_make_new_records_look_like_duplicates(
    tmp_path: pathlib.Path, start_pipeline
) -> None:
    """Version 1 read a garbage epoch as 0 and kept the sender id: sequence numbers started
    again under an id the collector had seen higher numbers from, and it dropped the new
    records as duplicates."""
    spool = tmp_path / "spool"
    srv = Serve(tmp_path / "out.jsonl")
    try:
        for run in ("a", "b"):
            p = mplog.start([_handler(srv.port, spool, wire="mplog")])
            _log(run, 20)
            assert p.flush(20)
            p.stop()
        (spool / "epoch").write_bytes(b"garbage")
        p = start_pipeline([_handler(srv.port, spool, wire="mplog")])
        _log("c", 20)
        assert p.flush(20)
        wait_until(lambda: srv.count() >= 60, 30, "60 records at the collector")
        assert _tags(srv.lines()) == [(t, i) for t in "abc" for i in range(20)]
        assert p.stats()["spool_damaged"] == 1
    finally:
        srv.stop()


@pytest.mark.parametrize("kind", ["fifo", "symlink_dev_zero"])
def test_segment_that_is_not_a_regular_file(tmp_path: pathlib.Path, start_pipeline, kind: str) -> None:
    """A FIFO under a segment's name hung start(); a symlink to /dev/zero ran the listener
    out of memory. Only regular files are read."""
    spool = tmp_path / "spool"
    receiver = _down_receiver(tmp_path)
    _spool_offline(receiver.port, spool, 200)
    planted = spool / "000000000000.seg"  # older than every real segment: read first
    if kind == "fifo":
        os.mkfifo(planted)
    else:
        planted.symlink_to("/dev/zero")
    receiver.start()
    try:
        p = start_pipeline([_handler(receiver.port, spool)])
        recs = receiver.wait_records(200, 60, where=lambda r: r.get("name") == LOGGER)
        assert _tags(recs) == [("r", i) for i in range(200)]
        assert p.flush(20)
        assert p.stats()["spool_damaged"] == 1 and not os.path.lexists(planted)
    finally:
        receiver.stop()


def test_forged_cursor_replays_instead_of_deleting(tmp_path: pathlib.Path, start_pipeline) -> None:
    """Version 1 deleted every segment older than the cursor's, uncounted: a forged cursor
    (with a valid checksum) made the whole spool disappear."""
    spool = tmp_path / "spool"
    receiver = _down_receiver(tmp_path)
    _spool_offline(receiver.port, spool, 200)
    head = struct.pack(">QQ", 10**9, len(HEADER))
    (spool / "cursor").write_bytes(head + struct.pack(">L", zlib.crc32(head)))
    receiver.start()
    try:
        p = start_pipeline([_handler(receiver.port, spool)])
        recs = receiver.wait_records(200, 60, where=lambda r: r.get("name") == LOGGER)
        assert _tags(recs) == [("r", i) for i in range(200)]
        assert p.flush(20)
        assert p.stats()["spool_damaged"] == 1
    finally:
        receiver.stop()


def test_segment_cut_short_while_running(tmp_path: pathlib.Path, start_pipeline) -> None:
    """Someone truncates a segment while the listener holds records in it: the records
    left whole are delivered, the rest counted, and the sender goes on."""
    spool = tmp_path / "spool"
    receiver = _down_receiver(tmp_path)
    p = start_pipeline([_handler(receiver.port, spool)])
    _log("r", 1000)
    wait_until(lambda: p.stats()["spooled"] == 1000, 60, "1000 records in the spool")
    [seg] = _segments(spool)
    before = scan(seg.read_bytes())
    cut = before.offsets[400] + len(before.records[400]) // 2  # inside record 400
    os.truncate(seg, cut)
    receiver.start()
    try:
        recs = receiver.wait_records(400, 60, where=lambda r: r.get("name") == LOGGER)
        wait_until(lambda: p.stats()["spooled"] == 0, 30, "the spool to drain")
        _log("after", 100)
        want = [("r", i) for i in range(400)] + [("after", i) for i in range(100)]
        receiver.wait_records(500, 60, where=lambda r: r.get("name") == LOGGER)
        assert p.flush(20)
        assert _tags(receiver.records()) == want
        st = p.stats()
        assert st["spool_damaged"] == 1 and st["sent"] == 500 and st["spooled"] == 0, st
        assert len(recs) >= 400
    finally:
        receiver.stop()


def test_spool_dir_writable_by_others_is_a_config_error(tmp_path: pathlib.Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    os.chmod(spool, 0o777)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (spool / "epoch.tmp").symlink_to(victim)
    with pytest.raises(mplog.ConfigError, match=r"writable by other users \(mode 0777\).*chmod 700"):
        mplog.start([_handler(9, spool)])
    assert victim.read_text() == "precious" and sorted(p.name for p in spool.iterdir()) == ["epoch.tmp"]
