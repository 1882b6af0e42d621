from __future__ import annotations

import os
import pathlib
import re
import struct
import subprocess
import sys
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mplog import ConfigError
from mplog._spool import Spool
from mplog._spoolfmt import HEADER, encode_record, scan, segment_header
from tests.helpers import ROOT


def test_append_reopen_in_order(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000, segment_bytes=200)
    for i in range(50):
        assert s.append(b"rec %d" % i)
    sid = s.sender_id
    s.close()
    assert len(list(tmp_path.glob("*.seg"))) > 1  # rolled over segments
    s2 = Spool(str(tmp_path), 10_000_000, segment_bytes=200)
    assert s2.sender_id == sid
    assert s2.peek(100) == [b"rec %d" % i for i in range(50)]
    s2.close()


def test_consume_deletes_done_segments(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000, segment_bytes=200)
    for i in range(50):
        s.append(b"rec %d" % i)
    before = len(list(tmp_path.glob("*.seg")))
    s.consume(45)
    assert len(list(tmp_path.glob("*.seg"))) < before
    assert s.peek(10) == [b"rec %d" % i for i in range(45, 50)]
    s.consume(5)
    s.close()
    assert Spool(str(tmp_path), 10_000_000).peek(10) == []


def test_max_bytes_refuses(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 200)
    results = [s.append(b"x" * 40) for _ in range(10)]
    assert results[0] and not results[-1]
    assert s.disk_bytes <= 200
    s.close()


def test_max_bytes_holds_when_a_segment_rolls_over(tmp_path: pathlib.Path) -> None:
    # Each new segment starts with a header: it counts against the bound (it did not, and
    # a full spool was found 12 bytes over spool_max_bytes).
    for size in range(10, 60):
        d = tmp_path / str(size)
        s = Spool(str(d), 1000, segment_bytes=150)
        while s.append(b"x" * size):
            pass
        on_disk = sum(f.stat().st_size for f in d.iterdir() if f.name.endswith(".seg"))
        assert s.disk_bytes == on_disk <= 1000, (size, s.disk_bytes, on_disk)
        s.close()


def test_torn_and_flipped_survive_reopen(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000)
    for i in range(10):
        s.append(b"record-%02d" % i)
    s.close()
    seg = next(tmp_path.glob("*.seg"))
    data = bytearray(seg.read_bytes())
    i = data.index(b"record-03")
    data[i + 2] ^= 0xFF  # a flipped byte
    seg.write_bytes(bytes(data[:-4]))  # and a torn tail
    s2 = Spool(str(tmp_path), 10_000_000)
    got = s2.peek(100)
    assert got == [b"record-%02d" % i for i in range(10) if i not in (3, 9)]
    assert s2.damaged == 2
    assert s2.append(b"after")  # appends resume on a record boundary
    s2.close()
    assert Spool(str(tmp_path), 10_000_000).peek(100)[-1] == b"after"


def test_bad_config(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError):
        Spool(str(tmp_path), 1)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError):
        Spool(str(f / "sub"), 10_000)
    assert os.path.exists(f)


# -- restart semantics: cursor, epoch, lock ----------------------------------------------


def test_consumed_records_are_not_replayed(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000, segment_bytes=200)
    for i in range(30):
        s.append(b"rec %d" % i)
    s.consume(17)  # a partly delivered segment stays on disk; the cursor says where
    epoch = s.epoch
    s.close()
    s2 = Spool(str(tmp_path), 10_000_000, segment_bytes=200)
    assert s2.peek(100) == [b"rec %d" % i for i in range(17, 30)]
    assert s2.epoch == epoch + 1
    s2.close()


def test_damaged_cursor_replays_everything(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000)
    for i in range(5):
        s.append(b"rec %d" % i)
    s.consume(2)
    s.close()
    cursor = tmp_path / "cursor"
    raw = bytearray(cursor.read_bytes())
    raw[3] ^= 0x40
    cursor.write_bytes(bytes(raw))
    s2 = Spool(str(tmp_path), 10_000_000)
    assert s2.peek(10) == [b"rec %d" % i for i in range(5)]  # at least once, never lost
    s2.close()


def test_second_user_of_a_directory_is_refused(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000)
    with pytest.raises(ConfigError, match="in use"):
        Spool(str(tmp_path), 10_000_000)
    s.close()
    Spool(str(tmp_path), 10_000_000).close()  # free again once closed


