"""IO: the disk spool's segment files (a component of issue 3; not wired into the sender yet).

Rules this module keeps:

- Append-only segment files ``NNNNNNNNNNNN.seg`` in one directory (0700), each a
  :mod:`mplog._spoolfmt` segment; a new segment starts when the current one reaches
  ``segment_bytes``. Records are read back in append order, across segments and across
  process restarts.
- Opening a spool scans what is there: intact records are queued again, damaged regions
  (torn tails, flipped bytes) are skipped and counted in ``damaged``; never an exception
  for what is on disk.
- ``max_bytes`` bounds the files on disk; :meth:`append` returns False when a record does
  not fit (or the disk is full), so the caller applies its overflow policy and counts.
- :meth:`consume` marks the oldest records delivered; a segment whose records are all
  delivered is deleted (the current segment is truncated back to its header instead).
- ``sender_id`` persists in the directory, so an acknowledged wire keeps de-duplicating
  records replayed after a restart of the whole program.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from collections import deque

from ._errors import ConfigError
from ._spoolfmt import HEADER, encode_record, scan

__all__ = ["Spool"]


class Spool:
    def __init__(
        self, directory: str, max_bytes: int, segment_bytes: int = 4 * 1024 * 1024
    ) -> None:
        if not isinstance(max_bytes, int) or max_bytes < len(HEADER) * 2:
            raise ConfigError(f"spool_max_bytes must be an int >= {len(HEADER) * 2}")
        self.dir = pathlib.Path(directory)
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use spool_dir {directory!r}: {exc}") from exc
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.damaged = 0
        #: (segment number, record) in order, for records not yet consumed.
        self._queue: deque[tuple[int, bytes]] = deque()
        self._per_segment: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self.sender_id = self._load_sender_id()
        self._fd = -1
        self._current = -1
        self._load()

    def _load_sender_id(self) -> str:
        path = self.dir / "sender_id"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if not text:
            text = uuid.uuid4().hex
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return text

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
        for n in self._segments():
            data = self._path(n).read_bytes()
            result = scan(data)
            self.damaged += result.damaged
            for rec in result.records:
                self._queue.append((n, rec))
            self._per_segment[n] = len(result.records)
            self._sizes[n] = len(data)
            if result.end != len(data) and result.end >= len(HEADER):
                # Cut a damaged tail so appends resume on a record boundary.
                with open(self._path(n), "r+b") as f:
                    f.truncate(result.end)
                self._sizes[n] = result.end
        segs = self._segments()
        self._open(segs[-1] if segs else 1, new=not segs)

    def _open(self, n: int, new: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        path = self._path(n)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if new or os.fstat(self._fd).st_size < len(HEADER):
            os.ftruncate(self._fd, 0)
            os.write(self._fd, HEADER)
            self._sizes[n] = len(HEADER)
            self._per_segment.setdefault(n, 0)
        self._current = n

    @property
    def disk_bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._queue)

    def append(self, payload: bytes) -> bool:
        """Write *payload* durably to the OS; False if it does not fit or the disk is full."""
        rec = encode_record(payload)
        if self.disk_bytes + len(rec) > self.max_bytes:
            return False
        current = self._current
        if self._sizes[current] + len(rec) > self.segment_bytes and self._per_segment[current]:
            self._open(current + 1, new=True)
        try:
            view = memoryview(rec)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            # ENOSPC and friends: cut what was half written, tell the caller.
            os.ftruncate(self._fd, self._sizes[self._current])
            return False
        self._sizes[self._current] += len(rec)
        self._per_segment[self._current] += 1
        self._queue.append((self._current, payload))
        return True

    def peek(self, n: int) -> list[bytes]:
        """The oldest *n* records not yet consumed, in order."""
        return [rec for _, rec in list(self._queue)[:n]]

    def consume(self, n: int) -> None:
        """Mark the oldest *n* records delivered; delete segments that are done."""
        for _ in range(min(n, len(self._queue))):
            seg, _ = self._queue.popleft()
            self._per_segment[seg] -= 1
            if self._per_segment[seg] == 0:
                if seg == self._current:
                    os.ftruncate(self._fd, len(HEADER))
                    self._sizes[seg] = len(HEADER)
                else:
                    self._path(seg).unlink(missing_ok=True)
                    del self._per_segment[seg]
                    del self._sizes[seg]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
