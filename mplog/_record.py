"""Sans-IO record codec: ``LogRecord`` -> data-only bytes -> record ``dict``.

Rules this module keeps:

- The caller's ``LogRecord`` is only read, never modified (the lesson of bpo-35726).
- What travels is what a receiver's ``Formatter`` needs to render the record exactly as it
  would have locally: the merged message (``msg``; ``args`` is dropped), the formatted
  traceback (``exc_text``), ``stack_info`` as text, every standard attribute, and each
  ``extra=`` field: kept as is when JSON can represent it, else replaced by its ``repr()``.
- A record whose ``msg`` is a ``dict`` (structlog's ``ProcessorFormatter.wrap_for_formatter``
  logs its event dict that way) travels as data: its keys become top-level fields like
  extras, its ``"event"`` (when a string) becomes the message, and a key that names a
  standard attribute travels with a ``_`` appended instead of being lost. The attributes
  structlog attaches for a formatter in the same process (``_logger``, ``_name``: a logger
  object and a method name) are not sent: they mean nothing in another process.
- Encoding never raises: an odd object in ``args`` or ``extra`` degrades to text.
- Data only: decoding can never run code. A record body is ``b"R"``, the three float
  times as little-endian doubles (exact, and ten times cheaper than printing floats), then
  a JSON array of the other fields in the fixed order of :data:`FIELDS` with the extras
  (a JSON object, or ``null``) last. A control body is a JSON object with an ``"op"``.
- The encoder is the worker's hot path: the fields that are fixed for a call site and a
  thread are turned into JSON text once and cached.
"""

from __future__ import annotations

import json
import logging
import operator
import struct
import sys
import traceback
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring_ascii,
)
from typing import Any

from ._errors import ProtocolError, RemoteProtocolError
from ._framing import HEADER
from ._limits import INTAKE_RECORD, fit
from ._text import safe_repr

__all__ = [
    "FIELDS",
    "check_control",
    "STANDARD_ATTRS",
    "TIME_FIELDS",
    "decode_control",
    "decode_record",
    "decode_records",
    "encode",
    "encode_control",
    "encode_pickle",
    "pickle_levelno",
    "is_record",
    "make_record",
    "prepare_dict",
]

#: The record fields carried as doubles right after the ``b"R"`` tag.
TIME_FIELDS: tuple[str, ...] = ("created", "msecs", "relativeCreated")
_TIMES = struct.Struct("<ddd")
_PREFIX = 1 + _TIMES.size

#: The order of the JSON array that follows the times; the extras come last.
FIELDS: tuple[str, ...] = (
    # Fixed for a call site and a thread: encoded once and cached.
    "name",
    "levelno",
    "levelname",
    "pathname",
    "filename",
    "module",
    "lineno",
    "funcName",
    "process",
    "processName",
    "thread",
    "threadName",
    # Different for every record.
    "msg",
    "exc_text",
    "stack_info",
    "taskName",
)
_NFIELDS = len(FIELDS)
_FIELD_SET = frozenset(FIELDS)

