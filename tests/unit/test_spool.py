from __future__ import annotations

import os
import pathlib

import pytest

from mplog import ConfigError
from mplog._spool import Spool


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
