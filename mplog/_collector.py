"""IO: :class:`Collector`, the receiver behind ``mplog serve``.

Rules this module keeps:

- One selector loop. Each connection says which wire it speaks with its first bytes: the
  mplog preamble (``b"MPLG"``) or a stdlib ``SocketHandler`` length prefix (its first byte
  is 0 for any sane frame).
- mplog wire: a record is acknowledged only after its line was written to the output
  (``os.write``: it survives a crash of this process; with ``fsync=True`` also a crash of
  the machine), and written at most once per (sender, seq), also across restarts: the
  de-duplication state is rebuilt from the output file(s) at start.
- stdlib wire: decoded by :mod:`mplog._unpickle`, a bounded interpreter of pickle's data
  opcodes (never :mod:`pickle`), so nothing a client sends can run code here or grow the
  memory past the bounds below.
- Bounded: at most ``max_connections`` connections (more are accepted and closed at
  once), each holding at most one partial frame of ``max_frame_bytes``; a connection
  that completes no frame for ``idle_timeout`` seconds is closed. The memory bound this
  gives is stated in ``docs/collector.md``.
- A malformed, oversized or wrongly signed frame closes that one connection, with one
  line on stderr and a counter; everyone else is served on. Nothing a client sends makes
  the collector exit.
- The output failing (a full disk, EIO, ...) never makes it exit either: it stops reading
  from every connection (TCP backpressure holds the senders) and stops acknowledging,
  keeps the records it has already read in memory, says so once on stderr, retries every
  second and resumes when writing works. Nothing acknowledged is lost.
- Every diagnostic is one line on stderr: escaped (:func:`mplog._text.one_line`), cut at
  :data:`DIAG_LIMIT` characters, at most :data:`DIAG_BURST` lines per reason every
  :data:`DIAG_PERIOD` seconds (then one "... N more suppressed" line), and never blocks:
  a line that stderr cannot take at once is counted instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import operator
import os
import pathlib
import re
import selectors
import socket
import ssl
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping
from typing import IO, Any

from . import _poll, _sigpipe
from ._errors import ConfigError, ProtocolError
from ._framing import REFUSAL_PREFIX, FrameSplitter
from ._limits import COLLECTOR_FRAME
from ._options import load_key
from ._record import STANDARD_ATTRS
from ._text import iso_local, one_line, safe_repr
from ._tls import HANDSHAKE_TIMEOUT, server_context
from ._tls import reason as tls_reason
from ._unpickle import MAX_DEPTH, MAX_NODES, ShapeError, decode_record, jsonable
from ._wires.mplog import (
    DEFAULT_WINDOW,
    EPOCH_SHIFT,
    MAGIC,
    MIN_FRAME_LIMIT,
    NONCE_SIZE,
    UNSENT_KEYS,
    Close,
    Hello,
    Record,
    ServerConnection,
    record_object,
)

try:  # optional (pip install 'mplog[fast]'): 3x faster validation of mplog-wire records
    from orjson import loads as _orjson_loads
except ImportError:  # the stdlib parser below does the same job, slower
    _orjson_loads = None  # type: ignore[assignment]

__all__ = ["REFUSAL_REASONS", "Collector", "memory_bound"]

#: Bytes read from a connection at a time.
READ_SIZE = 256 * 1024
#: Default largest stdlib-wire frame (a pickled record is a few hundred bytes; a record
#: with a long traceback a few KiB).
MAX_PICKLE_FRAME = COLLECTOR_FRAME
#: Defaults of ``max_connections`` and ``idle_timeout``.
MAX_CONNECTIONS = 256
IDLE_TIMEOUT = 60.0
#: Bytes of answers (welcome, acks) queued for a peer that does not read them, beyond
#: which the connection is closed (acks are 13 bytes: 20,000 unread acks).
MAX_OUTBOUND = 256 * 1024
#: Seconds between two tries of an output that failed.
RETRY_OUTPUT = 1.0
#: A refused stdlib-wire peer gets this long to close after reading why.
DRAIN_SECONDS = 2.0
#: Diagnostics: characters per line, lines per reason per period, period in seconds.
DIAG_LIMIT = 300
DIAG_BURST = 10
DIAG_PERIOD = 10.0
#: Why a connection was closed by the collector: ``stats["refusals_<reason>"]`` counts each.
REFUSAL_REASONS: tuple[str, ...] = (
    "max_connections",  # accepted and closed at once: max_connections are open
    "idle_timeout",  # no complete frame for idle_timeout seconds
    "frame_too_large",  # a length prefix above the frame limit
    "bad_pickle",  # a stdlib-wire frame the data-only decoder refuses
    "bad_record",  # decoded, but not a record dict (keys, depth, expanded size)
    "pickle_needs_hmac",  # a stdlib-wire client of a collector that requires HMAC
    "hmac",  # an mplog-wire client with a missing or wrong signature
    "protocol",  # any other mplog-wire protocol violation
    "slow_reader",  # more than MAX_OUTBOUND bytes of answers left unread
    "unknown_wire",  # first bytes neither the mplog preamble nor a stdlib length prefix
)
#: The keys _clean drops: the ones today's senders no longer send (older ones do).
_DROP = UNSENT_KEYS
#: The collector's own footprint with no connection: the interpreter, mplog, a selector,
#: and the transient objects of decoding one read (MAX_ITEMS objects at most).
BASE_MEMORY = 96 * 1024 * 1024


def memory_bound(max_connections: int = MAX_CONNECTIONS,
                 max_frame_bytes: int = MAX_PICKLE_FRAME) -> int:
    """The RSS (bytes) ``mplog serve`` stays under, whatever its peers send:
    ``BASE_MEMORY + max_connections * (frame + READ_SIZE + MAX_OUTBOUND) * 5 / 4`` with
    *frame* the larger of *max_frame_bytes* and the mplog wire's limit (each connection
    holds at most one partial frame, one read and its unread answers; 5/4 for the
    growth slack of a ``bytearray``). The output's records held while it fails are one
    read's worth, inside BASE_MEMORY. ``docs/collector.md`` explains each term."""
    frame = max(max_frame_bytes, MIN_FRAME_LIMIT)
    return BASE_MEMORY + max_connections * (frame + READ_SIZE + MAX_OUTBOUND) * 5 // 4
