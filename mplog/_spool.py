"""IO: the socket handler's disk spool (``spool_dir=``) and the buffer that uses it.

Rules this module keeps:

- Append-only segment files ``NNNNNNNNNNNN.seg`` in one directory, each a
  :mod:`mplog._spoolfmt` segment; a new segment starts at every open and when the current
  one reaches ``segment_bytes``. Records are read back in append order, across segments
  and across process restarts. Payloads stay on disk: memory holds three integers per
  record.
- The directory must belong to this user and be writable by nobody else (else a
  one-line :class:`~mplog.ConfigError` saying why, before anything in it is read); it is
  created 0700. Every file in it is opened through the directory's descriptor with
  ``O_NOFOLLOW``; files are created 0600, with ``O_EXCL`` where a planted file could
  otherwise be written through (``*.tmp``, segments). Only regular files are read, each
  with a size bound.
- One process at a time: the directory is locked (``flock`` on ``lock``); a second user
  gets a :class:`~mplog.ConfigError`. The lock dies with its process, so a SIGKILLed
  listener's successor takes the spool over.
- Nothing on disk stops delivery: damaged regions, segments that are not regular files,
  unreadable or oversized ones, garbage in ``sender_id``, ``epoch`` or ``cursor``, a
  segment cut short while running, are skipped or replaced, counted in ``damaged`` and
  said on stderr in one line each; never an exception out of :meth:`Spool.read`,
  :meth:`Spool.append` or :meth:`Spool.consume`.
- ``max_bytes`` bounds the files on disk; :meth:`Spool.append` returns False when a
  record does not fit, the disk is full or the spool is closed, so the caller applies its
  overflow policy and counts.
- :meth:`Spool.consume` marks the oldest records delivered: it records the position in
  ``cursor`` (20 bytes rewritten in place, checksummed), so a restart does not replay
  what was delivered, and deletes a segment once all its records are delivered (the
  current one is truncated back to its header instead). The cursor is trusted only where
  it is consistent (the oldest segment, on a record boundary); anywhere else it is
  counted as damaged and everything is replayed: a cursor never deletes a record.
- ``sender_id`` persists in the directory and ``epoch`` grows by one at every open, so an
  acknowledged wire can number records ``epoch << 40 | n``: strictly increasing across
  restarts, which the receiver's de-duplication relies on. When ``epoch`` cannot be
  trusted, the sender id is replaced too, so numbers that start again are never
  mistaken for duplicates.
- Writes reach the OS before :meth:`Spool.append` returns: they survive the death of the
  process, not a crash of the machine (no fsync).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import stat
import struct
import uuid
import zlib
from collections import deque

from ._buffer import FrameBuffer
from ._errors import ConfigError
from ._spoolfmt import (
    HEADER,
    MAX_RECORD,
    RECORD_OVERHEAD,
    encode_record,
    record_at,
    scan,
    segment_header,
)
from ._stderr import say
from ._text import one_line

__all__ = ["SPOOL_MODES", "Spool", "SpooledBuffer"]

SPOOL_MODES = ("overflow", "all")
_CURSOR = struct.Struct(">QQL")  # segment, offset of the first live record, crc32
_SEGMENT_NAME = re.compile(r"[0-9]{12,20}\.seg")
_SENDER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# The mplog wire numbers records epoch << 40 | n with 1 <= epoch < 2**23.
_EPOCH_LIMIT = 1 << 23
_SMALL_FILE = 128  # bytes read from sender_id or epoch: more is garbage anyway
# The largest segment SpooledBuffer writes (segment_bytes is at most 4 MiB, and a
# segment exceeds it only when it holds one record): segments of a run with another
# spool_max_bytes are read whole. Twice that, or twice segment_bytes, bounds a read.
_LARGEST_SEGMENT = 4 * 1024 * 1024 + len(HEADER) + RECORD_OVERHEAD + MAX_RECORD
_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _NotRegular(OSError):
    """A name in the spool directory that is not a regular file."""


class Spool:
    """The segment files of one spool directory (see the module docstring).

    Raises (from the constructor):
        ConfigError: a bad *max_bytes*; the directory cannot be created or opened, is not
            this user's, is writable by others, or is in use by another process.
    """

    def __init__(
        self, directory: str, max_bytes: int, segment_bytes: int = 4 * 1024 * 1024
    ) -> None:
        if not isinstance(max_bytes, int) or max_bytes < len(HEADER) * 2:
            raise ConfigError(f"spool_max_bytes must be an int >= {len(HEADER) * 2}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        #: Damaged things skipped or replaced: regions of segments, segments that could
        #: not be read, garbage in sender_id, epoch or cursor.
        self.damaged = 0
        #: Records that were queued and then found damaged (cut short, overwritten)
        #: when read: they left the queue without being delivered.
        self.lost = 0
        #: (segment, payload offset, payload length) of each record not yet consumed.
        self._queue: deque[tuple[int, int, int]] = deque()
        self._per_segment: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._inodes: dict[int, tuple[int, int]] = {}
        self._readers: dict[int, int] = {}
        self._fd = self._cursor_fd = self._lock_fd = -1
        self._current = -1
        self._next = 1
        self._max_epoch = 0  # the highest epoch in a segment header
        self._last_bad = (-1, -1)  # (segment, end) of the last record found damaged in read
        self._warned: set[int] = set()  # segments said on stderr to have changed
        self.epoch = 0
        self.payload_bytes = 0
        self._dir_fd = self._open_dir(directory)
        try:
            self._lock()
            sender_id, epoch = self._read_identity()
            self._cursor_fd = self._open_regular("cursor", os.O_RDWR | os.O_CREAT)
            self._load()
            self.sender_id, self.epoch = self._settle_identity(sender_id, epoch)
            self._new_segment()
            if self._queue:
                seg, off, _ = self._queue[0]
                self._write_cursor(seg, off - RECORD_OVERHEAD)
            else:
                self._write_cursor(self._current, len(HEADER))
        except OSError as exc:
            self.close()
            raise ConfigError(f"cannot use spool_dir {directory!r}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # -- opening ------------------------------------------------------------------------

    @staticmethod
    def _open_dir(directory: str) -> int:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            link = os.lstat(directory)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot use spool_dir {directory!r}: {exc}") from exc
        st = os.fstat(fd)  # the directory we opened, not the name (no race)
        me = os.geteuid()
        why = ""
        if stat.S_ISLNK(link.st_mode) and link.st_uid != me:
            why = (f"is a symbolic link owned by uid {link.st_uid}, not by this user "
                   f"(uid {me}); use a directory of your own")
        elif st.st_uid != me:
            why = (f"is owned by uid {st.st_uid}, not by this user (uid {me}); "
                   "use a directory of your own")
        elif st.st_mode & 0o022:
            why = (f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                   "use a directory only you can write (chmod 700)")
        if why:
            os.close(fd)
            raise ConfigError(f"spool_dir {directory!r} {why}")
        return fd

    def _note(self, what: str) -> None:
        """Count one damaged thing and say what on stderr, in one line."""
        self.damaged += 1
        self._say(what)

    def _say(self, what: str) -> None:
        """One line on stderr about this spool directory."""
        say(f"mplog: spool_dir {one_line(self.directory, 200)}: {what}")

    def _open_regular(self, name: str, flags: int, mode: int = 0o600) -> int:
        """*name* opened without following a symlink; a name that is not a regular file
        is removed (and counted) first when *flags* create, else :class:`_NotRegular`."""
        try:
            fd = os.open(name, flags | _OPEN, mode, dir_fd=self._dir_fd)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            fd = -1
        if fd >= 0:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                return fd
            os.close(fd)
            kind = _kind(st.st_mode)
        else:
            kind = "a symbolic link"
        if not flags & os.O_CREAT:
            raise _NotRegular(errno.EINVAL, f"{name!r} is {kind}, not a regular file")
        self._note(f"{name!r} was {kind}, not a regular file; replaced")
        os.unlink(name, dir_fd=self._dir_fd)
        return os.open(name, flags | os.O_EXCL | _OPEN, mode, dir_fd=self._dir_fd)

    def _lock(self) -> None:
        self._lock_fd = self._open_regular("lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(
                    f"spool_dir {self.directory!r} is in use by another mplog handler or process"
                ) from None
            raise

    def _read_small(self, name: str) -> str | None:
        """The text of *name* (stripped), None if absent or not a regular file (counted)."""
        try:
            fd = self._open_regular(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except _NotRegular as exc:
            self._note(f"{exc.strerror}; replaced")
            return None
        try:
            raw = os.read(fd, _SMALL_FILE)
        finally:
            os.close(fd)
        return raw.decode("ascii", "replace").strip()  # not ASCII: no id, no number

    def _replace(self, name: str, text: str) -> None:
        """Write *name* whole (a temporary file renamed over it). The temporary is
        created with O_EXCL | O_NOFOLLOW: whatever was planted under its name is removed,
        never written through."""
        tmp = f"{name}.tmp"
        with contextlib.suppress(FileNotFoundError):  # the usual case: nothing there
            os.unlink(tmp, dir_fd=self._dir_fd)  # a leftover, or something planted
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN, 0o600, dir_fd=self._dir_fd)
        try:
            os.write(fd, text.encode("ascii"))
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)

    def _read_identity(self) -> tuple[str | None, int | None]:
        """The sender id and the epoch on disk, each None when absent or not to be trusted
        (counted, said on stderr)."""
        sender_id = self._read_small("sender_id")
        if sender_id is not None and not _SENDER_ID.fullmatch(sender_id):
            self._note(f"sender_id holds {one_line(sender_id, 80)!r}, not an id; "
                       "a new sender id is used")
            sender_id = None
        text = self._read_small("epoch")
        epoch: int | None = None
        if text is not None:
            if text.isdigit() and len(text) <= 8 and int(text) < _EPOCH_LIMIT - 1:
                epoch = int(text)
            else:
                self._note(f"epoch holds {one_line(text, 80)!r}, not a number below "
                           f"{_EPOCH_LIMIT - 1}; a new sender id is used")
        return sender_id, epoch

    def _settle_identity(self, sender_id: str | None, epoch: int | None) -> tuple[str, int]:
        """This run's sender id and epoch, written to the directory.

        The epoch is above the file's and above every spooled segment's (each header
        holds the epoch of the run that wrote it): replayed records keep the numbers they
        were written with, and the new ones must come after them. When the epoch file
        cannot be trusted, the sender id changes too: the receiver may have seen higher
        numbers under the old one, from segments already delivered and deleted.
        """
        if sender_id is None or epoch is None:
            sender_id = uuid.uuid4().hex
            self._replace("sender_id", sender_id)
        new = max(epoch or 0, self._max_epoch) + 1  # < _EPOCH_LIMIT: both bounded below it
        self._replace("epoch", str(new))
        return sender_id, new

    def _read_cursor(self) -> tuple[int, int] | None:
        raw = os.pread(self._cursor_fd, _CURSOR.size, 0)
        if not raw:
            return None  # none yet
        if len(raw) == _CURSOR.size:
            seg, off, crc = _CURSOR.unpack(raw)
            if zlib.crc32(raw[:16]) == crc:
                return seg, off
        self._note("cursor is damaged; every record in the spool is replayed (at least once)")
        return None

    def _write_cursor(self, seg: int, off: int) -> None:
        head = struct.pack(">QQ", seg, off)
        try:
            os.pwrite(self._cursor_fd, head + struct.pack(">L", zlib.crc32(head)), 0)
        except OSError as exc:
            # Delivery goes on; a restart replays from an older position (at least once).
            self._say(f"cannot write the cursor: {exc}")

    def _segments(self) -> list[int]:
        out = []
        for name in os.listdir(self._dir_fd):
            if _SEGMENT_NAME.fullmatch(name) and name == _name(int(name[:-4])):
                out.append(int(name[:-4]))
        return sorted(out)

    @property
    def _read_bound(self) -> int:
        return max(2 * self.segment_bytes, 2 * _LARGEST_SEGMENT)

    def _unlink(self, n: int) -> None:
        try:
            os.unlink(_name(n), dir_fd=self._dir_fd)
        except FileNotFoundError:
            return  # removed by someone else: what we wanted
        except OSError as exc:  # e.g. a directory under a segment's name
            self._say(f"cannot remove {_name(n)}: {exc}")

    def _read_segment(self, n: int) -> bytes | None:
        """The bytes of segment *n* (up to the read bound), or None (counted) when it is
        not a regular file or cannot be read."""
        name = _name(n)
        try:
            fd = self._open_regular(name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except _NotRegular as exc:
            if stat.S_ISDIR(os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False).st_mode):
                self._note(f"{exc.strerror}; skipped (left in place)")
            else:  # the name only: a symlink's target, a FIFO's writer are untouched
                self._note(f"{exc.strerror}; skipped and removed")
                self._unlink(n)
            return None
        except OSError as exc:
            self._note(f"cannot open {name} ({exc.strerror}); skipped")
            return None
        try:
            st = os.fstat(fd)
            bound = self._read_bound
            chunks: list[bytes] = []
            got = 0
            while got < bound:
                chunk = os.pread(fd, min(bound - got, 1 << 20), got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            if got >= bound and st.st_size > bound:
                self._note(f"{name} holds {st.st_size} bytes, more than a segment can "
                           f"({bound}); the rest is skipped")
        except OSError as exc:
            self._note(f"cannot read {name} ({exc.strerror}); skipped")
            return None
        finally:
            os.close(fd)
        self._inodes[n] = (st.st_dev, st.st_ino)
        return b"".join(chunks)

    def _load(self) -> None:
        cursor = self._read_cursor()
        segs = self._segments()
        self._next = segs[-1] + 1 if segs else 1
        first_readable = True
        for n in segs:
            data = self._read_segment(n)
            if data is None:
                continue
            result = scan(data)
            if result.bad_header:
                what = (f"is a version {result.version} segment (this mplog reads version "
                        f"{HEADER[8]})" if result.version else "has no spool header")
                self._note(f"{_name(n)} {what}; skipped and removed")
                self._unlink(n)
                continue
            if result.epoch >= _EPOCH_LIMIT - 1:
                # Its records could not be followed by higher numbers on the mplog wire.
                self._note(f"{_name(n)} claims epoch {result.epoch}, beyond what records can "
                           "be numbered with; skipped and removed")
                self._unlink(n)
                continue
            self._max_epoch = max(self._max_epoch, result.epoch)
            self.damaged += result.damaged
            if result.damaged:
                self._say(f"{_name(n)}: {result.damaged} damaged region(s) skipped")
            skip_before = 0
            if first_readable and cursor is not None:
                cur_seg, cur_off = cursor
                boundaries = {off - RECORD_OVERHEAD for off in result.offsets}
                if cur_seg == n and (cur_off in boundaries or cur_off == result.end):
                    skip_before = cur_off  # delivered before the restart
                elif cur_seg >= n:
                    # Past the oldest segment, or not on one of its record boundaries:
                    # not a position this spool wrote (a segment older than the cursor
                    # is deleted before the cursor moves on). Replay everything.
                    self._note(f"cursor ({cur_seg}, {cur_off}) is not a record boundary of "
                               "the oldest segment; every record is replayed (at least once)")
                # cur_seg < n: the cursor's segment was deleted once delivered.
            first_readable = False
            live = 0
            for off, rec in zip(result.offsets, result.records, strict=True):
                if off - RECORD_OVERHEAD < skip_before:
                    continue
                self._queue.append((n, off, len(rec)))
                self.payload_bytes += len(rec)
                live += 1
            if live:
                self._per_segment[n] = live
                self._sizes[n] = len(data)
            else:
                self._unlink(n)
                self._inodes.pop(n, None)
        if first_readable and cursor is not None and cursor[0] >= self._next:
            self._note(f"cursor ({cursor[0]}, {cursor[1]}) points past every segment")

    def _new_segment(self) -> None:
        """Start segment ``_next`` (created with O_EXCL) and make it the current one.

        Raises:
            OSError: it cannot be created or its header written (the old one stays).
        """
        for _ in range(100):
            n = self._next
            self._next += 1
            try:
                fd = os.open(_name(n), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _OPEN,
                             0o600, dir_fd=self._dir_fd)
                break
            except FileExistsError:
                continue  # something already has that name: the next one
        else:
            raise OSError(errno.EEXIST, f"no free segment name up to {_name(self._next)}")
        try:
            if os.write(fd, segment_header(self.epoch)) != len(HEADER):
                raise OSError(errno.ENOSPC, "short write of a segment header")
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            self._unlink(n)
            raise
        if self._fd >= 0:
            os.close(self._fd)
            if not self._per_segment.get(self._current):
                self._forget(self._current)
        self._fd = fd
        self._current = n
        self._sizes[n] = len(HEADER)
        self._per_segment[n] = 0
        self._inodes[n] = (st.st_dev, st.st_ino)

    def _forget(self, seg: int) -> None:
        """Segment *seg* holds nothing left to deliver: close and remove it."""
        fd = self._readers.pop(seg, None)
        if fd is not None:
            os.close(fd)
        self._per_segment.pop(seg, None)
        self._sizes.pop(seg, None)
        self._inodes.pop(seg, None)
        self._unlink(seg)

    # -- use ----------------------------------------------------------------------------

    @property
    def disk_bytes(self) -> int:
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._queue)

    def append(self, payload: bytes) -> bool:
        """Write *payload* to the OS; False if it is empty or too long, does not fit, the
        disk is full, or the spool is closed."""
        if self._fd < 0 or not 0 < len(payload) <= MAX_RECORD:
            return False
        rec = encode_record(payload)
        current = self._current
        rolls = self._sizes[current] + len(rec) > self.segment_bytes and self._per_segment[current]
        # A new segment starts with its header: that counts against the bound too.
        if self.disk_bytes + len(rec) + (len(HEADER) if rolls else 0) > self.max_bytes:
            return False
        if rolls:
            try:
                self._new_segment()
            except OSError:
                return False  # ENOSPC, EMFILE, ...: like a full spool, the caller counts
        try:
            # Where the record really starts (O_APPEND writes at the end of the file): a
            # segment cut short by someone else must not misplace the records after it.
            start = os.lseek(self._fd, 0, os.SEEK_END)
            if start != self._sizes[self._current]:
                # Cut short or written to by someone else: new records go to a new
                # segment, so none lands where a queued one was (reads find those
                # damaged, and count them).
                self._say(f"{_name(self._current)} changed size while in use; a new segment starts")
                self._new_segment()
                start = os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            return False  # EIO, ENOSPC and friends: like a full disk, the caller counts
        try:
            view = memoryview(rec)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # ENOSPC and friends: cut what was half written, tell the caller.
            try:
                os.ftruncate(self._fd, start)
            except OSError as exc:
                # The torn record stays; a later scan skips and counts it.
                self._say(f"cannot cut a "
                      f"half-written record: {exc}")
            return False
        self._sizes[self._current] = start + len(rec)
        self._per_segment[self._current] += 1
        self._queue.append((self._current, start + RECORD_OVERHEAD, len(payload)))
        self.payload_bytes += len(payload)
        return True

    def _reader(self, seg: int) -> int:
        """A descriptor to read segment *seg*, -1 if it is gone or no longer the file this
        spool wrote (replaced, or turned into something else)."""
        fd = self._readers.get(seg)
        if fd is None:
            try:
                fd = self._open_regular(_name(seg), os.O_RDONLY)
            except OSError:
                return -1
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self._inodes.get(seg):
                os.close(fd)
                return -1
            self._readers[seg] = fd
        return fd

    def read(self, start: int, max_count: int, max_bytes: int) -> list[bytes]:
        """Records *start*, *start* + 1, ... not yet consumed: at most *max_count* of
        them and *max_bytes* bytes (but at least one if any). Contiguous records are read
        with one ``pread``, and each is checked again: records found damaged now (a
        segment cut short or overwritten while running) leave the queue, counted in
        ``damaged`` (one per damaged run) and ``lost``. Never raises for what is on disk."""
        while True:
            picked: list[tuple[int, int, int]] = []
            total = 0
            for entry in itertools.islice(self._queue, start, None):
                if len(picked) >= max_count or (picked and total + entry[2] > max_bytes):
                    break
                picked.append(entry)
                total += entry[2]
            out: list[bytes] = []
            bad: list[tuple[int, int, int]] = []
            i = 0
            while i < len(picked):
                seg, first, _ = picked[i]
                j = i + 1
                while j < len(picked) and picked[j][0] == seg:
                    j += 1
                _, last_off, last_len = picked[j - 1]
                base = first - RECORD_OVERHEAD
                span = b""
                fd = self._reader(seg)
                if fd >= 0:
                    try:
                        span = os.pread(fd, last_off + last_len - base, base)
                    except OSError:
                        span = b""  # EIO and friends: every record of this span is bad
                run = False
                for entry in picked[i:j]:
                    rec = record_at(span, entry[1] - RECORD_OVERHEAD - base, entry[2])
                    if rec is None:
                        bad.append(entry)
                        # One damaged region, even when it is found in several reads.
                        if not run and self._last_bad != (seg, entry[1] - RECORD_OVERHEAD):
                            self.damaged += 1
                        run = True
                        self._last_bad = (seg, entry[1] + entry[2])
                    else:
                        out.append(rec)
                        run = False
                i = j
            if not bad:
                return out
            self._drop(bad)
            if out:
                return out
            # Every record picked was damaged: pick again (they left the queue).

    def _drop(self, bad: list[tuple[int, int, int]]) -> None:
        gone = set(bad)
        self._queue = deque(e for e in self._queue if e not in gone)
        self.lost += len(bad)
        segs = {seg for seg, _, _ in bad}
        for seg, _, ln in bad:
            self.payload_bytes -= ln
            self._per_segment[seg] -= 1
        for seg in sorted(segs):
            if seg not in self._warned:
                self._warned.add(seg)
                self._say(f"{_name(seg)} changed while in use (cut short or overwritten); "
                          "its damaged records are skipped")
            if not self._per_segment[seg] and seg != self._current:
                self._forget(seg)

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
                    try:
                        os.ftruncate(self._fd, len(HEADER))
                        self._sizes[seg] = len(HEADER)
                    except OSError as exc:  # the records stay on disk, the cursor says done
                        self._say(f"cannot "
                              f"truncate {_name(seg)}: {exc}")
                    last = None
                    self._write_cursor(seg, len(HEADER))
                else:
                    self._forget(seg)
        if last is not None:
            self._write_cursor(last[0], last[1] + last[2])

    def close(self) -> None:
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
        for name in ("_fd", "_cursor_fd", "_lock_fd", "_dir_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def _name(n: int) -> str:
    return f"{n:012d}.seg"


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file"




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
        spool = self.spool
        if spool is not None and len(out) < max_count and (not out or total < max_bytes):
            lost = spool.lost
            out += spool.read(
                i - len(frames), max_count - len(out), max_bytes - total if out else max_bytes
            )
            # Records found damaged on disk left the queue undelivered (counted in
            # spool_damaged): they are gone from the buffer, so flush marks move on.
            self.removed += spool.lost - lost
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
