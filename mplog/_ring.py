"""A worker's record ring: the bytes of its record frames, in shared memory.

A worker writes its records into a ring of its own, a sealed memfd it hands the
listener with its hello (beside the pipe, which then only wakes the listener): a write
is a memory copy and two stores, no system call. The listener copies the ring's bytes
out as it would read the pipe's, and everything else stays as it is: the frames, the
splitting, the acknowledgements on the socket, the worker's copies kept for a resend.
A record is in the ring, where the listener reads it, when the log call returns: a
worker's ``os._exit`` or SIGKILL right after it loses nothing, as with the pipe.

Layout (native 64-bit words in the first page, then the data):

- ``head`` (word 0): bytes ever written; only the worker stores it, after the bytes;
- ``tail`` (word 8): bytes ever taken; only the listener stores it, after copying;
- ``asleep`` (word 16): the listener is about to wait: the next write rings the bell
  (one byte into the pipe) and clears it;
- ``waiting`` (word 24): the worker found the ring full: the listener acknowledges once
  it made room, which wakes the worker's poll on the socket.

Each side keeps its own position and only trusts the other's as far as it checks it:
the listener refuses a ``head`` behind its tail or more than the ring ahead of it (a
worker is another process; what it wrote is data). The memfd is sealed against
shrinking, so a worker cannot make the listener's mapping fault (SIGBUS).

Ordering: the worker stores the bytes, then ``head``; the listener loads ``head``, then
the bytes. x86-64 keeps stores in order and loads in order, so a ``head`` the listener
sees covers bytes already there; Python has no fence, so the ring is used only there
(elsewhere the pipe carries the records, as before). The one race left is the wake-up:
the worker's load of ``asleep`` may pass its store of ``head`` (store-load is the order
x86 does not keep), and a listener that has just set ``asleep`` may miss that write and
wait. It never waits longer than RING_TICK while it has rings: a missed wake-up costs
that much latency, never a record.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import platform
import stat
import sys

from ._errors import ProtocolError

__all__ = ["RING_SIZE", "RING_TICK", "Ring", "available"]

#: Bytes of records a worker's ring holds: room for the listener's nap at full speed.
#: Each is mapped in the listener too (64 workers: 4 MiB of its RSS).
RING_SIZE = 64 * 1024
#: The first page: the four words, each on a cache line of its own.
HEADER = 4096
#: Ring sizes a listener accepts (a power of two, so positions wrap with a mask).
MIN_SIZE = 4096
MAX_SIZE = 16 * 1024 * 1024
#: The longest a listener with rings waits before it looks at them anyway (a missed
#: wake-up, see above).
RING_TICK = 0.02

_HEAD, _TAIL, _ASLEEP, _WAITING = 0, 8, 16, 24
#: Mappings not closed because the descriptor their mmap object holds is no longer theirs
#: (see Ring.close): kept, so that nothing closes it.
_kept: list[mmap.mmap] = []


def file_id(fd: int) -> tuple[int, int] | None:
    """What *fd* is open on, as (st_dev, st_ino); None if it is not open."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _map(fd: int, size: int) -> tuple[mmap.mmap, int]:
    """Map *size* bytes of *fd*, shared; and the descriptor the mmap object keeps (-1:
    none). Before Python 3.13 it keeps a duplicate of *fd*, at the lowest free number,
    which it closes when it is closed; from 3.13 on it is told not to (``trackfd``)."""
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, trackfd=False), -1
    mine = file_id(fd)
    probe = os.dup(fd)  # the lowest free number: where mmap's own dup will go
    os.close(probe)
    mm = mmap.mmap(fd, size)
    if file_id(probe) == mine:
        return mm, probe
    for name in os.listdir("/proc/self/fd"):  # another thread took that number first
        n = int(name)
        if n != fd and file_id(n) == mine:
            return mm, n
    return mm, -1
_SEALS = ("F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")


_SUPPORTED = (
    platform.machine() in ("x86_64", "AMD64")
    and hasattr(os, "memfd_create")
    and all(hasattr(fcntl, name) for name in ("F_ADD_SEALS", "F_GET_SEALS", *_SEALS))
)


def available() -> bool:
    """Whether this process makes rings: Linux memfds with seals, on x86-64 (see the
    ordering note), unless ``MPLOG_INTAKE_RING=0``."""
    return _SUPPORTED and os.environ.get("MPLOG_INTAKE_RING", "1") != "0"