# Fields the --text line shows in fixed places (or not at all): the rest are extras.
_TEXT_FIXED = STANDARD_ATTRS | {"mplog_sender", "mplog_seq"}
_WANT = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Diagnostics:
    """The collector's stderr: one escaped, capped line each, rate-limited per reason.

    *reason* is one of a few fixed words chosen by the code, never by a peer, so the
    table of windows stays small.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 stream: IO[str] | None = None) -> None:
        self._clock = clock
        self._stream = stream  # None: sys.stderr as it is at each write
        self._windows: dict[str, list[float]] = {}  # reason -> [start, shown, suppressed]
        self.suppressed = 0
        self.dropped = 0  # lines stderr could not take without blocking

    def say(self, reason: str, text: str) -> None:
        now = self._clock()
        w = self._windows.get(reason)
        if w is None or now - w[0] >= DIAG_PERIOD:
            if w is not None:
                self._report_suppressed(reason, w)
            w = self._windows[reason] = [now, 0, 0]
        if w[1] < DIAG_BURST:
            w[1] += 1
            self.write(text)
        else:
            w[2] += 1
            self.suppressed += 1

    def tick(self, final: bool = False) -> None:
        """Report the suppressed lines of every window that has ended (*final*: of all)."""
        now = self._clock()
        for reason, w in list(self._windows.items()):
            if final or now - w[0] >= DIAG_PERIOD:
                self._report_suppressed(reason, w)
                del self._windows[reason]

    def _report_suppressed(self, reason: str, w: list[float]) -> None:
        if w[2]:
            self.write(f"... {int(w[2])} more {reason} lines suppressed in {DIAG_PERIOD:g} s")
            w[2] = 0

    def write(self, text: str, wait: float = 0.0) -> None:
        """One line now (not rate-limited); counted in ``dropped`` if stderr is full."""
        line = ("mplog serve: " + one_line(text, DIAG_LIMIT) + "\n").encode("utf-8", "replace")
        stream = self._stream or sys.stderr
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1  # a stream without a descriptor (embedded, captured): write to it
        try:
            if fd < 0:
                stream.write(line.decode("utf-8"))
                stream.flush()
                return
            # A pipe nobody reads must not stall the collector: write only when a line
            # (< PIPE_BUF, so written whole) fits now.
            ready = _poll.writable(fd, wait)
            if not ready:
                self.dropped += 1
                return
            os.write(fd, line)
        except (OSError, ValueError):
            self.dropped += 1


def _text_value(value: object) -> str:
    if isinstance(value, str):
        if value and not any(c in value for c in ' "='):
            return one_line(value)
        return one_line(json.dumps(value, ensure_ascii=False))
    try:
        return one_line(json.dumps(value, ensure_ascii=False, default=safe_repr))
    except (TypeError, ValueError, RecursionError):
        return one_line(safe_repr(value))


def _text_line(rec: Mapping[str, Any]) -> str:
    """One record as one line, whatever its fields hold (control characters escaped):
    ``TIME LEVEL NAME [PROCESSNAME:PID] MESSAGE key=value ... exc_text=... stack_info=...``."""
    created = rec.get("created")
    stamp = iso_local(created) if isinstance(created, int | float) else "-"
    parts = [
        stamp, one_line(rec.get("levelname", "-")), one_line(rec.get("name", "-")),
        f"[{one_line(rec.get('processName', '-'))}:{one_line(rec.get('process', '-'))}]",
        one_line(rec.get("msg", "")),
    ]
    parts += [f"{one_line(k)}={_text_value(v)}" for k, v in rec.items() if k not in _TEXT_FIXED]
    for key in ("exc_text", "stack_info"):
        if rec.get(key):
            parts.append(f"{key}={_text_value(rec[key])}")
    return " ".join(parts)


# Built once: json.dumps with any keyword builds a new encoder on every call.
_encode_json = json.JSONEncoder(default=safe_repr).encode


def _json_line(rec: Mapping[str, Any]) -> str:
    try:
        return _encode_json(rec)
    except (TypeError, ValueError, RecursionError) as exc:  # not reached for checked rows
        return json.dumps({"mplog_unencodable": one_line(safe_repr(rec), 2000),
                           "mplog_error": type(exc).__name__})


# -- the mplog wire's passthrough ----------------------------------------------------------
#
# A record body the sender wrote is one JSON object already. When writing it as it is,
# with the sender and seq spliced in before its final brace, gives the same record as
# parsing it, bounding it (jsonable), cleaning it (_clean) and encoding it again, the
# collector writes those bytes: the slow path costs ~5x more per record. _passthrough
# says when that holds; every other record takes the slow path, which also gives today's
# refusal for a body that is not one JSON object. The records of one read are validated
# by one parse where _passthrough_batch shows that to be exact (the flat records
# senders send: then a read costs one orjson call and a few C-level passes); otherwise
# each body takes _passthrough.

#: Keys the collector sets: a body with one of them is rewritten by the slow path.
_FAST_REFUSED_KEYS = frozenset(("mplog_sender", "mplog_seq"))
#: The keys _clean drops: (key, its member in compact JSON after a comma, the same with
#: a null value, the key as a JSON string).
_DROP_MEMBERS = tuple((k, f',"{k}":'.encode(), f',"{k}":null'.encode(), f'"{k}"'.encode())
                      for k in _DROP)
_DROP_SET = frozenset(_DROP)
_DROP_NULL = {k: null for k, _, null, _ in _DROP_MEMBERS}
_DROP_MEMBER = {k: member for k, member, _, _ in _DROP_MEMBERS}
#: What a body may not have for its bytes to be written whole (the dropped keys cut).
_FAST_PLAIN_KEYS = _FAST_REFUSED_KEYS | _DROP_SET
#: Longest body passed through: every JSON value takes at least 2 bytes (itself and a
#: separator), so such a body has fewer than jsonable's MAX_NODES values, and fewer
#: characters than its 2 MiB (it is ASCII: one byte per character at most).
_FAST_MAX_BYTES = 2 * MAX_NODES
#: A float literal json.loads reads as +-inf (which jsonable rewrites as "inf"): an
#: exponent of 3 digits or more, or 200 digits in a row. Conservative (it also matches
#: inside strings): a match only sends the record to the slow path.
_OVERFLOW = re.compile(rb"[0-9](?:[eE]\+?[0-9]{3}|[0-9]{199})")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and the infinities: the slow path's job


_strict_decoder = json.JSONDecoder(parse_constant=_no_constant)
#: A str as the stdlib's default (ensure_ascii) encoder writes it, quotes included.
_encode_str_ascii: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _strict_loads_stdlib(body: bytes) -> Any:
    """json.loads of an ASCII *body*, refusing (ValueError) what would come out as a
    non-finite float."""
    if _OVERFLOW.search(body):
        raise ValueError("a number that may overflow")
    return _strict_decoder.decode(body.decode("ascii"))


#: Parses exactly one JSON value (ValueError otherwise), never a non-finite float.
#: orjson refuses NaN, the infinities, overflowing numbers and lone surrogates itself
#: (json.loads accepts them; those records then take the slow path), and accepts
#: nothing json.loads refuses (tests/unit/test_collector_fast.py checks both on a corpus).
_strict_loads: Callable[[bytes], Any] = (
    _strict_loads_stdlib if _orjson_loads is None else _orjson_loads
)


def _passthrough(body: bytes) -> bytes | None:
    """The bytes to write for *body* (an mplog-wire record body), without its final
    ``}``, for the sender and seq to be spliced in; or None: take the slow path.

    Bytes are written when that gives the record the slow path writes: *body* is one
    JSON object on one line, ASCII (what the slow path's ensure_ascii output is), not
    empty, and nothing in it is rewritten by the slow path (a key the collector sets, a
    non-str ``msg``, nesting past MAX_DEPTH, more than MAX_NODES values, a non-finite
    float). The keys _clean drops (``args``, ``exc_info``, ``message``: today's senders
    leave them out, older ones send the first two as null) are cut out of the bytes
    when that is sure to be exact (see :func:`_cut_members`). The cheap byte checks go
    first; then one validating parse."""
    if not (
        body.startswith(b"{") and body.endswith(b"}") and len(body) <= _FAST_MAX_BYTES
        and body.isascii() and b"\n" not in body and b"\r" not in body
    ):
        return None
    # Nesting can be at most the number of brackets: the record itself is level 1.
    flat = b"[" not in body and body.find(b"{", 1) < 0
    if not flat and body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        return None
    try:
        rec = _strict_loads(body)
    except ValueError:
        return None
    if not (type(rec) is dict and rec and type(rec.get("msg", "")) is str):
        return None
    if rec.keys().isdisjoint(_FAST_PLAIN_KEYS):
        return body[:-1]
    if not rec.keys().isdisjoint(_FAST_REFUSED_KEYS):
        return None
    return _cut_members(body, rec) if flat else None


def _passthrough_batch(bodies: list[bytes],
                       recs: list[Any] | None = None) -> list[bytes | None] | None:
    """:func:`_passthrough` of each of *bodies* (one read's records), with one
    validating parse for all of them instead of one each; or None when the bodies do not
    meet the conditions below (then each takes :func:`_passthrough`).

    The conditions: each body starts with ``{``, ends with ``}`` and is at most
    _FAST_MAX_BYTES long; together they are ASCII, hold no line break, no ``[`` and
    exactly one ``{`` per body. Then ``[B1<TAB>,B2<TAB>,...,Bk]`` parses to a list whose
    i-th element is what Bi alone parses to, and fails to parse if any Bi is not one
    JSON object:

    - No string spans two bodies: it would hold the raw tab of a separator, which JSON
      refuses inside a string (tab is whitespace outside one). So each body is read as
      it would be alone, and the ``{`` that starts it is a bracket, not string text.
    - Those k brackets are all the ``{`` there are, and there is no ``[``: nothing is
      nested. Body i's first bracket opens an object at the list's level; the first
      ``}`` outside a string closes it. Were that before the body's last ``}`` (which
      is outside a string too: a string cannot run into the separator or the end),
      the text after it would have a ``}`` at the list's level, a syntax error. So the
      object is exactly Bi's bytes, and the separator between two is the list's comma.

    Same parser, same bytes per element: the same values, the same refusals (a body the
    validator refuses fails the whole parse; the caller then tries each alone)."""
    if recs is None:  # (else: what _batch_records gave for these bodies)
        recs = _batch_records(bodies)
        if recs is None:
            return None
    if _all_plain(recs):
        return [body[:-1] for body in bodies]
    return _heads(bodies, recs)


def _heads(bodies: list[bytes], recs: list[Any]) -> list[bytes | None]:
    """:func:`_passthrough` of each of *bodies*, given what each parses to (*recs*, from
    :func:`_batch_records`), one by one."""
    heads: list[bytes | None] = []
    append = heads.append
    plain, refused = _FAST_PLAIN_KEYS, _FAST_REFUSED_KEYS
    for body, rec in zip(bodies, recs, strict=True):
        # What _passthrough checks after its parse (a flat body: no depth to check).
        if not (type(rec) is dict and rec and type(rec.get("msg", "")) is str):
            append(None)
        elif rec.keys().isdisjoint(plain):
            append(body[:-1])
        elif rec.keys().isdisjoint(refused):
            append(_cut_members(body, rec))
        else:
            append(None)
    return heads


_first_byte = operator.itemgetter(0)
_last_byte = operator.itemgetter(-1)
_dict_keys_isdisjoint: Callable[[Any, Any], bool] = type({}.keys()).isdisjoint


def _batch_records(bodies: list[bytes]) -> list[Any] | None:
    """What each of *bodies* parses to, by the one parse :func:`_passthrough_batch`
    describes, or None when the bodies do not meet its conditions or do not parse."""
    k = len(bodies)
    arr = b"".join((b"[", b"\t,".join(bodies), b"]"))
    try:
        braced = (bytes(map(_first_byte, bodies)) == b"{" * k
                  and bytes(map(_last_byte, bodies)) == b"}" * k)
    except IndexError:  # an empty body
        return None
    if not (
        braced and arr.isascii() and b"\n" not in arr and b"\r" not in arr
        and arr.find(b"[", 1) < 0 and arr.count(b"{") == k
        and max(map(len, bodies)) <= _FAST_MAX_BYTES
    ):
        return None
    try:
        recs = _strict_loads(arr)
    except ValueError:
        return None
    if type(recs) is not list or len(recs) != k:  # cannot be (see above): to be safe
        return None
    return recs


def _all_plain(recs: list[Any]) -> bool:
    """True when every one of *recs* (parsed, flat bodies) is written as its bytes: a
    non-empty dict, ``msg`` a str, none of the keys the collector sets or drops. The
    checks of :func:`_passthrough`, one C-level pass each."""
    k = len(recs)
    return (
        set(map(type, recs)) == {dict} and all(recs)
        and set(map(type, map(dict.get, recs, itertools.repeat("msg", k)))) == {str}
        and all(map(_dict_keys_isdisjoint, map(dict.keys, recs),
                    itertools.repeat(_FAST_PLAIN_KEYS, k)))
    )


def _cut_members(body: bytes, rec: dict[str, Any]) -> bytes | None:
    """*body* without its final ``}`` and without the members of the keys _clean drops,
    or None if that cannot be done exactly. *body* is one valid JSON object with no
    container inside it (so every member is its own) and *rec* is what it parses to.

    A member ``,"KEY":VALUE`` is cut when VALUE is the key's value (null or a string) as
    the stdlib's compact ASCII encoder writes it, and KEY is no other member's key. Such
    bytes can only be that member: their first quote follows a comma, so it is no
    escaped quote inside a string; a string it closed could not be followed by a letter
    in valid JSON; so it opens the string ``"KEY"``, which a colon makes a key, and the
    value's bytes end where the value ends. Cutting it leaves valid JSON whose other
    members are as they were (what follows it is a comma or the brace).

    No key is twice in *body* when it has one comma fewer than *rec* has keys: every
    member but the first follows a comma, and a comma inside a string would only make
    the count larger. Then the members are in the order of *rec*'s keys, and each is
    found from the end (where senders put these keys). Otherwise (a comma in a string,
    say in a traceback) ``"KEY"`` is looked for everywhere: it must occur once, as that
    member."""
    unique = body.count(b",") + 1 == len(rec)
    if unique:
        # The members are in the order of rec's keys: the common layout has the dropped
        # ones last, cut with one check each from the end.
        end = len(body) - 1
        left = ("args" in rec) + ("exc_info" in rec) + ("message" in rec)
        for key in reversed(rec):
            if key not in _DROP_SET:
                break
            value = rec[key]
            if value is None:
                cut = _DROP_NULL[key]
            elif type(value) is str:
                cut = _DROP_MEMBER[key] + _encode_str_ascii(value).encode("ascii")
            else:
                return None
            if not body.endswith(cut, 0, end):
                break
            end -= len(cut)
            left -= 1
            if not left:
                return body[:end]
    spans: list[tuple[int, int]] = []
    first = len(body)
    size = 0
    for key, member, null, quoted in _DROP_MEMBERS:
        if key in rec:
            value = rec[key]
            if value is None:
                cut = null
            elif type(value) is str:
                cut = member + _encode_str_ascii(value).encode("ascii")
            else:
                return None
            if unique:
                at = body.rfind(cut)
                if at < 0:
                    return None
            else:
                at = body.find(quoted) - 1  # the first "KEY" must start the member
                if (at < 0 or not body.startswith(cut, at)
                        or body.find(quoted, at + len(cut)) >= 0):
                    return None
            spans.append((at, at + len(cut)))
            first = min(first, at)
            size += len(cut)
    if size == len(body) - 1 - first:
        return body[:first]  # the members fill the end (disjoint spans): one slice
    spans.sort()
    pieces = []
    start = 0
    for at, end in spans:
        pieces.append(body[start:at])
        start = end
    pieces.append(body[start:-1])
    return b"".join(pieces)


class _Dedup:
    """The highest sequence number written, per sender and per spool epoch.

    Kept per epoch (``seq >> EPOCH_SHIFT``) rather than per sender so that one record with
    a huge number (forged by a client on a collector without a key, which trusts its
    senders) silences at most that epoch of that sender, never its later epochs; the wire
    refuses numbers of 2**63 and above. Only records whose frames were accepted (MAC
    verified, with a key) ever advance it.
    """

    __slots__ = ("marks",)

    def __init__(self) -> None:
        #: sender -> epoch -> highest seq written
        self.marks: dict[str, dict[int, int]] = {}

    def of(self, sender: str) -> dict[int, int]:
        """The epoch marks of *sender*, to read and advance (created when first asked)."""
        marks = self.marks.get(sender)
        if marks is None:
            marks = self.marks[sender] = {}
        return marks

    def acked(self, sender: str) -> int:
        """The highest seq of *sender* written (the welcome's ``acked``), 0 if none."""
        marks = self.marks.get(sender)
        return max(marks.values()) if marks else 0

    def note(self, sender: str, seq: int) -> None:
        marks = self.of(sender)
        epoch = seq >> EPOCH_SHIFT
        if seq > marks.get(epoch, 0):
            marks[epoch] = seq


class _Output:
    """Append-only output: JSON lines (or text), size-based rotation, torn-line repair.

    :meth:`write` queues the records' lines and writes what it can; a write error (a full
    disk, EIO, a closed pipe) leaves the unwritten rest queued, in order and from the
    exact byte where it stopped, for :meth:`flush` to retry. Nothing raises for a write.
    """

    def __init__(
        self, path: str | None, stream: IO[bytes] | None, *, text: bool, max_bytes: int,
        backup_count: int, fsync: bool, fd: int = -1,
    ) -> None:
        self.path = path
        self.text = text
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.fsync = fsync
        self.last_seq = _Dedup()
        self.torn_repaired = 0
        self.lines_written = 0
        self.error: OSError | None = None  # the last write error, None once writing works
        self._pending: list[bytes] = []  # lines not yet (fully) written, in order
        self._offset = 0  # bytes of _pending[0] already written
        self._unsynced = False  # written but the fsync failed: retry it before an ack
        self._renamed = False  # a rotation renamed the files but could not open the new one
        self._stream = stream
        self._fd = fd
        self._own_fd = False
        self._size = 0
        if path is not None:
            self._repair_and_load()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._own_fd = True
            self._size = os.fstat(self._fd).st_size

    @property
    def pending(self) -> int:
        """Lines held in memory that are not (fully) written yet."""
        return len(self._pending)

    def _files(self) -> list[pathlib.Path]:
        assert self.path is not None
        base = pathlib.Path(self.path)
        olds = [base.with_name(f"{base.name}.{i}") for i in range(self.backup_count, 0, -1)]
        return [p for p in [*olds, base] if p.exists()]

    def _repair_and_load(self) -> None:
        assert self.path is not None
        p = pathlib.Path(self.path)
        if p.exists():
            with open(p, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)  # a line cut by a crash
                    self.torn_repaired = 1
        for path in self._files():
            with open(path, "rb") as f:
                for line in f:
                    if b'"mplog_seq"' not in line:
                        continue
                    try:
                        rec = json.loads(line)
                        sender, seq = rec["mplog_sender"], rec["mplog_seq"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line we did not write: not ours to de-duplicate
                    # Only what this collector writes: a str sender and an int seq in
                    # the wire's range (a hand-edited line cannot silence a sender).
                    if (isinstance(sender, str) and type(seq) is int
                            and 0 < seq < 1 << 63):
                        self.last_seq.note(sender, seq)

    def write(self, records: list[dict[str, Any]]) -> bool:
        """Queue *records* and write; True when nothing is left unwritten."""
        self._pending += [self.line(r) for r in records]
        return self.flush()

    def line(self, record: Mapping[str, Any]) -> bytes:
        """*record* as the output line it is written as (with its newline)."""
        encode = _text_line if self.text else _json_line
        return (encode(record) + "\n").encode("utf-8", "replace")

    def write_lines(self, lines: list[bytes]) -> bool:
        """Queue finished *lines* (each one line ending in a newline) and write, like
        :meth:`write`."""
        self._pending += lines
        return self.flush()

    def flush(self) -> bool:
        """Write what is queued; True when all of it is written (and fsynced)."""
        try:
            if self._unsynced:
                os.fsync(self._fd)
                self._unsynced = False
            while self._pending:
                if self._fd < 0:
                    self._write_stream()
                else:
                    self._write_chunk()
        except OSError as exc:
            self.error = exc
            return False
        self.error = None
        return True

    def _write_stream(self) -> None:
        assert self._stream is not None
        data = b"".join(self._pending)[self._offset :]
        # A stream reports no partial write: on an error everything is retried (the
        # stream is an embedding program's object; files and stdout use os.write).
        self._stream.write(data)
        self._stream.flush()
        self.lines_written += len(self._pending)
        self._pending, self._offset = [], 0

    def _write_chunk(self) -> None:
        # Lines up to the next rotation point, written from where the last try stopped.
        # Rotation happens at line boundaries, so no file grows past max_bytes (a single
        # line longer than that gets a file of its own).
        if self.max_bytes and self._offset == 0 and (
            self._renamed or (self._size and self._size + len(self._pending[0]) > self.max_bytes)
        ):
            self._rotate()
        count = len(self._pending)
        if self.max_bytes:
            size = self._size - self._offset
            for i, line in enumerate(self._pending):
                if i and size + len(line) > self.max_bytes:
                    count = i
                    break
                size += len(line)
        data = memoryview(b"".join(self._pending[:count]))[self._offset :]
        n = os.write(self._fd, data)
        self._size += n
        if n == len(data):  # the usual case: all of it at once
            del self._pending[:count]
            self.lines_written += count
            self._offset = 0
        else:
            self._consume(n)
            data = data[n:]
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
                self._size += n
                self._consume(n)
        if self.fsync:
            self._unsynced = True
            os.fsync(self._fd)
            self._unsynced = False
        if self.max_bytes and self._size >= self.max_bytes and not self._pending:
            self._rotate()

    def _consume(self, n: int) -> None:
        offset = self._offset + n
        done = 0
        for line in self._pending:
            if offset < len(line):
                break
            offset -= len(line)
            done += 1
        if done:
            del self._pending[:done]
            self.lines_written += done
        self._offset = offset

    def _rotate(self) -> None:
        # Renames first, then open the new file, then close the old one: a failure at any
        # step (no inode left, EMFILE) leaves a state the next try completes.
        assert self.path is not None
        base = pathlib.Path(self.path)
        if not self._renamed:
            if self.backup_count > 0:
                for i in range(self.backup_count - 1, 0, -1):
                    src = base.with_name(f"{base.name}.{i}")
                    if src.exists():
                        src.replace(base.with_name(f"{base.name}.{i + 1}"))
                base.replace(base.with_name(f"{base.name}.1"))
            else:
                base.unlink()
            self._renamed = True
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.close(self._fd)
        self._fd = fd
        self._size = 0
        self._renamed = False

    def reopen(self) -> bool:
        """Open the output path again (it was moved away: logrotate), and write on there.
        False, changing nothing, while a line is written in part: its rest goes to the
        file it began in, so call again after the next :meth:`flush`. OSError if the path
        cannot be opened (the old file is kept)."""
        if not self._own_fd or self.path is None:
            return True  # stdout or a stream: nothing to reopen
        if self._offset:
            return False
        if self._unsynced:
            os.fsync(self._fd)  # what was acknowledged is on disk before the old fd goes
            self._unsynced = False
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.close(self._fd)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        return True

    def close(self) -> None:
        if self._own_fd and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        elif self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:  # kept for the summary, like any write error
                self.error = OSError(str(exc))


class _TooLarge(ProtocolError):
    """A stdlib-wire length prefix above ``max_frame_bytes``."""


class _Conn:
    __slots__ = (
        "deadline",
        "draining",
        "events",
        "frames",
        "head",
        "line_format",
        "mplog",
        "out",
        "peer",
        "pickle",
        "sock",
        "splice",
        "tls_wants_write",
        "unacked",
    )

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.head = b""
        self.mplog: ServerConnection | None = None
        self.pickle: FrameSplitter | None = None
        self.deadline = deadline  # closed (idle_timeout) if no frame completes before it
        self.frames = 0  # stdlib-wire frames completed
        self.out = bytearray()  # answers the peer has not taken yet
        self.unacked = 0  # mplog wire: highest seq written late, to acknowledge on resume
        self.draining = False  # refused: reading and discarding until EOF or deadline
        self.events = 0  # what the selector watches for this socket (0: not registered)
        self.tls_wants_write = False  # a TLS handshake waits for the socket to take bytes
        self.splice = b""  # mplog wire: what goes before a passed-through record's seq
        self.line_format = b""  # mplog wire: b"%b" + splice + b"%d}\n", for (head, seq)

    def wire(self) -> str:
        if self.mplog is not None:
            sender = self.mplog.sender
            return f"mplog wire, sender {sender}" if sender else "mplog wire"
        return "pickle wire" if self.pickle is not None else "wire not known yet"


def _peer_name(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return one_line(addr) if addr else "unix socket peer"


def guess_wire(head: bytes) -> str:
    """What a peer whose first bytes are *head* (at least 4) seems to speak, for the line
    that refuses it."""
    first = head[:16]
    if head[:2] == b"\x16\x03":
        what = "a TLS handshake, and this collector serves plain TCP (--tls-cert, --tls-key)"
    elif head[:1] in (b"{", b"["):
        what = 'JSON lines (wire="jsonl")'
    elif head[:1] == b"<" and head[1:2].isdigit():
        what = 'syslog (wire="syslog")'
    elif head[:1].isdigit():
        what = "octet-counted syslog (RFC 6587) or RELP"
    elif head.split(b" ", 1)[0] in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS"):
        what = "HTTP"
    else:
        return f"its first bytes {first!r} are neither the mplog preamble nor a length prefix"
    return f"its first bytes {first!r} look like {what}"


class Collector:
    """Receive records over the mplog and stdlib wires and write them to *output*.

    Args:
        host, port: TCP address to listen on (``port=0``: any free port); or
        unix: a Unix socket path instead.
        output: a file path (appended to), ``"-"`` for stdout, or a binary stream.
        hmac_key / hmac_key_file: require HMAC-signed mplog frames with this key (the
            stdlib wire, which cannot be signed, is then refused with a one-line reason
            starting with :data:`REFUSAL_PREFIX`).
        text: write human-readable lines instead of JSON.
        max_bytes, backup_count: rotate the output file at *max_bytes* (0: never).
        fsync: fsync the output before each acknowledgement.
        max_connections: connections open at once; one more is accepted and closed.
        idle_timeout: seconds a connection may go without completing a frame (an idle
            one, or one trickling a partial frame) before it is closed.
        max_frame_bytes: largest frame on either wire (default 1 MiB,
            ``mplog._limits.COLLECTOR_FRAME``: every frame mplog itself sends fits); at
            least 1024 for the mplog wire's handshake.
        tls_cert, tls_key: serve TLS with this certificate (and key, unless it is in the
            certificate file); tls_client_ca: also require client certificates signed by
            this CA (mutual TLS). A failed handshake closes that connection, with one line
            on stderr, and counts in ``stats["tls_failures"]``.

    The socket is bound by the constructor (``address`` is known at once); serve with
    :meth:`serve_forever` (blocking) or :meth:`start` (a thread); :meth:`stop` ends it.

    ``stats`` is a dict of counters (only ever increasing, except ``open_connections``
    and ``pending``)::

        connections         connections accepted (refused ones included)
        open_connections    connections open now
        records             records written to the output
        pending             records read but not yet written (the output is failing)
        duplicates          mplog-wire records not written again (already in the output)
        bad_frames          connections closed for a bad frame (every refusals_* but
                            max_connections, idle_timeout and slow_reader)
        torn_frames         stdlib-wire connections that ended inside a frame
        torn_repaired       1 if a torn last line was removed from the output at start
        refusals_<reason>   connections closed for <reason>, one of REFUSAL_REASONS
        output_stalls       times the output failed and reading stopped
        write_errors        failed tries to write the output (first one and retries)
        lost_on_exit        records read but never written: the output still failed at stop
        reopens             times the output file was opened again (reopen(), SIGHUP)
        diagnostics_suppressed  stderr lines left out by the rate limit
        diagnostics_dropped     stderr lines left out because stderr was full
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 0,
        *,
        unix: str | None = None,
        output: str | IO[bytes] = "-",
        hmac_key: bytes | str | None = None,
        hmac_key_file: str | None = None,
        text: bool = False,
        max_bytes: int = 0,
        backup_count: int = 5,
        fsync: bool = False,
        window: int = DEFAULT_WINDOW,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        max_frame_bytes: int = MAX_PICKLE_FRAME,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
    ) -> None:
        self.key = load_key(hmac_key, hmac_key_file)
        self._tls = server_context(tls_cert, tls_key, tls_client_ca)
        if self._tls is not None and unix is not None:
            raise ConfigError("TLS needs a TCP port; --unix sockets are served in the clear")
        #: Connections whose TLS handshake is under way: when each must be done, and
        #: the client's address (for the error line; the peer may be gone by then).
        self._handshakes: dict[socket.socket, tuple[float, str]] = {}
        if max_bytes < 0 or backup_count < 0:
            raise ConfigError("max_bytes and backup_count must be >= 0")
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {max_connections}")
        if not (isinstance(idle_timeout, int | float) and math.isfinite(idle_timeout)
                and idle_timeout > 0):
            raise ConfigError(
                f"idle_timeout must be a positive number of seconds, got {idle_timeout!r}"
            )
        if max_frame_bytes < MIN_FRAME_LIMIT:
            raise ConfigError(
                f"max_frame_bytes must be at least {MIN_FRAME_LIMIT}, got {max_frame_bytes}"
            )
        self.window = window
        self.max_connections = max_connections
        self.idle_timeout = float(idle_timeout)
        self.max_frame_bytes = max_frame_bytes
        self.diag = _Diagnostics()
        fd = -1
        if isinstance(output, str):
            path = None if output == "-" else output
            stream = None
            if output == "-":
                fd = 1  # os.write on stdout: a partial write is known, as for a file
        else:
            path, stream = None, output
        try:
            self._out = _Output(path, stream, text=text, max_bytes=max_bytes,
                                backup_count=backup_count, fsync=fsync, fd=fd)
        except OSError as exc:
            raise ConfigError(f"cannot open output {output!r}: {exc}") from exc
        try:
            if unix is not None:
                if os.path.exists(unix):
                    os.unlink(unix)
                self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._lsock.bind(unix)
                self.address = unix
            else:
                self._lsock = socket.create_server((host, port or 0), reuse_port=False)
                self.address = f"{host}:{self._lsock.getsockname()[1]}"
            self._lsock.listen(128)
        except OSError as exc:
            self._out.close()
            raise ConfigError(f"cannot listen on {unix or f'{host}:{port}'}: {exc}") from exc
        self.unix = unix
        self._lsock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._lsock, selectors.EVENT_READ, None)
        self._listening = True
        self._accept_again = 0.0  # monotonic time to listen again after EMFILE
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._reopen = False  # reopen() asked for; done by the loop
        #: The output is a pipe nobody reads any more: serve_forever ends (see _stall).
        self._output_gone = False
        self._stalled_since: float | None = None
        self._next_retry = 0.0
        self._next_sweep = 0.0
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, _Conn] = {}
        self.stats: dict[str, int] = {
            "connections": 0, "open_connections": 0, "records": 0, "pending": 0,
            "duplicates": 0, "bad_frames": 0, "torn_frames": 0,
            "torn_repaired": self._out.torn_repaired,
            **{f"refusals_{r}": 0 for r in REFUSAL_REASONS},
            "output_stalls": 0, "write_errors": 0, "lost_on_exit": 0,
            "diagnostics_suppressed": 0, "diagnostics_dropped": 0,
            "tls_failures": 0, "reopens": 0,
        }

    @property
    def port(self) -> int:
        if self.unix is not None:
            raise AttributeError("a Unix-socket collector has no port")
        return int(self._lsock.getsockname()[1])

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.serve_forever, name="mplog-collector",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def reopen(self) -> None:
        """Open the output file again, by its path, at the next loop turn (``mplog serve``
        does on SIGHUP: logrotate moved it away); safe from any thread or signal handler.
        Every line goes whole to one file, and nothing is lost or written twice."""
        self._reopen = True
        with contextlib.suppress(OSError):  # already woken, or closed: the loop is ending
            self._wake_w.send(b"x", socket.MSG_DONTWAIT)

    def stop(self) -> None:
        """Stop accepting, flush the output, close; safe from any thread or signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):  # already woken, or closed: the loop is ending
            self._wake_w.send(b"x", socket.MSG_DONTWAIT)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    @property
    def output_gone(self) -> bool:
        """True if the collector stopped because its output's reader went away."""
        return self._output_gone

    def summary(self) -> str:
        """One line: what this collector did (printed at exit by ``mplog serve``)."""
        st = self.stats
        refused = " ".join(
            f"{r}={st[f'refusals_{r}']}" for r in REFUSAL_REASONS if st[f"refusals_{r}"]
        )
        text = (
            f"stopped: {st['records']} records written, {st['duplicates']} duplicates "
            f"suppressed, {st['connections']} connections, refusals: {refused or 'none'}"
        )
        if st["output_stalls"]:
            text += f", output failed {st['output_stalls']} times"
        if st["lost_on_exit"]:
            text += f", {st['lost_on_exit']} records read but NOT written (output failing)"
        if st["diagnostics_suppressed"] or st["diagnostics_dropped"]:
            text += (f", {st['diagnostics_suppressed'] + st['diagnostics_dropped']} "
                     "diagnostic lines suppressed")
        return text

    def serve_forever(self) -> None:
        _sigpipe.block_in_this_thread()  # a collector in a user's thread: see _sigpipe
        try:
            while not self._stopping:
                for key, mask in self._sel.select(self._timeout()):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        conn: _Conn = key.data
                        if conn.sock in self._handshakes:
                            self._read(conn)  # drives the TLS handshake, either way
                            continue
                        if mask & selectors.EVENT_WRITE and conn.sock in self._conns:
                            self._flush_out(conn)
                        if (mask & selectors.EVENT_READ and conn.sock in self._conns
                                and self._stalled_since is None):
                            self._read(conn)
                if self._reopen:
                    self._reopen_output()
                self._housekeeping()
                if self._handshakes:
                    self._expire_handshakes()
        finally:
            self._close()

    def _reopen_output(self) -> None:
        try:
            done = self._out.reopen()
        except OSError as exc:
            self._reopen = False
            self.diag.say("reopen", f"cannot reopen the output {self._out.path!r} ({exc}); "
                          "writing on in the old file")
            return
        if done:  # else a line is half written: again at the next turn
            self._reopen = False
            self.stats["reopens"] += 1
            self.diag.say("reopen", f"reopened the output {self._out.path!r}")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # nothing more to drain
            while self._wake_r.recv(64):
                pass

    def _timeout(self) -> float:
        if self._stalled_since is not None:
            return max(0.0, min(1.0, self._next_retry - time.monotonic()))
        return 0.5

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._stalled_since is not None and now >= self._next_retry:
            self._retry_output()
        if not self._listening and now >= self._accept_again:
            self._sel.register(self._lsock, selectors.EVENT_READ, None)
            self._listening = True
        if now >= self._next_sweep:
            self._next_sweep = now + min(0.5, self.idle_timeout / 4)
            if self._stalled_since is None:  # while stalled nobody is read: nobody is idle
                for conn in list(self._conns.values()):
                    if now >= conn.deadline:
                        if conn.draining:
                            self._drop(conn, "refused (the peer did not close)")
                        else:
                            self._refuse(conn, "idle_timeout",
                                         f"no complete frame for {self.idle_timeout:g} s")
            self.diag.tick()
        self.stats["diagnostics_suppressed"] = self.diag.suppressed
        self.stats["diagnostics_dropped"] = self.diag.dropped

    def _close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn, "collector stopping")
        self._sel.close()
        self._lsock.close()
        if self.unix is not None:
            pathlib.Path(self.unix).unlink(missing_ok=True)
        if not self._out.flush():
            self.stats["lost_on_exit"] = self._out.pending
            self.diag.write(f"output still failing at stop ({self._out.error}): "
                            f"{self._out.pending} records were read but not written")
        self._sync_records()
        self._out.close()
        self.diag.tick(final=True)
        self._wake_r.close()
        self._wake_w.close()
        self.stats["diagnostics_suppressed"] = self.diag.suppressed
        self.stats["diagnostics_dropped"] = self.diag.dropped

    # -- connections -------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors (EMFILE) leaves the listening socket readable: stop
                # listening for a second rather than spin.
                self.diag.say("accept", f"accept failed: {exc}; pausing accepts for 1 s")
                self._sel.unregister(self._lsock)
                self._listening = False
                self._accept_again = time.monotonic() + 1.0
                return
            self._admit(sock, _peer_name(addr))

    def _admit(self, sock: socket.socket, peer: str) -> None:
        self.stats["connections"] += 1
        if len(self._conns) >= self.max_connections:
            self._count_refusal("max_connections")
            self.diag.say("max_connections", f"refused {peer}: {self.max_connections} "
                          "connections are open (--max-connections)")
            sock.close()
            return
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Acks are small writes: without this, Nagle holds each one until the
            # client's delayed ACK of the previous one (up to 40 ms), and a sender that
            # waits on its window idles the whole time.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            # No handshake here: it needs the client's bytes, and the loop must not wait
            # for one client. _read() drives it as data arrives, within a deadline.
            sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            self._handshakes[sock] = (time.monotonic() + HANDSHAKE_TIMEOUT, peer)
        conn = _Conn(sock, peer, time.monotonic() + self.idle_timeout)
        self._conns[sock] = conn
        self.stats["open_connections"] = len(self._conns)
        self._update(conn)
        self.diag.say("connect", f"connection from {peer}")

    def _update(self, conn: _Conn) -> None:
        """Watch *conn* for what it needs now: reads unless the output is failing,
        writes while answers are queued."""
        events = 0
        if self._stalled_since is None:
            events |= selectors.EVENT_READ
        if conn.out or conn.tls_wants_write:
            events |= selectors.EVENT_WRITE
        if events == conn.events:
            return
        if conn.events and events:
            self._sel.modify(conn.sock, events, conn)
        elif events:
            self._sel.register(conn.sock, events, conn)
        else:
            self._sel.unregister(conn.sock)
        conn.events = events

    def _handshake(self, conn: _Conn) -> bool:
        """Drive *conn*'s TLS handshake one step; True once it is complete."""
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            conn.tls_wants_write = False
            self._update(conn)
            return False
        except ssl.SSLWantWriteError:
            conn.tls_wants_write = True
            self._update(conn)
            return False
        except OSError as exc:
            self._tls_failed(conn, tls_reason(exc, "server"))
            return False
        del self._handshakes[sock]
        conn.tls_wants_write = False
        self._update(conn)
        return True

    def _tls_failed(self, conn: _Conn, why: str) -> None:
        _, peer = self._handshakes.pop(conn.sock, (0.0, "a client"))
        self.stats["tls_failures"] += 1
        self.diag.say("tls", f"TLS handshake with {peer} failed: {why}")
        self._drop(conn, "TLS handshake failed")

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        for sock, (deadline, _) in list(self._handshakes.items()):
            conn = self._conns.get(sock)
            if conn is None:
                self._handshakes.pop(sock, None)
            elif now >= deadline:
                self._tls_failed(conn, f"timed out after {HANDSHAKE_TIMEOUT:g} s")

    def _recv(self, conn: _Conn) -> bytes | None:
        """What *conn* has for us now (b"": EOF or a broken connection; None: nothing
        yet). Over TLS: the handshake first, then up to READ_SIZE of decrypted data,
        drained from the TLS layer too (select() does not see bytes it holds)."""
        sock = conn.sock
        if not isinstance(sock, ssl.SSLSocket):
            try:
                return sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return None
        if sock in self._handshakes and not self._handshake(conn):
            return None
        chunks: list[bytes] = []
        size = 0
        while size < READ_SIZE:
            try:
                chunk = sock.recv(READ_SIZE - size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                if not chunks:
                    return b""
                break  # the EOF shows again on the next read
            chunks.append(chunk)
            size += len(chunk)
        # A record cut by the size limit leaves its rest inside OpenSSL, where select()
        # cannot see it: take it now.
        while chunks and sock.pending():
            chunks.append(sock.recv(sock.pending()))
        return b"".join(chunks) if chunks else None


    def _drop(self, conn: _Conn, why: str) -> None:
        if self._conns.pop(conn.sock, None) is not None:
            if conn.events:
                self._sel.unregister(conn.sock)
                conn.events = 0
            self.stats["open_connections"] = len(self._conns)
            self.diag.say("disconnect", f"closed {conn.peer} ({conn.wire()}): {why}")
        conn.sock.close()

    def _count_refusal(self, reason: str) -> None:
        self.stats[f"refusals_{reason}"] += 1
        if reason not in ("max_connections", "idle_timeout", "slow_reader"):
            self.stats["bad_frames"] += 1

    def _refuse(self, conn: _Conn, reason: str, why: str) -> None:
        self._count_refusal(reason)
        self.diag.say(reason, f"closing {conn.peer} ({conn.wire()}): {why}")
        self._drop(conn, f"refused ({reason})")

    def _bad(self, conn: _Conn, exc: Exception) -> None:
        reason = self._reason(conn, exc)
        if conn.mplog is not None:
            # The peer's own bytes can be in the message: cut it like a stderr line.
            self._send(conn, conn.mplog.error(one_line(str(exc), DIAG_LIMIT)))
            if conn.sock not in self._conns:
                return  # the send failed and dropped it
        self._refuse(conn, reason, str(exc))

    @staticmethod
    def _reason(conn: _Conn, exc: Exception) -> str:
        if isinstance(exc, _TooLarge):
            return "frame_too_large"
        if conn.pickle is not None:
            return "bad_record" if isinstance(exc, ShapeError) else "bad_pickle"
        # The mplog wire's errors carry no type for their cause (yet): its messages name it.
        text = str(exc)
        if "(limit " in text:
            return "frame_too_large"
        return "hmac" if "HMAC" in text else "protocol"

    def _send(self, conn: _Conn, data: bytes) -> bool:
        """Queue *data* for *conn* and send what the socket takes now (never blocks);
        False if the connection was dropped (send failed, or too much left unread)."""
        if not conn.out:
            try:
                n = conn.sock.send(data)
            except _WANT:
                n = 0
            except OSError as exc:
                self._drop(conn, f"send failed: {exc}")
                return False
            data = data[n:]
        conn.out += data
        if len(conn.out) > MAX_OUTBOUND:
            self._refuse(conn, "slow_reader", f"{len(conn.out)} bytes of answers left unread")
            return False
        self._update(conn)
        return True

    def _flush_out(self, conn: _Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except _WANT:
            return
        except OSError as exc:
            self._drop(conn, f"send failed: {exc}")
            return
        del conn.out[:n]
        self._update(conn)

    def _refuse_pickle_wire(self, conn: _Conn) -> None:
        # Said in a way the sender sees: one ASCII line, then our half of the connection
        # closed; what the peer still sends is read and discarded until it closes (or
        # DRAIN_SECONDS), so that the close is a FIN the line arrives before, not a RST.
        reason = (b"this collector requires HMAC-signed mplog-wire frames; "
                  b"the stdlib (pickle) wire cannot be signed")
        self._count_refusal("pickle_needs_hmac")
        self.diag.say("pickle_needs_hmac", f"closing {conn.peer}: a stdlib-wire (pickle) "
                      "connection, refused: this collector requires HMAC-signed mplog frames")
        try:
            conn.sock.send(REFUSAL_PREFIX + reason + b"\n")
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._drop(conn, f"refused (pickle_needs_hmac); could not say why: {exc}")
            return
        conn.draining = True
        conn.deadline = time.monotonic() + DRAIN_SECONDS

    # -- reading -------------------------------------------------------------------------

    def _read(self, conn: _Conn) -> None:
        try:
            data = self._recv(conn)
        except OSError as exc:
            self._eof(conn, f"connection lost: {exc}")
            return
        if data is None:
            return
        if conn.draining:
            if not data:
                self._drop(conn, "refused (pickle_needs_hmac)")
            return
        if conn.mplog is None and conn.pickle is None:
            if not data:
                self._drop(conn, "closed by the peer before a whole preamble")
                return
            conn.head += data
            if len(conn.head) < 4:
                return
            data, conn.head = conn.head, b""
            if data.startswith(MAGIC[:4]):
                conn.mplog = ServerConnection(
                    self.key, self.window, max_frame=self.max_frame_bytes
                )
            elif data[0] != 0 and int.from_bytes(data[:4], "big") > self.max_frame_bytes:
                # Not a length prefix we would take either: a peer speaking another wire.
                self._refuse(conn, "unknown_wire", f"{guess_wire(data)}; mplog serve reads "
                             "the mplog wire and the stdlib SocketHandler wire")
                return
            elif self.key is not None:
                self._refuse_pickle_wire(conn)
                return
            else:
                conn.pickle = FrameSplitter(self.max_frame_bytes)
        before = self._progress(conn)
        try:
            if conn.mplog is not None:
                if self._out.text:
                    self._mplog(conn, conn.mplog, data)
                else:
                    self._mplog_fast(conn, conn.mplog, data)
            else:
                self._pickle(conn, data)
        except ProtocolError as exc:
            self._bad(conn, exc)
            return
        if self._progress(conn) != before:
            conn.deadline = time.monotonic() + self.idle_timeout
        if not data and conn.sock in self._conns:
            self._drop(conn, "closed by the peer")

    def _eof(self, conn: _Conn, why: str) -> None:
        if conn.pickle is not None:
            with contextlib.suppress(ProtocolError):
                self._pickle(conn, b"")  # counts a torn frame; nothing else to write
        self._drop(conn, why)

    @staticmethod
    def _progress(conn: _Conn) -> tuple[object, ...]:
        # A complete frame moves one of these; a partial one or nothing moves none.
        if conn.mplog is not None:
            return (conn.mplog.sender, conn.mplog.last_seq)
        return (conn.frames,)

    def _write(self, records: list[dict[str, Any]]) -> bool:
        """Write *records* (or hold them if the output fails): True if all are written."""
        ok = self._out.write(records)
        if not ok:
            self.stats["write_errors"] += 1
            self._stall()
        self._sync_records()
        return ok

    def _sync_records(self) -> None:
        self.stats["records"] = self._out.lines_written
        self.stats["pending"] = self._out.pending

    def _stall(self) -> None:
        if isinstance(self._out.error, BrokenPipeError) and self._out.path is None:
            # Stdout is a pipe whose reader is gone (`mplog serve | head`): no retry
            # brings it back. Stop, as a filter does; what was not written is not
            # acknowledged, so mplog-wire senders keep it for the next collector. (A
            # named FIFO given as --output can get a new reader: that one stalls.)
            if not self._output_gone:
                self._output_gone = True
                self.diag.write("the output's reader is gone (broken pipe): stopping; "
                                "records not written are not acknowledged")
            self._stopping = True
            return
        if self._stalled_since is not None:
            return
        now = time.monotonic()
        self._stalled_since = now
        self._next_retry = now + RETRY_OUTPUT
        self.stats["output_stalls"] += 1
        self.diag.write(
            f"cannot write the output: {self._out.error}; holding {self._out.pending} "
            "records in memory, not reading from or acknowledging any connection until "
            f"writing works again (retrying every {RETRY_OUTPUT:g} s)"
        )
        for conn in list(self._conns.values()):
            self._update(conn)

    def _retry_output(self) -> None:
        assert self._stalled_since is not None
        pending = self._out.pending
        ok = self._out.flush()
        self._sync_records()
        now = time.monotonic()
        if not ok:
            self.stats["write_errors"] += 1
            self._next_retry = now + RETRY_OUTPUT
            if isinstance(self._out.error, BrokenPipeError) and self._out.path is None:
                self._stall()  # the reader went while the output was stalled: stop
            return
        self.diag.write(f"the output works again after {now - self._stalled_since:.1f} s: "
                        f"{pending} held records written; reading and acknowledging again")
        self._stalled_since = None
        for conn in list(self._conns.values()):
            conn.deadline = now + self.idle_timeout
            if conn.unacked and conn.mplog is not None:
                top, conn.unacked = conn.unacked, 0
                if not self._send(conn, conn.mplog.ack(top)):
                    continue
            self._update(conn)

    def _pickle(self, conn: _Conn, data: bytes) -> None:
        assert conn.pickle is not None
        if not data:
            try:
                conn.pickle.feed(b"")
            except ProtocolError:
                self.stats["torn_frames"] += 1  # the client died mid-frame
            return
        records = []
        error: ProtocolError | None = None
        try:
            bodies = conn.pickle.feed(data)
        except ProtocolError as exc:  # the only error of a non-empty feed: a length too big
            raise _TooLarge(str(exc)) from None
        conn.frames += len(bodies)
        for body in bodies:
            try:
                records.append(self._clean(decode_record(body, max_chars=2 * self.max_frame_bytes)))
            except ProtocolError as exc:
                error = exc
                break
        self._write(records)  # held in memory if the output fails: written on resume
        if error is not None:
            raise error

    def _mplog(self, conn: _Conn, session: ServerConnection, data: bytes) -> None:
        # ServerConnection yields a Record only for a frame that is whole, in order and (with
        # a key) MAC-verified for this connection's sender, nonces and position, so the
        # de-duplication marks only ever move for authenticated records. They move once
        # the records are written: a failed write leaves them where they were, and the
        # resent records are written then, not taken for duplicates. A chunk with a bad
        # frame anywhere is neither written nor acknowledged: the sender resends it.
        records = []
        top = 0
        close = False
        error: ProtocolError | None = None
        marks: dict[int, int] | None = None
        advance: dict[int, int] = {}
        try:
            events = session.receive(data)
        except ProtocolError as exc:
            events, error = [], exc
        for ev in events:
            if isinstance(ev, Record):
                sender = session.sender
                assert sender is not None
                if marks is None:
                    marks = self._out.last_seq.of(sender)
                seq = top = ev.seq
                epoch = seq >> EPOCH_SHIFT
                # Seqs increase along a connection, so the marks from before this chunk
                # are enough to tell a duplicate.
                if seq <= marks.get(epoch, 0):
                    self.stats["duplicates"] += 1
                    continue
                advance[epoch] = seq
                row = self._row(ev.record)
                row["mplog_sender"] = sender
                row["mplog_seq"] = seq
                records.append(row)
            elif isinstance(ev, Hello):
                welcome = session.welcome(self._out.last_seq.acked(ev.sender), ev.window,
                                          nonce=os.urandom(NONCE_SIZE))
                if not self._send(conn, welcome):
                    return
            elif isinstance(ev, Close):
                close = True
        # Written, or held in memory to be written once the output works again (then
        # not acknowledged until it is): either way a resend of these is a duplicate.
        written = self._write(records)
        if marks is not None:
            marks.update(advance)
        if top and not written:
            conn.unacked = top  # acknowledged when the output works again
        elif top and not self._send(conn, session.ack(top)):
            return
        if error is not None:
            raise error
        if close:
            self._drop(conn, "closed by the peer (close frame)")

    def _mplog_fast(self, conn: _Conn, session: ServerConnection, data: bytes) -> None:
        # _mplog for JSON output, without a Python object per record where it can: the
        # frames are split in place and checked by the wire (MAC, order, seq range) as
        # for _mplog; each body is validated here and, when _passthrough allows it,
        # written as the sender's bytes with mplog_sender/mplog_seq spliced in (else
        # through _row, exactly as _mplog). The same rules as _mplog: the marks move
        # only for accepted, written (or held) records; a read with a bad frame or a
        # body that is not one JSON object anywhere is neither written nor acknowledged.
        batch = session.receive_batch(data)
        if batch.hello is not None:
            hello = batch.hello
            welcome = session.welcome(self._out.last_seq.acked(hello.sender), hello.window,
                                      nonce=os.urandom(NONCE_SIZE))
            # The sender id matches [A-Za-z0-9_.:-]{1,64}: nothing to escape in JSON.
            conn.splice = f',"mplog_sender":"{hello.sender}","mplog_seq":'.encode("ascii")
            conn.line_format = b"%b" + conn.splice.replace(b"%", b"%%") + b"%d}\n"
            if not self._send(conn, welcome):
                return
        seqs = batch.seqs
        if seqs:
            sender = session.sender
            assert sender is not None
            bodies = batch.bodies
            parsed = _batch_records(bodies)
            heads: list[bytes | None] | None = None  # None: every body as it is
            if parsed is None:
                heads = [_passthrough(body) for body in bodies]
            elif not _all_plain(parsed):
                heads = _heads(bodies, parsed)
            # Refused as _mplog refuses it (the wire's words), duplicates included, and
            # before anything of this read is written.
            recs = {i: record_object(body) for i, (head, body)
                    in enumerate(zip(heads, bodies, strict=True))
                    if head is None} if heads is not None and None in heads else {}
            marks = self._out.last_seq.of(sender)
            n = len(seqs)
            keep: list[int] | range
            epoch = seqs[0] >> EPOCH_SHIFT
            if seqs[-1] >> EPOCH_SHIFT == epoch:
                # One spool epoch (the rule on a connection): the seqs increase, so the
                # duplicates (up to the mark from before this read) are a prefix.
                skip = bisect_right(seqs, marks.get(epoch, 0))
                keep = range(skip, n)
                advance = {epoch: seqs[-1]} if skip < n else {}
            else:  # a connection whose records cross epochs: one by one
                get = marks.get
                keep, advance = [], {}
                for i, seq in enumerate(seqs):
                    epoch = seq >> EPOCH_SHIFT
                    if seq > get(epoch, 0):
                        advance[epoch] = seq
                        keep.append(i)
            self.stats["duplicates"] += n - len(keep)
            splice = conn.splice
            if heads is None and isinstance(keep, range):
                fmt = conn.line_format  # b"%b" splice b"%d}\n": the body less its "}"
                start = keep.start
                lines = [fmt % (body[:-1], seq)
                         for body, seq in zip(bodies[start:], seqs[start:], strict=True)]
            else:
                if heads is None:
                    heads = [body[:-1] for body in bodies]
                lines = []
                append = lines.append
                for i in keep:
                    head = heads[i]
                    if head is not None:
                        append(b"%b%b%d}\n" % (head, splice, seqs[i]))
                    else:
                        row = self._row(recs[i])
                        row["mplog_sender"] = sender
                        row["mplog_seq"] = seqs[i]
                        append(self._out.line(row))
            # Written, or held to be written once the output works again (then not
            # acknowledged until it is): either way a resend of these is a duplicate.
            written = self._write_lines(lines)
            marks.update(advance)
            top = seqs[-1]
            if not written:
                conn.unacked = top  # acknowledged when the output works again
            elif not self._send(conn, session.ack(top)):
                return
        if batch.close:
            self._drop(conn, "closed by the peer (close frame)")

    def _write_lines(self, lines: list[bytes]) -> bool:
        """:meth:`_write` for finished lines."""
        ok = self._out.write_lines(lines)
        if not ok:
            self.stats["write_errors"] += 1
            self._stall()
        self._sync_records()
        return ok

    @staticmethod
    def _clean(row: dict[str, Any]) -> dict[str, Any]:
        for key in _DROP:
            row.pop(key, None)
        if "msg" in row and not isinstance(row["msg"], str):
            row["msg"] = str(row["msg"])
        return row

    @staticmethod
    def _row(d: Mapping[str, Any]) -> dict[str, Any]:
        # An mplog-wire record is JSON already; bounded like a decoded pickle (depth)
        # without refusing it: a part too deep becomes a placeholder, so the line can be
        # written and the record is acknowledged, never lost.
        return Collector._clean(jsonable(dict(d), strict=False))
