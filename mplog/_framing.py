"""Sans-IO length-prefixed framing.

Rules this module keeps:

- A frame is a 4-byte big-endian unsigned length followed by that many bytes of body. This
  is the framing of the stdlib ``SocketHandler`` (``struct.pack(">L", len(s)) + s``) and of
  mplog's intake, so one splitter serves both.
- The length is checked against a limit *before* anything is allocated for the body.
- No sockets, no clocks, no threads: bytes in, bodies out.
"""

from __future__ import annotations

import struct

from ._errors import RemoteProtocolError
from ._limits import INTAKE_FRAME

__all__ = ["HEADER", "MAX_FRAME", "REFUSAL_PREFIX", "FrameSplitter", "frame"]

HEADER = struct.Struct(">L")

#: Largest body accepted by default: the intake's limit (``mplog._limits.INTAKE_FRAME``);
#: a worker cuts a larger record before writing it, so only a non-mplog writer sends more.
MAX_FRAME = INTAKE_FRAME


#: The stdlib wire has no way for a receiver to say no. ``mplog serve`` writes this, then
#: a one-line ASCII reason and LF, before closing a connection it refuses (a keyed
#: collector refuses the wire: it cannot be signed); mplog's sender recognises it, so the
#: records it wrote there are not counted as sent.
REFUSAL_PREFIX = b"mplog serve refused this connection: "


def frame(body: bytes) -> bytes:
    """Return *body* with its length prefix."""
    return HEADER.pack(len(body)) + body


class FrameSplitter:
    """Accumulate stream bytes and split them into frame bodies.

    ``feed(data)`` returns every complete body found so far, in order. ``feed(b"")`` means
    end of stream: it raises :class:`ProtocolError` if a partial frame is pending (the peer
    died mid-frame), so the caller can count it. A length above *max_frame* raises
    :class:`ProtocolError` at once, before buffering the body.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        return self._split(data, 4)

    def feed_frames(self, data: bytes) -> list[bytes]:
        """As :meth:`feed`, but each complete frame is returned whole, its length prefix
        included (what a relay forwards as it is)."""
        return self._split(data, 0)

    def _split(self, data: bytes, skip: int) -> list[bytes]:
        # *skip*: 4 to return bodies, 0 to return whole frames.
        if not data:
            if self._buf:
                n = len(self._buf)
                self._buf.clear()
                raise RemoteProtocolError(f"stream ended inside a frame ({n} bytes pending)")
            return []
        buf = self._buf
        if buf:  # a frame cut short by the last read
            if len(buf) >= 4 and len(buf) + len(data) < 4 + HEADER.unpack_from(buf)[0]:
                buf += data  # still not whole (a large frame over many reads): no copy
                return []
            data = bytes(buf) + data  # one copy joins it to this read
            buf.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        # Slices of *data* (bytes): one allocation and one copy per frame. (Slicing the
        # bytearray and then bytes() of the slice made two of each: 0.45 against
        # 0.3 us per 495-byte frame, the listener's largest cost in relay mode.)
        out: list[bytes] = []
        append = out.append
        pos = 0
        end = len(data)
        unpack = HEADER.unpack_from
        limit = self._max
        while end - pos >= 4:
            (n,) = unpack(data, pos)
            if n > limit:
                raise RemoteProtocolError(f"frame of {n} bytes exceeds the limit of {limit}")
            stop = pos + 4 + n
            if stop > end:
                break
            append(data[pos + skip : stop])
            pos = stop
        if pos < end:
            buf += data[pos:] if pos else data
        return out
