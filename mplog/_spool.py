"""IO: the socket handler's disk spool (``spool_dir=``) and the buffer that uses it.

Rules this module keeps:

- Append-only segment files ``NNNNNNNNNNNN.seg`` in one directory (0700), each a
  :mod:`mplog._spoolfmt` segment; a new segment starts when the current one reaches
  ``segment_bytes``. Records are read back in append order, across segments and across
  process restarts. Payloads stay on disk: memory holds three integers per record.
- One process at a time: the directory is locked (``flock`` on ``lock``); a second user
  gets a :class:`~mplog.ConfigError`. The lock dies with its process, so a SIGKILLed
  listener's successor takes the spool over.
- Opening a spool scans what is there: intact records are queued again, damaged regions
  (torn tails, flipped bytes, a bad header) are skipped and counted in ``damaged``; never
  an exception for what is on disk.
- ``max_bytes`` bounds the files on disk; :meth:`Spool.append` returns False when a
  record does not fit, the disk is full or the spool is closed, so the caller applies its
  overflow policy and counts.
- :meth:`Spool.consume` marks the oldest records delivered: it records the position in
  ``cursor`` (20 bytes rewritten in place, checksummed), so a restart does not replay
  what was delivered, and deletes a segment once all its records are delivered (the
  current one is truncated back to its header instead).
- ``sender_id`` persists in the directory and ``epoch`` grows by one at every open, so an
  acknowledged wire can number records ``epoch << 40 | n``: strictly increasing across
  restarts, which the receiver's de-duplication relies on.
- Writes reach the OS before :meth:`Spool.append` returns: they survive the death of the
  process, not a crash of the machine (no fsync).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import pathlib
import struct
import uuid
import zlib
from collections import deque

from ._buffer import FrameBuffer
from ._errors import ConfigError
from ._spoolfmt import HEADER, MAX_RECORD, encode_record, scan

__all__ = ["SPOOL_MODES", "Spool", "SpooledBuffer"]

SPOOL_MODES = ("overflow", "all")
_CURSOR = struct.Struct(">QQL")  # segment, offset of the first live record, crc32
_REC_HEAD = 8  # length:u32 || crc32:u32 before each payload (mplog._spoolfmt)


class Spool:
    def __init__(
        self, directory: str, max_bytes: int, segment_bytes: int = 4 * 1024 * 1024
    ) -> None:
        if not isinstance(max_bytes, int) or max_bytes < len(HEADER) * 2:
            raise ConfigError(f"spool_max_bytes must be an int >= {len(HEADER) * 2}")
        self.dir = pathlib.Path(directory)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot use spool_dir {directory!r}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(
                    f"spool_dir {directory!r} is in use by another mplog handler or process"
                ) from None
            raise ConfigError(f"cannot lock spool_dir {directory!r}: {exc}") from exc
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        #: Damaged regions skipped when the spool was opened.
        self.damaged = 0
        #: (segment, payload offset, payload length) of each record not yet consumed.
        self._queue: deque[tuple[int, int, int]] = deque()
        self._per_segment: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._readers: dict[int, int] = {}
        self._fd = -1
        self._current = -1
        self.payload_bytes = 0
        self.sender_id = self._read_or_create("sender_id", uuid.uuid4().hex)
        self.epoch = int(self._read_or_create("epoch", "0")) + 1
        self._replace("epoch", str(self.epoch))
        self._cursor_fd = os.open(self.dir / "cursor", os.O_RDWR | os.O_CREAT, 0o600)
        self._load()

    # -- opening ------------------------------------------------------------------------

    def _replace(self, name: str, text: str) -> None:
        tmp = self.dir / f"{name}.tmp"
        tmp.write_text(text)
        tmp.replace(self.dir / name)

    def _read_or_create(self, name: str, default: str) -> str:
        try:
            text = (self.dir / name).read_text().strip()
        except FileNotFoundError:
            text = ""
        if name == "epoch" and not text.isdigit():
            text = ""  # damaged: the sender id changes below too, so numbering restarts
        if not text:
            text = default
            self._replace(name, text)
        return text

    def _read_cursor(self) -> tuple[int, int]:
        raw = os.pread(self._cursor_fd, _CURSOR.size, 0)
        if len(raw) == _CURSOR.size:
            seg, off, crc = _CURSOR.unpack(raw)
            if zlib.crc32(raw[:16]) == crc:
                return seg, off
        return 0, 0  # none yet, or damaged: replay everything (at least once)

    def _write_cursor(self, seg: int, off: int) -> None:
        head = struct.pack(">QQ", seg, off)
        os.pwrite(self._cursor_fd, head + struct.pack(">L", zlib.crc32(head)), 0)

    def _segments(self) -> list[int]:
        out = []
        for p in self.dir.glob("*.seg"):
            try:
                out.append(int(p.stem))
            except ValueError:
                continue  # not one of ours
        return sorted(out)

    def _path(self, n: int) -> pathlib.Path:
        return self.dir / f"{n:012d}.seg"

    def _load(self) -> None:
        cur_seg, cur_off = self._read_cursor()
        segs = self._segments()
        for n in segs:
            path = self._path(n)
            if n < cur_seg:
                path.unlink()  # delivered before the restart
                continue
            data = path.read_bytes()
            result = scan(data)
            self.damaged += result.damaged
            if result.bad_header or len(data) < len(HEADER):
                path.unlink()  # nothing of ours can be read from it
                continue
            live = 0
            for off, rec in zip(result.offsets, result.records, strict=True):
                if n == cur_seg and off - _REC_HEAD < cur_off:
                    continue
                self._queue.append((n, off, len(rec)))
                self.payload_bytes += len(rec)
                live += 1
            if result.end != len(data):
                # Cut a damaged tail so appends resume on a record boundary.
                os.truncate(path, result.end)
            self._per_segment[n] = live
            self._sizes[n] = result.end
        left = self._segments()
        if not self._queue:
            for n in left:
                self._path(n).unlink()
            self._per_segment.clear()
            self._sizes.clear()
            self._open((left[-1] + 1) if left else 1, new=True)
            self._write_cursor(self._current, len(HEADER))
            return
        for n in left:
            if not self._per_segment.get(n) and n != left[-1]:
                self._path(n).unlink()
                self._per_segment.pop(n, None)
                self._sizes.pop(n, None)
        seg, off, _ = self._queue[0]
        self._write_cursor(seg, off - _REC_HEAD)
        self._open(left[-1], new=False)

    def _open(self, n: int, new: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        path = self._path(n)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if new:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, HEADER)
            self._sizes[n] = len(HEADER)
        self._per_segment.setdefault(n, 0)
        self._current = n

    # -- use ----------------------------------------------------------------------------

    @property
    def disk_bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._queue)

    def append(self, payload: bytes) -> bool:
        """Write *payload* to the OS; False if it does not fit, the disk is full, or the
        spool is closed."""
        if self._fd < 0 or len(payload) > MAX_RECORD:
            return False
        rec = encode_record(payload)
        if self.disk_bytes + len(rec) > self.max_bytes:
            return False
        current = self._current
        if self._sizes[current] + len(rec) > self.segment_bytes and self._per_segment[current]:
            self._open(current + 1, new=True)
        start = self._sizes[self._current]
        try:
            view = memoryview(rec)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # ENOSPC and friends: cut what was half written, tell the caller.
            os.ftruncate(self._fd, start)
            return False
        self._sizes[self._current] = start + len(rec)
        self._per_segment[self._current] += 1
        self._queue.append((self._current, start + _REC_HEAD, len(payload)))
        self.payload_bytes += len(payload)
        return True

    def _reader(self, seg: int) -> int:
        fd = self._readers.get(seg)
        if fd is None:
            fd = self._readers[seg] = os.open(self._path(seg), os.O_RDONLY)
        return fd

    def read(self, start: int, max_count: int, max_bytes: int) -> list[bytes]:
        """Records *start*, *start* + 1, ... not yet consumed: at most *max_count* of
        them and *max_bytes* bytes (but at least one if any). Contiguous records are read
        with one ``pread``."""
        picked: list[tuple[int, int, int]] = []
        total = 0
        for entry in itertools.islice(self._queue, start, None):
            if len(picked) >= max_count or (picked and total + entry[2] > max_bytes):
                break
            picked.append(entry)
            total += entry[2]
        out: list[bytes] = []
        i = 0
        while i < len(picked):
            seg, first, _ = picked[i]
            j = i + 1
            while j < len(picked) and picked[j][0] == seg:
                j += 1
            _, last_off, last_len = picked[j - 1]
            span = os.pread(self._reader(seg), last_off + last_len - first, first)
            for _, off, ln in picked[i:j]:
                out.append(span[off - first : off - first + ln])
            i = j
        return out

    def peek(self, n: int) -> list[bytes]:
        """The oldest *n* records not yet consumed, in order."""
        return self.read(0, n, 1 << 62)

    def consume(self, n: int) -> None:
        """Mark the oldest *n* records delivered; delete segments that are done."""
        last: tuple[int, int, int] | None = None
        for _ in range(min(n, len(self._queue))):
            last = seg, _off, ln = self._queue.popleft()
            self.payload_bytes -= ln
            self._per_segment[seg] -= 1
            if self._per_segment[seg] == 0:
                if seg == self._current:
                    os.ftruncate(self._fd, len(HEADER))
                    self._sizes[seg] = len(HEADER)
                    last = None
                    self._write_cursor(seg, len(HEADER))
                else:
                    fd = self._readers.pop(seg, None)
                    if fd is not None:
                        os.close(fd)
                    self._path(seg).unlink(missing_ok=True)
                    del self._per_segment[seg]
                    del self._sizes[seg]
        if last is not None:
            self._write_cursor(last[0], last[1] + last[2])

    def close(self) -> None:
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
        for name in ("_fd", "_cursor_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class SpooledBuffer(FrameBuffer):
    """A :class:`FrameBuffer` whose records continue on disk, in one order.

    The logical queue is the memory frames followed by the spooled ones. Under
    ``mode="overflow"`` a record goes to memory while the spool is empty and memory has
    room, else to the spool (so order holds); under ``mode="all"`` every record goes to
    the spool first (survives a listener crash). When neither has room: ``block`` waits,
    ``drop_newest`` drops the new record, and ``drop_oldest`` evicts memory frames only
    while nothing is spooled (records on disk are not rewritten), else drops the new one.
    The spool opens with :meth:`open` (in the process that sends), and records left on
    disk at :meth:`clear` stay there for the next run instead of being dropped.
    """

    def __init__(
        self,
        max_records: int,
        max_bytes: int,
        overflow: str,
        *,
        spool_dir: str | os.PathLike[str],
        spool_max_bytes: int,
        spool_mode: str,
    ) -> None:
        super().__init__(max_records, max_bytes, overflow)
        if not isinstance(spool_dir, str | os.PathLike) or not os.fspath(spool_dir):
            raise ConfigError(f"spool_dir must be a directory path, got {spool_dir!r}")
        if not isinstance(spool_max_bytes, int) or spool_max_bytes < 64 * 1024:
            raise ConfigError(
                f"spool_max_bytes must be an int of at least 65536, got {spool_max_bytes!r}"
            )
        if spool_mode not in SPOOL_MODES:
            raise ConfigError(
                f"spool_mode must be one of {', '.join(SPOOL_MODES)}; got {spool_mode!r}"
            )
        self.spool_dir = os.fspath(spool_dir)
        self.spool_max_bytes = spool_max_bytes
        self.mode = spool_mode
        self.spool: Spool | None = None
        self._spool_closed = False
        #: Records left on disk for the next run when the spool was closed.
        self.left_on_disk = 0

    def open(self) -> Spool:
        """Open (once) the spool and queue what an earlier run left in it."""
        if self.spool is None:
            # Segments of at most 1/8 of the bound, so that delivered records free room
            # (a segment is deleted whole) long before the spool is empty.
            segment = min(4 * 1024 * 1024, max(64 * 1024, self.spool_max_bytes // 8))
            try:
                self.spool = Spool(self.spool_dir, self.spool_max_bytes, segment_bytes=segment)
            except OSError as exc:  # e.g. a segment file we may not read
                raise ConfigError(f"cannot use spool_dir {self.spool_dir!r}: {exc}") from exc
            self.pushed += len(self.spool)
        return self.spool

    def __len__(self) -> int:
        if self.spool is None or self._spool_closed:
            return len(self._frames) + self.left_on_disk
        return len(self._frames) + len(self.spool)

    def push(self, frame: bytes, now: float) -> bool:
        spool = self.spool
        if spool is None:
            return super().push(frame, now)  # not opened: memory only
        if self._spool_closed:
            self._count_drop(1, now)
            return False
        if self.mode == "overflow" and not len(spool) and self._fits(len(frame)):
            self._frames.append(frame)
            self._bytes += len(frame)
            self.pushed += 1
            return True
        if spool.append(frame):
            self.pushed += 1
            return True
        if self.overflow == "block":
            return False
        if self.overflow == "drop_oldest" and self.mode == "overflow" and not len(spool):
            return super().push(frame, now)
        self._count_drop(1, now)
        return False

    def _take(self, start: int, max_bytes: int, max_count: int) -> list[bytes]:
        out: list[bytes] = []
        total = 0
        frames = self._frames
        i = start
        while i < len(frames) and len(out) < max_count:
            f = frames[i]
            if out and total + len(f) > max_bytes:
                return out
            out.append(f)
            total += len(f)
            i += 1
        if self.spool is not None and len(out) < max_count and (not out or total < max_bytes):
            out += self.spool.read(
                i - len(frames), max_count - len(out), max_bytes - total if out else max_bytes
            )
        return out

    def pin_batch(self, max_bytes: int) -> list[bytes]:
        out = self._take(0, max_bytes, 1 << 62)
        self._pinned = len(out)
        return out

    def pin_more(self, max_bytes: int, max_count: int) -> list[bytes]:
        out = self._take(self._pinned, max_bytes, max_count)
        self._pinned += len(out)
        return out

    @property
    def unpinned(self) -> int:
        return len(self) - self._pinned

    def _remove_head(self, n: int) -> None:
        if n > self._pinned:
            raise ValueError(f"removing {n} frames with only {self._pinned} pinned")
        frames = self._frames
        k = min(n, len(frames))
        for _ in range(k):
            self._bytes -= len(frames.popleft())
        if n > k:
            assert self.spool is not None
            self.spool.consume(n - k)
        self.removed += n

    def ack(self, n: int) -> None:
        self._remove_head(n)
        self._pinned -= n

    def release(self, n: int) -> None:
        self._remove_head(n)
        self._pinned = 0

    def clear(self, now: float) -> int:
        """Drop and count the memory frames; spooled records stay on disk for the next
        run. The spool is closed: later records are dropped and counted."""
        spool = self.spool
        n = super().clear(now)  # FrameBuffer.clear sees only the memory frames
        if spool is not None and not self._spool_closed:
            self.left_on_disk = len(spool)
            self._spool_closed = True
            spool.close()
        return n

    def spool_stats(self) -> dict[str, int]:
        spool = self.spool
        if spool is None:
            return super().spool_stats()
        return {
            "spooled": self.left_on_disk if self._spool_closed else len(spool),
            "spool_bytes": spool.disk_bytes,
            "spool_damaged": spool.damaged,
        }
