"""Sans-IO format of spool segments (the disk spool's records).

Rules this module keeps:

- A segment is a 16-byte header (``b"MPLSPOOL"``, version 1, seven zero bytes) followed by
  records ``length:u32be || crc32(payload):u32be || payload``.
- :func:`scan` never raises for damaged data: it returns every intact record in order,
  how many damaged regions it skipped (a checksum mismatch, or a length that runs past
  the end: a torn tail), and the offset after the last intact record (where appending may
  safely resume). A length that cannot be trusted is resynchronised by searching forward
  for the next position where a whole record checks out.
- Lengths are checked against :data:`MAX_RECORD` before anything is read for them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

from ._limits import SPOOL_RECORD

__all__ = ["HEADER", "MAX_RECORD", "ScanResult", "encode_record", "scan"]

HEADER = b"MPLSPOOL" + bytes([1]) + bytes(7)
#: Largest payload a spool record may hold: the largest buffered wire payload.
MAX_RECORD = SPOOL_RECORD
_REC = struct.Struct(">LL")


def encode_record(payload: bytes) -> bytes:
    """One spool record for *payload*."""
    if len(payload) > MAX_RECORD:
        raise ValueError(f"spool record of {len(payload)} bytes exceeds {MAX_RECORD}")
    return _REC.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class ScanResult:
    records: list[bytes]
    damaged: int  # regions skipped: bad checksum, bad length, or a torn tail
    end: int  # offset just after the last intact record (or the header)
    bad_header: bool = False
    #: Offset of each intact record's payload in the segment (parallel to ``records``).
    offsets: list[int] = field(default_factory=list)


def _valid_at(data: bytes, pos: int) -> int:
    """Length of the record at *pos* if it is whole and its checksum matches, else -1."""
    if len(data) - pos < _REC.size:
        return -1
    n, crc = _REC.unpack_from(data, pos)
    start = pos + _REC.size
    if n > MAX_RECORD or start + n > len(data):
        return -1
    if zlib.crc32(data[start : start + n]) != crc:
        return -1
    return int(n)


def scan(data: bytes) -> ScanResult:
    """Every intact record of a segment's bytes, in order (see the module docstring)."""
    if not data.startswith(HEADER):
        return ScanResult([], 1 if data else 0, 0, bad_header=bool(data))
    records: list[bytes] = []
    offsets: list[int] = []
    damaged = 0
    pos = end = len(HEADER)
    while pos < len(data):
        n = _valid_at(data, pos)
        if n >= 0:
            start = pos + _REC.size
            records.append(data[start : start + n])
            offsets.append(start)
            pos = end = start + n
            continue
        damaged += 1
        # Resynchronise: the next offset where a whole record checks out.
        nxt = pos + 1
        while nxt < len(data) and _valid_at(data, nxt) < 0:
            nxt += 1
        pos = nxt
    return ScanResult(records, damaged, end, offsets=offsets)
