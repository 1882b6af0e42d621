"""Sans-IO format of spool segments (the disk spool's records).

Rules this module keeps:

- A segment is a 16-byte header (``b"MPLSPOOL"``, version 2, the epoch of the run that
  wrote it as u32be, three zero bytes) followed by records: ``MAGIC || length:u32be ||
  crc32(payload):u32be || crc32(the 12 bytes before):u32be``
  then the payload. A record is valid only if its magic, its header checksum, a length
  of 1 to :data:`MAX_RECORD` that fits in the data, and its payload checksum all check
  out. So a zero-filled region (what a power loss leaves on ext4 or XFS) is never a
  record: no magic, and a length of zero is refused anyway (version 1 had neither, and
  read zeros as valid empty records).
- :func:`scan` never raises for damaged data: it returns every intact record in order,
  how many damaged regions it skipped (a checksum mismatch, a bad length, a torn tail,
  bytes that are no record at all), and the offset after the last intact record.
- :func:`scan` is linear in the size of the data, whatever the data: it resynchronises
  with a regex search for the next magic followed by a plausible length (C speed), a
  candidate whose header checksum fails costs O(1), the payload checksums of candidates
  that fail are bounded in total (:data:`_RESYNC_WORK` times the data size: past that,
  a candidate with a valid header but a bad payload is skipped whole), and a damaged
  region that meets more than :data:`_MAX_TRIES` candidates (which damage does not
  make; crafting does) ends the scan: the rest is one damaged region. Real damage costs
  at most the records it touches; crafted data cannot make the scan quadratic.
- A segment of another version (1 included) is reported as ``bad_header``: nothing in
  it is read.
- Lengths are checked against :data:`MAX_RECORD` before anything is read for them.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field

from ._limits import SPOOL_RECORD

__all__ = ["HEADER", "MAGIC", "MAX_RECORD", "RECORD_OVERHEAD", "ScanResult", "encode_record",
           "record_at", "scan", "segment_header"]

VERSION = 2
_SEGMENT = struct.Struct(">8sBL3s")  # b"MPLSPOOL", version, epoch, zeros


def segment_header(epoch: int) -> bytes:
    """The header of a segment written by the run numbered *epoch* (0 to 2**32 - 1)."""
    return _SEGMENT.pack(b"MPLSPOOL", VERSION, epoch, bytes(3))


#: A segment header (epoch 0); every header is this long.
HEADER = segment_header(0)
#: Starts every record: what the resynchronisation searches for. Not zero, not ASCII text.
MAGIC = b"\xd7\x8aR\x02"
#: Largest payload a spool record may hold: the largest buffered wire payload.
MAX_RECORD = SPOOL_RECORD
_HEAD = struct.Struct(">4sLLL")  # magic, length, crc32(payload), crc32(magic..crc32(payload))
#: Bytes a record adds to its payload.
RECORD_OVERHEAD = _HEAD.size
# Where a record may start: its magic, then a length of at most MAX_RECORD (below 2**24:
# a zero byte, then one of at most MAX_RECORD >> 16). The regex engine passes over every
# other byte.
_CANDIDATE = (
    re.compile(re.escape(MAGIC) + b"\\x00[\\x00-" + re.escape(bytes([MAX_RECORD >> 16])) + b"]",
               re.DOTALL)
    if MAX_RECORD < 1 << 24
    else re.compile(re.escape(MAGIC))
)
# Candidates of one damaged region tried before the rest of the segment is given up as
# damaged. Damage (zeros, flipped bits, a cut) makes a candidate about once in 2**44
# bytes: this many in one region is crafted data, and each try costs a checksum.
_MAX_TRIES = 4096
# Payload checksum work spent on candidates that fail, as a multiple of the data size,
# before a failing candidate with a valid header is skipped whole (see the module rules).
_RESYNC_WORK = 2


def encode_record(payload: bytes) -> bytes:
    """One spool record for *payload* (1 to :data:`MAX_RECORD` bytes).

    Raises:
        ValueError: *payload* is empty or longer than :data:`MAX_RECORD`.
    """
    n = len(payload)
    if not 0 < n <= MAX_RECORD:
        raise ValueError(f"spool record of {n} bytes; a record holds 1 to {MAX_RECORD}")
    head = MAGIC + struct.pack(">LL", n, zlib.crc32(payload))
    return head + struct.pack(">L", zlib.crc32(head)) + payload


@dataclass
class ScanResult:
    records: list[bytes]
    damaged: int  # regions skipped: bad checksum, bad length, a torn tail, no record at all
    end: int  # offset just after the last intact record (or the header)
    bad_header: bool = False
    #: Offset of each intact record's payload in the segment (parallel to ``records``).
    offsets: list[int] = field(default_factory=list)
    #: The segment's format version if its header names one (0: no header of ours).
    version: int = VERSION
    #: The epoch in the segment's header: that of the run that wrote its records.
    epoch: int = 0


def _header_at(data: bytes, pos: int) -> int:
    """The payload length the record header at *pos* claims, if that header is whole,
    checks out and claims 1 to :data:`MAX_RECORD` bytes; else -1. O(1)."""
    if len(data) - pos < _HEAD.size:
        return -1
    magic, n, _crc, head_crc = _HEAD.unpack_from(data, pos)
    if magic != MAGIC or not 0 < n <= MAX_RECORD:
        return -1
    if zlib.crc32(data[pos : pos + _HEAD.size - 4]) != head_crc:
        return -1
    return int(n)


def record_at(data: bytes, pos: int, length: int | None = None) -> bytes | None:
    """The payload of the record at *pos* in *data* if that record is whole and valid
    (and its length is *length*, when given), else None."""
    n = _header_at(data, pos)
    if n < 0 or (length is not None and n != length):
        return None
    start = pos + _HEAD.size
    payload = data[start : start + n]
    if len(payload) != n or zlib.crc32(payload) != _HEAD.unpack_from(data, pos)[2]:
        return None
    return payload


def scan(data: bytes) -> ScanResult:
    """Every intact record of a segment's bytes, in order (see the module docstring)."""
    if len(data) < _SEGMENT.size or data[:8] != b"MPLSPOOL":
        return ScanResult([], 1 if data else 0, 0, bad_header=bool(data), version=0)
    _magic, version, epoch, zeros = _SEGMENT.unpack_from(data)
    if version != VERSION or zeros != bytes(3):
        return ScanResult([], 1, 0, bad_header=True, version=version)
    records: list[bytes] = []
    offsets: list[int] = []
    damaged = 0
    in_damage = False
    budget = _RESYNC_WORK * len(data)
    size = len(data)
    unpack, crc32, search = _HEAD.unpack_from, zlib.crc32, _CANDIDATE.search
    tries = 0  # candidates tried in the current damaged region
    head = _HEAD.size
    pos = end = len(HEADER)
    while pos < size:
        # _header_at, inlined: this loop meets every candidate of a damaged region.
        n = -1
        start = pos + head
        if start <= size:
            magic, length, crc, head_crc = unpack(data, pos)
            if (
                magic == MAGIC
                and 0 < length <= MAX_RECORD
                and crc32(data[pos : start - 4]) == head_crc
            ):
                n = length
                if start + n <= size:
                    payload = data[start : start + n]
                    if crc32(payload) == crc:
                        records.append(payload)
                        offsets.append(start)
                        pos = end = start + n
                        in_damage = False
                        tries = 0
                        continue
                    budget -= n
        if not in_damage:
            damaged += 1
            in_damage = True
        # Resynchronise on the next magic. A header that checks out with a payload that
        # does not is most likely a record damaged in its payload: try every later magic
        # while the budget lasts (so a record inside a damaged one is found), then jump
        # over the whole claimed record (so crafted headers cannot cost O(n) each).
        tries += 1
        if tries > _MAX_TRIES:
            break  # crafted, not damaged: the rest is one damaged region (counted above)
        found = search(data, start + n if n >= 0 and start + n <= size and budget < 0 else pos + 1)
        if found is None:
            break
        pos = found.start()
    return ScanResult(records, damaged, end, offsets=offsets, epoch=epoch)
