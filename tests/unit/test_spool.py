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