def test_bad_header_segment_is_counted_and_removed(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000)
    s.append(b"good")
    s.close()
    (tmp_path / "000000000009.seg").write_bytes(b"not a segment at all")
    s2 = Spool(str(tmp_path), 10_000_000)
    assert s2.peek(10) == [b"good"]
    assert s2.damaged == 1
    assert not (tmp_path / "000000000009.seg").exists()
    s2.close()


def test_read_spans_segments_and_respects_bounds(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000, segment_bytes=100)
    recs = [b"%03d" % i * 5 for i in range(40)]  # 15 bytes each: several per segment
    for r in recs:
        s.append(r)
    assert s.read(3, 10, 1 << 30) == recs[3:13]
    assert s.read(0, 100, 46) == recs[:3]  # by bytes
    assert s.read(0, 100, 1) == recs[:1]  # at least one
    assert s.read(39, 5, 1 << 30) == recs[39:]
    s.close()


def test_file_size_limit_acts_as_a_full_disk(tmp_path: pathlib.Path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse writes (EFBIG) as a full disk would (ENOSPC):
    append says no, the half-written record is cut, and earlier records stay readable."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(pathlib.Path(__file__).resolve().parents[2])!r})
from mplog._spool import Spool
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
s = Spool({str(tmp_path)!r}, 10_000_000)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
results = [s.append(b"x" * 100) for _ in range(40)]
print(sum(results), results.index(False), all(not r for r in results[results.index(False):]))
s.close()
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ok, _first_refused, rest_refused = out.stdout.split()
    assert 10 <= int(ok) < 40 and rest_refused == "True", out.stdout
    s = Spool(str(tmp_path), 10_000_000)
    assert s.peek(100) == [b"x" * 100] * int(ok)  # no torn record left behind
    assert s.damaged == 0
    s.close()


# -- damage on disk: every pattern skipped and counted, never an exception -----------------


def _spool_with(tmp: pathlib.Path, n: int, size: int = 40, **kw: int) -> list[bytes]:
    s = Spool(str(tmp), 10_000_000, **kw)
    recs = [b"%05d" % i + b"." * (size - 5) for i in range(n)]
    for r in recs:
        assert s.append(r)
    s.close()
    return recs


def _seg_with_records(tmp: pathlib.Path) -> pathlib.Path:
    return max((p for p in tmp.glob("*.seg") if p.stat().st_size > len(HEADER)), key=lambda p: p.stat().st_size)


def test_zero_filled_block_is_skipped_and_counted(tmp_path: pathlib.Path) -> None:
    """A power loss leaves zeroed blocks; version 1 read them back as empty records (and
    the sender died on the first one)."""
    recs = _spool_with(tmp_path, 1000)
    seg = _seg_with_records(tmp_path)
    data = bytearray(seg.read_bytes())
    z = 4096 * 4
    data[z : z + 4096] = bytes(4096)
    seg.write_bytes(bytes(data))
    s = Spool(str(tmp_path), 10_000_000)
    got = s.peek(2000)
    assert b"" not in got and s.damaged == 1
    intact = [r for r in recs if not (z - 56 < data.find(r) < z + 4096) and bytes(data).find(r) >= 0]
    assert got == intact and 900 < len(got) < 1000
    s.close()


def test_empty_payload_is_refused_by_append(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000)
    assert not s.append(b"") and len(s) == 0
    s.close()


def _hostile_open(tmp: pathlib.Path, code: str) -> subprocess.CompletedProcess[str]:
    """Open a spool in a child with a memory bound and a deadline: version 1 hung on a
    FIFO and ran out of memory on /dev/zero; neither may touch this test process."""
    script = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from mplog._spool import Spool
{code}
"""
    try:
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"opening the spool hung: {exc}") from None


@pytest.mark.parametrize("kind", ["fifo", "symlink_dev_zero", "symlink_outside", "directory"])
def test_segment_that_is_not_a_regular_file_is_skipped_and_counted(tmp_path: pathlib.Path, kind: str) -> None:
    recs = _spool_with(tmp_path / "spool", 5)
    name = tmp_path / "spool" / "000000000000.seg"  # older than every real segment
    victim = tmp_path / "victim.seg"
    if kind == "fifo":
        os.mkfifo(name)
    elif kind == "symlink_dev_zero":
        name.symlink_to("/dev/zero")
    elif kind == "symlink_outside":
        victim.write_bytes(HEADER + encode_record(b"not ours"))
        name.symlink_to(victim)
    else:
        name.mkdir()
    out = _hostile_open(tmp_path, f"""
s = Spool({str(tmp_path / "spool")!r}, 10_000_000)
print(s.damaged, s.peek(100) == {recs!r}, flush=True)
s.close()
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"], (out.stdout, out.stderr)
    assert "not a regular file" in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    if kind == "symlink_outside":
        assert victim.read_bytes() == HEADER + encode_record(b"not ours")  # untouched
    if kind != "directory":
        assert not os.path.lexists(name)  # removed, so it is counted once


def test_oversized_segment_is_read_only_up_to_the_bound(tmp_path: pathlib.Path) -> None:
    recs = _spool_with(tmp_path, 50)
    seg = _seg_with_records(tmp_path)
    os.truncate(seg, 64 * 1024 * 1024)  # sparse: 64 MiB of zeros after the records
    out = _hostile_open(tmp_path, f"""
import resource
resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))
s = Spool({str(tmp_path)!r}, 10_000_000)
print(s.damaged, s.peek(100) == {recs!r}, flush=True)
s.close()
""")
    assert out.returncode == 0, out.stderr
    # Two: the zeros that were read (no records), and the rest beyond the bound.
    assert out.stdout.split() == ["2", "True"], (out.stdout, out.stderr)
    assert "more than a segment can" in out.stderr


@pytest.mark.parametrize("content", [b"../../etc/passwd\n", b"\x00" * 64, b"a" * 65, b"id with spaces", b"\xff\xfe"])
def test_garbage_sender_id_is_replaced(tmp_path: pathlib.Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    Spool(str(tmp_path), 10_000_000).close()
    (tmp_path / "sender_id").write_bytes(content)
    s = Spool(str(tmp_path), 10_000_000)
    assert re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", s.sender_id), s.sender_id
    assert s.damaged == 1 and (tmp_path / "sender_id").read_text() == s.sender_id
    err = capsys.readouterr().err
    assert "sender_id" in err and len(err.splitlines()) == 1, err
    s.close()


@pytest.mark.parametrize("content", [b"garbage", b"-5", b"99999999999999999999", b"8388607", b"\xff"])
def test_garbage_epoch_gets_a_new_sender_id(tmp_path: pathlib.Path, content: bytes) -> None:
    """Numbering that starts again under the old id would look like duplicates to the
    receiver: a new id goes with it. And the epoch stays above the epoch of every spooled
    segment (in its header): replayed records keep their numbers, new ones follow them."""
    for _ in range(3):
        s = Spool(str(tmp_path), 10_000_000)
        s.append(b"rec %d" % s.epoch)
        old_id, old_epoch = s.sender_id, s.epoch
        s.close()
    assert old_epoch == 3
    (tmp_path / "epoch").write_bytes(content)
    s = Spool(str(tmp_path), 10_000_000)
    assert s.sender_id != old_id and s.epoch == old_epoch + 1 and s.damaged == 1
    assert (tmp_path / "epoch").read_text() == str(s.epoch)
    assert s.peek(10) == [b"rec 1", b"rec 2", b"rec 3"]
    s.close()


def test_missing_epoch_file_keeps_numbers_growing(tmp_path: pathlib.Path) -> None:
    for _ in range(2):
        s = Spool(str(tmp_path), 10_000_000)
        s.append(b"x")
        old_id = s.sender_id
        s.close()
    (tmp_path / "epoch").unlink()
    s = Spool(str(tmp_path), 10_000_000)
    assert s.epoch == 3 and s.sender_id != old_id and s.damaged == 0
    s.close()


def test_segment_claiming_an_epoch_past_the_wire_range_is_skipped(tmp_path: pathlib.Path) -> None:
    recs = _spool_with(tmp_path, 3)
    (tmp_path / "000000000000.seg").write_bytes(segment_header((1 << 23) - 1) + encode_record(b"forged"))
    s = Spool(str(tmp_path), 10_000_000)
    assert s.peek(10) == recs and s.damaged == 1 and s.epoch == 2
    assert not (tmp_path / "000000000000.seg").exists()
    s.close()


def _forge_cursor(tmp: pathlib.Path, seg: int, off: int) -> None:
    head = struct.pack(">QQ", seg, off)
    (tmp / "cursor").write_bytes(head + struct.pack(">L", zlib.crc32(head)))


def _segment_numbers(tmp: pathlib.Path) -> list[int]:
    return sorted(int(p.stem) for p in tmp.glob("*.seg") if p.stat().st_size > len(HEADER))


@pytest.mark.parametrize("where", ["past_every_segment", "newer_segment", "not_a_boundary", "past_the_data"])
def test_forged_cursor_never_makes_records_disappear(tmp_path: pathlib.Path, where: str) -> None:
    """Version 1 deleted every segment older than the cursor's, uncounted. A cursor that is
    not one this spool could have written is counted and ignored: everything replays."""
    recs = _spool_with(tmp_path, 60, segment_bytes=400)
    segs = _segment_numbers(tmp_path)
    assert len(segs) > 2
    seg, off = {
        "past_every_segment": (segs[-1] + 1000, len(HEADER)),
        "newer_segment": (segs[1], len(HEADER)),
        "not_a_boundary": (segs[0], len(HEADER) + 7),
        "past_the_data": (segs[0], 1 << 40),
    }[where]
    _forge_cursor(tmp_path, seg, off)
    s = Spool(str(tmp_path), 10_000_000, segment_bytes=400)
    assert s.peek(100) == recs and s.damaged == 1
    s.close()


def test_cursor_pointing_at_a_deleted_segment_replays_the_rest_uncounted(tmp_path: pathlib.Path) -> None:
    """The cursor moves after a delivered segment is deleted: a crash in between leaves a
    cursor older than every segment. That is no damage."""
    recs = _spool_with(tmp_path, 60, segment_bytes=400)
    _forge_cursor(tmp_path, _segment_numbers(tmp_path)[0] - 1, len(HEADER) + 56)
    s = Spool(str(tmp_path), 10_000_000, segment_bytes=400)
    assert s.peek(100) == recs and s.damaged == 0
    s.close()


# -- damage found while running ------------------------------------------------------------


def test_segment_cut_short_while_running(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000, segment_bytes=1000)
    recs = [b"%05d" % i + b"." * 35 for i in range(100)]
    for r in recs:
        s.append(r)
    segs = _segment_numbers(tmp_path)
    victim = tmp_path / f"{segs[1]:012d}.seg"
    in_victim = len(scan(victim.read_bytes()).records)
    os.truncate(victim, len(HEADER) + 100)  # someone cuts it: one record left whole
    got = s.peek(200)
    assert b"" not in got and len(got) == 100 - in_victim + 1
    assert got == [r for r in recs if r in got] and s.damaged == 1 and s.lost == in_victim - 1
    s.consume(len(got))
    assert len(s) == 0 and s.append(b"after") and s.peek(5) == [b"after"]
    s.close()


def test_segment_overwritten_or_replaced_while_running(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000, segment_bytes=1000)
    recs = [b"%05d" % i + b"." * 35 for i in range(100)]
    for r in recs:
        s.append(r)
    segs = _segment_numbers(tmp_path)
    first, second = (tmp_path / f"{n:012d}.seg" for n in segs[:2])
    data = bytearray(first.read_bytes())
    data[len(HEADER) + 60 : len(HEADER) + 70] = bytes(10)  # zeroed in place: record 1
    first.write_bytes(bytes(data))
    second.unlink()
    os.mkfifo(second)  # replaced by a FIFO: never opened for reading (it would block)
    got = s.peek(200)
    in_second = [r for r in recs if r not in got and r != recs[1]]
    assert recs[1] not in got and got[:1] == recs[:1] and len(in_second) > 5
    assert s.damaged == 2 and s.lost == 1 + len(in_second)
    assert s.peek(200) == got  # read again: the same, nothing counted twice
    assert s.damaged == 2
    s.close()


# -- a hostile directory (issue 11) -------------------------------------------------------


def _listing(d: pathlib.Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns) for p in d.iterdir()}


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_directory_writable_by_others_is_refused_and_nothing_in_it_is_touched(
    tmp_path: pathlib.Path, mode: int
) -> None:
    d = tmp_path / "spool"
    d.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (d / "lock").symlink_to(victim)
    (d / "epoch.tmp").symlink_to(victim)
    os.mkfifo(d / "000000000001.seg")  # reading it would hang
    (d / "sender_id").write_text("planted-id")
    os.chmod(d, mode)
    before = _listing(d)
    with pytest.raises(ConfigError) as info:
        Spool(str(d), 10_000_000)
    msg = str(info.value)
    assert msg == (f"spool_dir {str(d)!r} is writable by other users (mode {mode:04o}); "
                   "use a directory only you can write (chmod 700)")
    assert _listing(d) == before and victim.read_text() == "precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_directory_of_another_user_is_refused(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "spool"
    d.mkdir(mode=0o700)
    os.chown(d, 12345, 12345)
    with pytest.raises(ConfigError, match=r"is owned by uid 12345, not by this user \(uid 0\)"):
        Spool(str(d), 10_000_000)
    assert list(d.iterdir()) == []
    link = tmp_path / "link"  # a symlink someone else planted, to a directory of ours
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    link.symlink_to(ours)
    os.lchown(link, 12345, 12345)
    with pytest.raises(ConfigError, match="is a symbolic link owned by uid 12345"):
        Spool(str(link), 10_000_000)
    assert list(ours.iterdir()) == []


def test_missing_directory_is_created_0700(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "a" / "b" / "spool"
    Spool(str(d), 10_000_000).close()
    assert d.stat().st_mode & 0o777 == 0o700
    for p in d.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p


def test_planted_epoch_tmp_symlink_does_not_write_outside(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "spool"
    Spool(str(d), 10_000_000).close()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (d / "epoch.tmp").symlink_to(victim)
    (d / "sender_id.tmp").symlink_to(victim)
    s = Spool(str(d), 10_000_000)
    assert victim.read_text() == "precious"
    assert (d / "epoch").read_text() == str(s.epoch) and not (d / "epoch").is_symlink()
    assert not os.path.lexists(d / "epoch.tmp")
    s.close()


@pytest.mark.parametrize("name", ["lock", "cursor", "epoch", "sender_id"])
def test_planted_symlink_is_never_followed(tmp_path: pathlib.Path, name: str) -> None:
    d = tmp_path / "spool"
    recs = _spool_with(d, 5)
    victim = tmp_path / "victim"
    victim.write_text("1234")  # a valid epoch, a valid id, and a cursor of the wrong size
    (d / name).unlink()
    (d / name).symlink_to(victim)
    s = Spool(str(d), 10_000_000)
    assert victim.read_text() == "1234" and not (d / name).is_symlink()
    assert s.peek(10) == recs and s.damaged == 1
    if name == "sender_id":
        assert s.sender_id != "1234"
    if name == "epoch":
        assert s.epoch == 2  # above the spooled segment's, under a new sender id
    s.close()


def test_current_segment_cut_short_while_running_keeps_later_appends(tmp_path: pathlib.Path) -> None:
    s = Spool(str(tmp_path), 10_000_000)
    for i in range(20):
        s.append(b"before %02d" % i)
    current = tmp_path / f"{_segment_numbers(tmp_path)[-1]:012d}.seg"
    os.truncate(current, len(HEADER))  # every record in it cut
    # Same length as the records cut: one written where a cut one was would be read twice.
    assert s.append(b"after  01") and s.append(b"after  02")
    assert s.peek(100) == [b"after  01", b"after  02"]
    assert s.damaged == 1 and s.lost == 20
    s.close()
    s = Spool(str(tmp_path), 10_000_000)
    assert s.peek(100) == [b"after  01", b"after  02"] and s.damaged == 0
    s.close()


def test_damage_found_over_several_reads_is_one_region(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = Spool(str(tmp_path), 10_000_000)
    recs = [b"%05d" % i + b"." * 35 for i in range(100)]
    for r in recs:
        s.append(r)
    current = tmp_path / f"{_segment_numbers(tmp_path)[-1]:012d}.seg"
    os.truncate(current, len(HEADER) + 10 * 56)  # records 10.. cut
    assert s.read(0, 20, 1 << 20) == recs[:10]  # the ten left whole
    s.consume(10)
    assert s.read(0, 20, 1 << 20) == [] and len(s) == 0
    assert s.damaged == 1 and s.lost == 90
    assert capsys.readouterr().err.count("changed while in use") == 1
    s.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 5000), st.sampled_from(["zero", "flip", "cut"])),
                min_size=1, max_size=4))
def test_any_damage_to_a_spool_directory_never_raises(damage: list[tuple[int, int, str]]) -> None:
    """Damage anywhere in any segment: opening never raises, what is read back is only
    records that were written, in order, never an empty one, and damage is counted."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        recs = _spool_with(tmp, 300, segment_bytes=4096)
        segs = sorted(tmp.glob("*.seg"))
        for where, width, op in damage:
            seg = segs[where % len(segs)]
            data = bytearray(seg.read_bytes())
            at = where % (len(data) + 1)
            if op == "cut":
                del data[at:]
            else:
                for k in range(at, min(at + width, len(data))):
                    data[k] = 0 if op == "zero" else data[k] ^ 0xA5
            seg.write_bytes(bytes(data))
        s = Spool(str(tmp), 10_000_000, segment_bytes=4096)
        got = s.peek(1000)
        it = iter(recs)
        assert all(any(g == r for r in it) for g in got)
        # A cut on a record boundary leaves nothing to see; any other loss is counted.
        assert len(got) == len(recs) or s.damaged > 0 or any(op == "cut" for _, _, op in damage)
        s.consume(len(got))
        assert s.append(b"after") and s.peek(5) == [b"after"]
        s.close()