#: Attributes every ``LogRecord`` has (plus the ones formatters add); anything else in a
#: record's ``__dict__`` came from ``extra=`` or a filter and travels as an extra.
STANDARD_ATTRS: frozenset[str] = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName", "args", "exc_info"}
#: Size of a plain record's ``__dict__``; only a bigger one can carry extras.
_BASE_KEYS = tuple(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
_BASE_LEN = len(_BASE_KEYS)


def _own_len(d: dict[str, Any]) -> int:
    """``len(d)`` less what a ``Formatter`` adds (``message``, ``asctime``): derived, never
    sent, so a record another handler formatted first still takes the fast paths."""
    n = len(d)
    if n > _BASE_LEN:
        n -= ("message" in d) + ("asctime" in d)
    return n

_encode_json = json.JSONEncoder(separators=(",", ":")).encode
_decode_json = json.JSONDecoder().decode
_exc_formatter = logging.Formatter()
_fixed = operator.attrgetter(*FIELDS[:12])
_times = operator.attrgetter(*TIME_FIELDS)


def _default(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


# The C encoder behind json.dumps, built once: json.dumps builds it again on every call.
# No circular check (markers=None): a self-referencing extra raises RecursionError, which
# encode() catches like any other oddity.
_c_encoder = c_make_encoder(
    None, _default, encode_basestring_ascii, None, ":", ",", False, False, True
)


def _to_json(value: Any) -> str:
    return "".join(_c_encoder(value, 0))


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:  # bad format string or args: keep both, as text
        return (
            f"{safe_repr(record.msg)} % {safe_repr(record.args)} "
            f"(mplog: message formatting failed: {type(exc).__name__}: {exc})"
        )


def _exc_text(record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return record.exc_text
    ei = record.exc_info
    if ei and ei[0] is not None:
        try:
            return _exc_formatter.formatException(ei)
        except Exception as exc:  # an exception whose str() raises
            return f"(mplog: traceback formatting failed: {type(exc).__name__}: {exc})\n" + (
                "".join(traceback.format_exception_only(ei[0], None))
            )
    return None


def _json_safe(value: object) -> Any:
    try:
        _encode_json(value)
    except (TypeError, ValueError, RecursionError, OverflowError):
        return safe_repr(value)
    return value


def _extras(record: logging.LogRecord) -> dict[str, Any] | None:
    d = record.__dict__
    std = STANDARD_ATTRS
    keys = tuple(d)
    if keys[:_BASE_LEN] == _BASE_KEYS:
        # The usual layout: LogRecord.__init__'s attributes first, then what makeRecord
        # (extra=), filters and formatters added; only those are looked at.
        return {k: d[k] for k in keys[_BASE_LEN:] if k not in std} or None
    return {k: v for k, v in d.items() if k not in std} or None


#: What a standard attribute a filter deleted travels as (``name`` and ``levelno`` keep
#: their types: the listener refuses a record without them).
_FIXED_DEFAULTS: tuple[Any, ...] = ("", 0) + (None,) * 10


def _fixed_safe(record: logging.LogRecord) -> tuple[Any, ...]:
    try:
        return _fixed(record)
    except AttributeError:  # a filter deleted one: the record still goes
        return tuple(getattr(record, f, default)
                     for f, default in zip(FIELDS[:12], _FIXED_DEFAULTS, strict=True))


def _fields(record: logging.LogRecord, msg: str) -> tuple[Any, ...]:
    return (
        *_fixed_safe(record),
        msg,
        _exc_text(record),
        record.stack_info,
        record.__dict__.get("taskName"),
        _extras(record),
    )


def _sanitized(fields: tuple[Any, ...]) -> list[Any]:
    out = [_json_safe(v) for v in fields[:-1]]
    extras = fields[-1]
    out.append({str(k): _json_safe(v) for k, v in extras.items()} if extras else None)
    return out


#: Attributes structlog's ``wrap_for_formatter`` attaches for a ``ProcessorFormatter`` in the
#: same process; a record with them and a dict ``msg`` is sent without them (see above).
_LOCAL_ONLY: tuple[str, ...] = ("_logger", "_name")


def _exc_tuple(value: object) -> Any:
    """structlog's ``exc_info`` event key (True, an exception or a tuple) as a tuple."""
    if value is True:
        return sys.exc_info()  # the caller is still in its except block: encode is synchronous
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3:
        return value
    return None


def _dict_fields(record: logging.LogRecord, event: dict[Any, Any], msg: str) -> tuple[Any, ...]:
    """The fields of a record whose ``msg`` is the dict *event* (see the module rules)."""
    extras = _extras(record) or {}
    if "_logger" in extras and "_name" in extras:
        for key in _LOCAL_ONLY:
            del extras[key]
    exc_text = _exc_text(record)
    text = event.get("event")
    if isinstance(text, str):
        msg = text
    for k, v in event.items():
        key = k if isinstance(k, str) else safe_repr(k)
        if key == "event" and v is text and isinstance(text, str):
            continue  # it is the message
        if key == "exc_info" and v:
            ei = _exc_tuple(v)
            if exc_text is not None and ei is not None:
                continue  # logger.exception() rendered it already: exc_text has it
            if ei is not None and ei[0] is not None:
                try:
                    exc_text = _exc_formatter.formatException(ei)
                except Exception as exc:  # an exception whose str() raises
                    exc_text = f"(mplog: traceback formatting failed: {type(exc).__name__})"
                continue
        while key in STANDARD_ATTRS or key in extras:
            key += "_"
        extras[key] = v
    return (
        *_fixed_safe(record), msg, exc_text, record.stack_info, record.__dict__.get("taskName"),
        extras or None,
    )


def _float_times(record: logging.LogRecord) -> tuple[float, float, float]:
    try:
        created, msecs, relative = _times(record)
        return float(created), float(msecs), float(relative)
    except (TypeError, ValueError, AttributeError):
        return 0.0, 0.0, 0.0  # a filter broke them; the record still goes


# JSON text of the per-site-and-thread fields (no brackets, trailing comma). A process has
# few call sites and threads; cleared when it grows past _CACHE_MAX entries (a program
# that makes loggers or threads without end), so memory stays bounded.
_fixed_cache: dict[tuple[Any, ...], str] = {}
_CACHE_MAX = 4096


def encode(record: logging.LogRecord) -> bytes:
    """Return one length-prefixed intake frame for *record*. Never raises for odd values."""
    try:
        msg = record.getMessage()
    except Exception:
        msg = _message(record)
    try:
        times = _TIMES.pack(*_times(record))
    except (struct.error, TypeError, AttributeError):
        times = _TIMES.pack(*_float_times(record))
    d = record.__dict__
    fields: tuple[Any, ...] | None = None
    try:
        m = record.msg
        if m.__class__ is not str and isinstance(m, dict) and not record.args:
            fields = _dict_fields(record, m, msg)
            text = _to_json(fields)
        elif (
            (len(d) == _BASE_LEN or _own_len(d) == _BASE_LEN)  # no call for a plain record
            and record.exc_info is None
            and record.exc_text is None
            and record.stack_info is None
        ):
            # The common record: no extras, no traceback.
            key = _fixed(record)
            fixed = _fixed_cache.get(key)
            if fixed is None:
                if len(_fixed_cache) >= _CACHE_MAX:
                    _fixed_cache.clear()
                fixed = _fixed_cache[key] = _to_json(key)[1:-1]
            task = d.get("taskName")  # Python 3.12+: the asyncio task's name, or None
            task_text = "null" if task is None else encode_basestring_ascii(task)
            text = f"[{fixed},{encode_basestring_ascii(msg)},null,null,{task_text},null]"
        else:
            fields = _fields(record, msg)
            text = _to_json(fields)
    except (TypeError, ValueError, RecursionError, OverflowError, AttributeError):
        # Slow path, taken only for records carrying something JSON cannot hold.
        text = _encode_json(_sanitized(fields if fields is not None else _fields(record, msg)))
    body = b"R" + times + text.encode("ascii")
    if len(body) > INTAKE_RECORD:
        body = _cut_to_intake(record, msg, times)
    return HEADER.pack(len(body)) + body


# -- the stdlib wire's final frame, made in the worker (the listener relays it) -----------
#
# A listener whose only handler is one plain ``SocketHandler(wire="pickle")`` forwards the
# frames its workers write without decoding them (``IntakeServer``'s relay mode). The frame
# is what that listener would have built from the ``b"R"`` record: the same dict, pickled
# with protocol 1 (what the stdlib ``SocketHandler`` writes), ``levelno`` first so that a
# handler level can be checked at a fixed offset without decoding. Only data goes in:
# every value is a plain str, int, float or None (the call-site fields pass through JSON
# once, when their template is made), so the receiver's unpickler needs no class.

#: Where a relayed frame's levelno opcode is: after the 4-byte length, ``}(`` (EMPTY_DICT,
#: MARK) and the key ``X <u32 7> levelno``.
PICKLE_LEVEL_AT = 4 + 2 + 12
_PICKLE_KEY_LEVELNO = b"X\x07\x00\x00\x00levelno"
_P_STR_HEAD = struct.Struct("<cI")
_P_BININT = struct.Struct("<ci")
_P_FLOAT = struct.Struct(">cd")
_P_CONST: dict[bool | None, bytes] = {True: b"I01\n", False: b"I00\n", None: b"N"}
_P_MSG_KEY = b"X\x03\x00\x00\x00msg"
# The three times: BINFLOAT opcodes (big-endian doubles) under their keys, then SETITEMS
# and STOP.
_P_TIMES = struct.Struct(">12scd10scd20scd2s")
_K_CREATED = b"X\x07\x00\x00\x00created"
_P_TASK_KEY = b"X\x08\x00\x00\x00taskName"
_K_MSECS = b"X\x05\x00\x00\x00msecs"
_K_RELATIVE = b"X\x0f\x00\x00\x00relativeCreated"
_pickle_heads: dict[tuple[Any, ...], bytes] = {}


def _pickle_plain(d: dict[str, Any]) -> bytes:
    """Protocol-1 pickle of a data-only dict, without memo opcodes (so that ``levelno``,
    first, is at a fixed offset)."""
    import io
    import pickle

    out = io.BytesIO()
    p = pickle.Pickler(out, 1)
    p.fast = True  # no memo: no PUT opcodes between a key and its value
    p.dump(d)
    return out.getvalue()


def _pickle_head(fixed: tuple[Any, ...]) -> bytes:
    """The constant start of the frames of one call site and thread: ``}(`` and the
    items of the fixed fields (as JSON gives them back), ``levelno`` first."""
    values = _decode_json(_to_json(fixed))  # raises for what JSON cannot hold: slow path
    d: dict[str, Any] = {"levelno": values[1]}
    d.update(zip(FIELDS[:12], values, strict=True))
    d.update(exc_text=None, stack_info=None, taskName=None, args=None, exc_info=None)
    whole = _pickle_plain(d)
    if not (whole.startswith(b"}(" + _PICKLE_KEY_LEVELNO) and whole.endswith(b"u.")):
        raise ValueError("unexpected pickle layout")  # not seen: then every record is slow
    return whole[:-2]


def encode_pickle(record: logging.LogRecord) -> bytes:
    """One length-prefixed stdlib-wire frame for *record* (4-byte length, protocol-1
    pickle of the dict the listener would send), or, for a record too large for the
    intake, the ``b"R"`` frame of :func:`encode` (cut to fit). Never raises."""
    d = record.__dict__
    own = len(d)
    if own != _BASE_LEN:  # the hot path pays no call for a plain record
        own = _own_len(d)
    if (
        own >= _BASE_LEN
        and record.exc_info is None
        and record.exc_text is None
        and record.stack_info is None
        and not isinstance(record.msg, dict)
    ):
        try:
            msg = record.getMessage()
        except Exception:
            msg = _message(record)
        try:
            key = _fixed(record)
            head = _pickle_heads.get(key)
            if head is None:
                if len(_pickle_heads) >= _CACHE_MAX:
                    _pickle_heads.clear()
                head = _pickle_heads[key] = _pickle_head(key)
            # extra= fields: their items as the slow path gives them (through JSON once,
            # so the receiver gets plain data), spliced in after the fixed ones.
            extra = _pickle_extras(record) if own != _BASE_LEN else b""
            task = d.get("taskName")  # Python 3.12+: the asyncio task's name, or None
            if task is not None:  # the head says None: a later item wins (dict semantics)
                tb = task.encode("utf-8", "surrogatepass")
                extra += _P_TASK_KEY + _P_STR_HEAD.pack(b"X", len(tb)) + tb
            mb = msg.encode("utf-8", "surrogatepass")
            created, msecs, relative = _times(record)
            tail = _P_TIMES.pack(_K_CREATED, b"G", created, _K_MSECS, b"G", msecs,
                                 _K_RELATIVE, b"G", relative, b"u.")
        except (TypeError, ValueError, RecursionError, OverflowError, struct.error,
                AttributeError):  # AttributeError: a filter deleted a standard attribute
            return _encode_pickle_slow(record)
        n = len(head) + len(extra) + 13 + len(mb) + _P_TIMES.size
        if n > INTAKE_RECORD:
            return encode(record)
        return b"".join((HEADER.pack(n), head, extra, _P_MSG_KEY,
                         _P_STR_HEAD.pack(b"X", len(mb)), mb, tail))
    return _encode_pickle_slow(record)


def _pickle_items(d: dict[str, Any]) -> bytes:
    """The items of the protocol-1 pickle of the non-empty data-only dict *d*."""
    whole = _pickle_plain(d)
    if whole.startswith(b"}(") and whole.endswith(b"u."):
        return whole[2:-2]  # two items or more: EMPTY_DICT MARK items SETITEMS STOP
    if len(d) == 1 and whole.endswith(b"s."):
        return whole[1:-2]  # one: EMPTY_DICT key value SETITEM STOP
    raise ValueError("unexpected pickle layout")  # not seen: the general path then


def _pickle_extras(record: logging.LogRecord) -> bytes:
    """The pickled items (no ``}(``, no ``u.``) of *record*'s ``extra=`` fields, each value
    what JSON gives back for it. Raises what ``_to_json`` raises for a value JSON cannot
    hold (the caller then takes the slow path, which writes its ``repr()``)."""
    extras = _extras(record)
    if not extras:
        return b""
    parts = []
    for k, v in extras.items():
        # The common extras (a request id, a user id, a flag, a duration), written here: a
        # str, int, float, bool or None of exactly that type comes back from JSON as it
        # went in. A type JSON changes (a tuple, an enum) goes the general way below.
        t = type(v)
        if t is str:
            b = v.encode("utf-8", "surrogatepass")
            item = _P_STR_HEAD.pack(b"X", len(b)) + b
        elif t is int and -0x80000000 <= v < 0x80000000:
            item = _P_BININT.pack(b"J", v)
        elif t is float:
            item = _P_FLOAT.pack(b"G", v)
        elif t is bool or v is None:
            item = _P_CONST[v]
        else:
            return _pickle_items(_decode_json(_to_json(extras)))
        key = _pickle_keys.get(k)
        if key is None:
            if len(_pickle_keys) >= _CACHE_MAX:
                _pickle_keys.clear()
            kb = k.encode("utf-8", "surrogatepass")
            key = _pickle_keys[k] = _P_STR_HEAD.pack(b"X", len(kb)) + kb
        parts.append(key + item)
    return b"".join(parts)


#: The pickled keys of the extras seen (a program has few; bounded like the heads).
_pickle_keys: dict[str, bytes] = {}


def _encode_pickle_slow(record: logging.LogRecord) -> bytes:
    # Any other record: exactly the dict the listener decodes from its b"R" frame.
    frame = encode(record)
    d = decode_record(frame[4:])
    body = _pickle_plain({"levelno": d["levelno"], **d})
    if len(body) > INTAKE_RECORD:
        return frame  # cut to the intake's limit already: the listener cuts it further
    return HEADER.pack(len(body)) + body


def pickle_levelno(frame: bytes) -> int:
    """The levelno of a frame made by :func:`encode_pickle` (read at its fixed offset)."""
    op = frame[PICKLE_LEVEL_AT]
    if op == 0x4B:  # BININT1
        return frame[PICKLE_LEVEL_AT + 1]
    if op == 0x4D:  # BININT2
        return int.from_bytes(frame[PICKLE_LEVEL_AT + 1 : PICKLE_LEVEL_AT + 3], "little")
    if op == 0x4A:  # BININT
        return int.from_bytes(frame[PICKLE_LEVEL_AT + 1 : PICKLE_LEVEL_AT + 5], "little",
                              signed=True)
    return 0  # a levelno JSON made odd (a huge int): let it through, as a NOTSET level would


def _cut_to_intake(record: logging.LogRecord, msg: str, times: bytes) -> bytes:
    """The body of a record too large for the intake, cut by :func:`mplog._limits.fit`
    at this, the first hop (the worker), so no later hop ever sees it whole."""
    fields = _sanitized(_fields(record, msg))
    flat = dict(zip(FIELDS, fields, strict=False))
    flat.update(fields[_NFIELDS] or {})

    def body_of(d: dict[str, Any]) -> bytes:
        extras = {k: v for k, v in d.items() if k not in _FIELD_SET}
        text = _encode_json([*(d[f] for f in FIELDS), extras or None])
        return b"R" + times + text.encode("ascii")

    body = fit(flat, body_of, INTAKE_RECORD, _FIELD_SET)
    if body is None:  # only the fixed fields left, and still too large: a pathname of MiBs
        flat = {f: flat[f] if f in ("levelno", "lineno", "process", "thread") else
                (str(flat[f])[:1024] if flat[f] is not None else None) for f in FIELDS}
        flat["mplog_extras_cut"] = -1
        body = body_of(flat)
    return body


def encode_control(message: dict[str, Any]) -> bytes:
    """Return one length-prefixed intake frame carrying a control message (a JSON object)."""
    body = _encode_json(message).encode("ascii")
    return HEADER.pack(len(body)) + body


def is_record(body: bytes) -> bool:
    """True if *body* is a record (else it should be a control message)."""
    return body[:1] == b"R"


def _to_dict(times: tuple[float, float, float], fields: Any) -> dict[str, Any]:
    if (
        not isinstance(fields, list)
        or len(fields) != _NFIELDS + 1
        or not isinstance(fields[0], str)
        or not isinstance(fields[1], int)
        or not isinstance(fields[12], str)
    ):
        raise RemoteProtocolError("intake record does not have the expected fields")
    extras = fields[_NFIELDS]
    d = dict(zip(FIELDS, fields, strict=False))  # the extras follow the fields
    if extras is not None:
        if not isinstance(extras, dict):
            raise RemoteProtocolError("intake record extras are not an object")
        for k, v in extras.items():
            d.setdefault(k, v)  # an extra never overrides a standard attribute
    d["created"], d["msecs"], d["relativeCreated"] = times
    d["args"] = None
    d["exc_info"] = None
    return d


def decode_record(body: bytes) -> dict[str, Any]:
    """Decode one record body into a ``LogRecord.__dict__``-shaped dict.

    ``msg`` holds the merged message and ``args``/``exc_info`` are None, as in the dict the
    stdlib ``SocketHandler`` pickles (no ``message`` key: :func:`make_record` adds it).

    Raises :class:`ProtocolError` for anything that is not a well-formed record.
    """
    if body[:1] != b"R" or len(body) < _PREFIX + 2:
        raise RemoteProtocolError("intake frame is not a record")
    try:
        fields = _decode_json(body[_PREFIX:].decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"intake record is not valid JSON: {exc}") from None
    return _to_dict(_TIMES.unpack_from(body, 1), fields)


def decode_records(bodies: list[bytes]) -> tuple[list[dict[str, Any]], ProtocolError | None]:
    """Decode many record bodies with one JSON parse.

    Returns the records decoded in order and, if one was malformed, the error for it (the
    records after it are not decoded: the connection that sent it is to be closed).
    """
    try:
        for body in bodies:
            if body[:1] != b"R":
                raise ValueError("not a record")
        batch = json.loads(b"[" + b",".join([b[_PREFIX:] for b in bodies]) + b"]")
        unpack = _TIMES.unpack_from
        return [_to_dict(unpack(b, 1), f) for b, f in zip(bodies, batch, strict=True)], None
    except (ValueError, TypeError, RecursionError, ProtocolError, struct.error):
        out = []
        for body in bodies:
            try:
                out.append(decode_record(body))
            except (ProtocolError, struct.error) as exc:
                err = exc if isinstance(exc, ProtocolError) else RemoteProtocolError(str(exc))
                return out, err
        return out, RemoteProtocolError("batch decoding failed")  # pragma: no cover - defensive


def decode_control(body: bytes) -> dict[str, Any]:
    """Decode a control body (a JSON object with a string ``"op"``)."""
    try:
        value = _decode_json(body.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"intake control frame is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("op"), str):
        raise RemoteProtocolError("intake control frame is not an object with an 'op'")
    return value


#: Longest timeout a control request may ask for (an hour): anything longer is a typo or
#: an attack that would pin the listener's flush bookkeeping.
MAX_CONTROL_TIMEOUT = 3600.0
#: The control operations and, for each, its fields and their checks. A control frame is
#: validated like a data frame before anything acts on it.
_CONTROL_FIELDS: dict[str, dict[str, str]] = {
    "stats": {},
    "top": {},
    "flush": {"timeout": "timeout"},
    "stop": {"timeout": "timeout"},
    "lost": {"count": "count", "first": "time", "last": "time", "pid": "count"},
    "hello": {},  # a worker's first frame: the listener greets it (intake format)
}


def _check_field(op: str, key: str, kind: str, value: object) -> None:
    if isinstance(value, bool):
        ok = False
    elif kind == "count":
        ok = isinstance(value, int) and 0 <= value < 1 << 63
    elif kind == "timeout":
        ok = isinstance(value, int | float) and 0 <= value <= MAX_CONTROL_TIMEOUT
    else:  # a wall-clock time: finite, between 1970 and 10000
        ok = isinstance(value, int | float) and 0 <= value < 253402300800
    if not ok:
        raise RemoteProtocolError(f"control {op!r}: bad {key!r}: {safe_repr(value)[:80]}")


def check_control(message: dict[str, Any]) -> None:
    """Raise :class:`RemoteProtocolError` unless *message* is a well-formed control
    request: a known ``op``, the fields it needs (``lost``: all of them; ``flush`` and
    ``stop``: an optional ``timeout``), each of the right type and range."""
    op = message.get("op")
    fields = _CONTROL_FIELDS.get(op) if isinstance(op, str) else None
    if fields is None:
        raise RemoteProtocolError(f"unknown control op {safe_repr(op)[:40]}")
    for key, kind in fields.items():
        if key in message:
            _check_field(op, key, kind, message[key])  # type: ignore[arg-type]
        elif op == "lost":
            raise RemoteProtocolError(f"control {op!r} without {key!r}")


def prepare_dict(record: logging.LogRecord) -> dict[str, Any]:
    """The ``__dict__`` of the record the listener will rebuild from ``encode(record)``."""
    d = decode_record(encode(record)[4:])
    d["message"] = d["msg"]
    return d


def make_record(d: dict[str, Any]) -> logging.LogRecord:
    """Build a ``LogRecord`` from *d* without running ``LogRecord.__init__``.

    ``logging.makeLogRecord`` runs ``__init__`` (clock, thread and process lookups) only to
    overwrite every field; the listener makes one record per delivered line, so skip it.
    """
    rv = logging.LogRecord.__new__(logging.LogRecord)
    rv.__dict__.update(d)
    rv.message = d["msg"]
    return rv
