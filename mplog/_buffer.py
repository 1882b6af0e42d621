"""Sans-IO bounded, in-order buffer of encoded frames with an overflow policy.

Rules this module keeps:

- Frames leave in the order they arrived.
- Two bounds, both enforced: a number of frames and a number of bytes.
- The head frames that the sender is writing right now are *pinned*: ``drop_oldest`` never
  evicts them (they may be half on the wire), it evicts the oldest unpinned frame instead.
- Every frame that does not make it is counted, with the wall-clock times of the first and
  last drop since the last report, so the sender can tell the receiver what was lost.
- No locks and no clock: the caller serializes access and passes ``now``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._errors import ConfigError

__all__ = ["OVERFLOW_POLICIES", "DropReport", "FrameBuffer"]

OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block")


@dataclass(frozen=True)
class DropReport:
    """``count`` frames were dropped between wall-clock times ``first`` and ``last``."""

    count: int
    first: float
    last: float


class FrameBuffer:
    """A FIFO of frames bounded by *max_records* and *max_bytes*."""

    def __init__(self, max_records: int, max_bytes: int, overflow: str = "drop_oldest") -> None:
        if not isinstance(max_records, int) or max_records < 1:
            raise ConfigError(f"buffer_records must be a positive int, got {max_records!r}")
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"buffer_bytes must be a positive int, got {max_bytes!r}")
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigError(
                f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}; got {overflow!r}"
            )
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.overflow = overflow
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._pinned = 0
        #: Frames dropped, ever.
        self.dropped = 0
        #: Frames ever stored, and frames ever removed (delivered, evicted or cleared):
        #: ``removed >= n`` means the first *n* frames stored have all left the buffer.
        self.pushed = 0
        self.removed = 0
        self._unreported = 0
        self._first = 0.0
        self._last = 0.0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _fits(self, size: int) -> bool:
        return len(self._frames) < self.max_records and self._bytes + size <= self.max_bytes

    def _count_drop(self, n: int, now: float) -> None:
        if not self._unreported:
            self._first = now
        self._last = now
        self._unreported += n
        self.dropped += n

    def push(self, frame: bytes, now: float) -> bool:
        """Append *frame*; return False if it was not stored.

        ``drop_oldest`` evicts unpinned frames from the head until *frame* fits (counting
        each); if it still cannot fit, or under ``drop_newest``, *frame* itself is dropped
        and counted. Under ``block`` a frame that does not fit is neither stored nor
        counted: the caller waits for room and then either pushes again or calls
        :meth:`drop` once its timeout has passed.
        """
        size = len(frame)
        if not self._fits(size):
            if self.overflow == "block":
                return False
            if self.overflow == "drop_oldest" and size <= self.max_bytes:
                # (A frame bigger than the whole buffer can never fit: evicting others
                # for it would only lose more.)
                frames = self._frames
                while len(frames) > self._pinned and not self._fits(size):
                    old = frames[self._pinned]
                    del frames[self._pinned]
                    self._bytes -= len(old)
                    self.removed += 1
                    self._count_drop(1, now)
            if not self._fits(size):
                self._count_drop(1, now)
                return False
        self._frames.append(frame)
        self._bytes += size
        self.pushed += 1
        return True

    def push_many(self, frames: list[bytes], now: float) -> None:
        """:meth:`push` each of *frames*, in order; in one step when all of them fit."""
        if type(self).push is FrameBuffer.push:
            size = sum(map(len, frames))
            if (len(self._frames) + len(frames) <= self.max_records
                    and self._bytes + size <= self.max_bytes):
                self._frames.extend(frames)
                self._bytes += size
                self.pushed += len(frames)
                return
        push = self.push
        for f in frames:
            push(f, now)

    def drop(self, now: float, n: int = 1) -> None:
        """Count *n* frames the caller gave up on (``block`` timeout, shutdown)."""
        self._count_drop(n, now)

    def pin_batch(self, max_bytes: int) -> list[bytes]:
        """Pin and return frames from the head, up to *max_bytes* (at least one frame).

        Any previous pin is replaced. Pinned frames stay counted in the buffer until
        :meth:`release` removes them.
        """
        out: list[bytes] = []
        total = 0
        for f in self._frames:
            if out and total + len(f) > max_bytes:
                break
            out.append(f)
            total += len(f)
        self._pinned = len(out)
        return out

    def pin_more(self, max_bytes: int, max_count: int) -> list[bytes]:
        """Pin and return frames after those already pinned (acknowledged wires).

        Returns up to *max_count* frames and *max_bytes* bytes (at least one frame if any
        is unpinned and *max_count* > 0). Pinned frames stay until :meth:`ack` or
        :meth:`unpin`.
        """
        out: list[bytes] = []
        total = 0
        frames = self._frames
        i = self._pinned
        while i < len(frames) and len(out) < max_count:
            f = frames[i]
            if out and total + len(f) > max_bytes:
                break
            out.append(f)
            total += len(f)
            i += 1
        self._pinned = i
        return out

    @property
    def unpinned(self) -> int:
        """Frames not yet handed out by :meth:`pin_more`."""
        return len(self._frames) - self._pinned

    def ack(self, n: int) -> None:
        """Remove the first *n* pinned frames (acknowledged); the rest stay pinned."""
        if n > self._pinned:
            raise ValueError(f"ack({n}) with only {self._pinned} frames pinned")
        frames = self._frames
        for _ in range(n):
            self._bytes -= len(frames.popleft())
        self._pinned -= n
        self.removed += n

    def unpin(self) -> None:
        """Forget every pin (the connection broke: pinned frames will be sent again)."""
        self._pinned = 0

    def release(self, n: int) -> None:
        """Remove the first *n* pinned frames (they were delivered); unpin the rest."""
        if n > self._pinned:
            raise ValueError(f"release({n}) with only {self._pinned} frames pinned")
        frames = self._frames
        for _ in range(n):
            self._bytes -= len(frames.popleft())
        self._pinned = 0
        self.removed += n

    def discard_head(self, now: float) -> None:
        """Drop (and count) the oldest frame: the one that keeps failing to be sent."""
        self.unpin()
        if self.pin_batch(1):
            self.release(1)
            self._count_drop(1, now)

    def clear(self, now: float) -> int:
        """Drop (and count) everything; return how many frames that was."""
        n = len(self._frames)
        self._frames.clear()
        self._bytes = 0
        self._pinned = 0
        self.removed += n
        if n:
            self._count_drop(n, now)
        return n

    def spool_stats(self) -> dict[str, int]:
        """The disk spool's counters: none here (see ``mplog._spool.SpooledBuffer``)."""
        return {"spooled": 0, "spool_bytes": 0, "spool_damaged": 0}

    def take_report(self) -> DropReport | None:
        """Return the drops not yet reported (and mark them reported), or None."""
        if not self._unreported:
            return None
        report = DropReport(self._unreported, self._first, self._last)
        self._unreported = 0
        return report

    def restore_report(self, report: DropReport) -> None:
        """Put back a report whose sending failed, merged with drops counted since."""
        if self._unreported:
            self._first = min(self._first, report.first)
            self._last = max(self._last, report.last)
        else:
            self._first, self._last = report.first, report.last
        self._unreported += report.count