def _seals() -> int:
    return fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class Ring:
    """One side's view of a ring (its own position; the other's, as last read)."""

    __slots__ = ("bell", "cap", "head", "held_fd", "held_id", "mask", "mm", "tail", "words")

    def __init__(self, mm: mmap.mmap, cap: int, held_fd: int = -1) -> None:
        self.mm = mm
        #: The descriptor the mmap object keeps (-1: none), and what it is open on.
        self.held_fd = held_fd
        self.held_id = file_id(held_fd) if held_fd >= 0 else None
        self.cap = cap
        self.mask = cap - 1
        self.words = memoryview(mm)[:HEADER].cast("Q")
        self.head = 0
        self.tail = 0
        #: The worker's end of the pipe that wakes the listener (-1 on the listener's side).
        self.bell = -1

    # -- the worker's side --------------------------------------------------------------

    @classmethod
    def create(cls, size: int = RING_SIZE) -> tuple[Ring, int]:
        """A new ring and its memfd (close-on-exec, sealed), for the hello to hand over;
        the caller closes the fd once it is sent. OSError if there is no memory or no
        descriptor for one."""
        fd = os.memfd_create("mplog-ring", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, HEADER + size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _seals())
            mm, held = _map(fd, HEADER + size)
        except BaseException:
            os.close(fd)
            raise
        return cls(mm, size, held), fd

    def put(self, frame: bytes) -> bool:
        """Copy *frame* in whole and publish it; False (nothing written) if there is not
        room for it now. Rings the bell if the listener said it is asleep (OSError if
        the listener is gone: the frame is in the ring, but nobody will read it)."""
        n = len(frame)
        head = self.head
        if head + n - self.tail > self.cap:
            self.tail = self.words[_TAIL]
            if head + n - self.tail > self.cap:
                return False
        pos = (head & self.mask) + HEADER
        end = pos + n
        if end <= HEADER + self.cap:
            self.mm[pos:end] = frame
        else:
            split = HEADER + self.cap - pos
            self.mm[pos:] = frame[:split]
            self.mm[HEADER : HEADER + n - split] = frame[split:]
        self.head = head = head + n
        self.words[_HEAD] = head
        if self.words[_ASLEEP]:
            self.ring_bell()
        return True

    def put_part(self, data: memoryview) -> int:
        """Copy in and publish as much of *data* as fits now; how many bytes that was.
        For a frame that did not fit whole (put) or is larger than the ring: the
        listener takes a frame in parts as it would from a pipe."""
        n = min(len(data), self.room())
        if n and not self.put(bytes(data[:n])):
            raise AssertionError("the room just read is gone")  # only the worker writes
        return n

    def room(self) -> int:
        """Bytes that fit now (reads the listener's tail)."""
        self.tail = self.words[_TAIL]
        return self.cap - (self.head - self.tail)

    def ring_bell(self) -> None:
        """Wake the listener: clear its flag, one byte into the pipe (a full pipe has
        wake-ups enough). OSError (EPIPE) if the listener is gone."""
        self.words[_ASLEEP] = 0
        try:
            os.write(self.bell, b"\0")
        except BlockingIOError:
            return

    def want_room(self) -> None:
        """Ask the listener for an acknowledgement once it has made room."""
        self.words[_WAITING] = 1

    # -- the listener's side ------------------------------------------------------------

    @classmethod
    def open(cls, fd: int) -> Ring:
        """Map the ring a worker handed over in *fd* (not closed here). ProtocolError
        naming the problem if it is not one: not a sealed memfd of a size we accept."""
        try:
            st = os.fstat(fd)
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as exc:
            raise ProtocolError(f"sent a ring that is not a sealed memfd ({exc})") from None
        size = st.st_size - HEADER
        if not stat.S_ISREG(st.st_mode) or seals & fcntl.F_SEAL_SHRINK == 0:
            raise ProtocolError("sent a ring that is not sealed against shrinking")
        if not MIN_SIZE <= size <= MAX_SIZE or size & (size - 1):
            raise ProtocolError(f"sent a ring of {st.st_size} bytes")
        try:
            mm, held = _map(fd, HEADER + size)
        except OSError as exc:
            raise ProtocolError(f"sent a ring that cannot be mapped ({exc})") from None
        # From position 0: the worker may have written records since it sent the hello.
        return cls(mm, size, held)

    def take(self, limit: int) -> bytes:
        """The bytes written since the last take (at most *limit*), now the listener's:
        the worker may write over them once this returns. ProtocolError if the worker's
        head is not a position it could have written."""
        head = self.words[_HEAD]
        tail = self.tail
        n = head - tail
        if n == 0:
            return b""
        if n < 0 or n > self.cap:
            raise ProtocolError(f"its ring's write position {head} is not within "
                                f"{self.cap} bytes ahead of the read position {tail}")
        n = min(n, limit)
        pos = (tail & self.mask) + HEADER
        end = pos + n
        if end <= HEADER + self.cap:
            data = self.mm[pos:end]
        else:
            split = HEADER + self.cap - pos
            data = self.mm[pos:] + self.mm[HEADER : HEADER + n - split]
        self.tail = tail + n
        self.words[_TAIL] = self.tail
        return data

    def pending(self) -> bool:
        """Whether the worker wrote something not taken yet (or something bad)."""
        return bool(self.words[_HEAD] != self.tail)

    def sleep(self) -> None:
        self.words[_ASLEEP] = 1

    def wake(self) -> None:
        self.words[_ASLEEP] = 0

    def room_wanted(self) -> bool:
        """Whether the worker waits for room; the flag is cleared."""
        if self.words[_WAITING]:
            self.words[_WAITING] = 0
            return True
        return False

    # -- both ---------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap (this process's mapping only). If the descriptor the mmap object keeps
        was closed behind our back and its number now is something else (a program that
        closed every descriptor, then opened files: see _intake._move_high), closing the
        mmap would close that: it is kept instead (64 KiB, once per such event)."""
        self.words.release()
        if self.held_fd >= 0 and file_id(self.held_fd) != self.held_id:
            _kept.append(self.mm)
            return
        self.mm.close()
