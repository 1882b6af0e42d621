"""``wire="jsonl"``: one JSON object per line (sans-IO).

The format the TCP inputs of Logstash (``codec => json_lines``), Vector (``socket`` source,
newline framing, ``decoding.codec = "json"``) and Fluent Bit (``tcp``, ``Format json``)
read: a JSON object, then LF. Rules this module keeps:

- Field names are stable (documented in ``docs/destinations.md``); every field is present
  in every line, null when the record has no value for it:
  ``timestamp`` (RFC 3339, microseconds, the local UTC offset at that instant; ``tz=``
  fixes another zone), ``level`` (``"INFO"``), ``levelno`` (20), ``logger``, ``message``
  (the merged message), ``hostname`` (``hostname=``, default the machine's node name),
  ``process``, ``process_name``, ``thread``, ``thread_name``, ``pathname``, ``lineno``,
  ``function``, ``exception`` (the formatted traceback), ``stack`` (``stack_info``) and
  ``extra`` (an object holding every ``extra=`` field under its own name).
- Exactly one line per record, whatever it holds: the output is pure ASCII (non-ASCII is
  written as ``\\uXXXX`` escapes, so LF, CR, U+2028 and NEL can only appear escaped), and
  it is strict JSON that every parser accepts: a lone surrogate (undecodable bytes
  smuggled into a ``str``) is written as the text ``\\udcXX`` rather than as an escape
  that strict parsers (Rust's serde_json, behind Vector) reject, and a pair of surrogate
  code points as the one character it encodes; NaN and infinities
  become the strings ``"nan"``/``"inf"``/``"-inf"``; keys that are not strings become
  text; a value JSON cannot hold becomes its ``repr()``; a circular value becomes
  ``"<circular>"``.
- Nothing here raises for any record dict.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
from collections.abc import Callable, Mapping
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring_ascii,
)
from typing import Any

from .._errors import ConfigError
from .._limits import JSONL_LINE
from .._record import STANDARD_ATTRS
from .._text import Timestamps, safe_repr, valid_unicode

__all__ = ["FIELDS", "JsonlWire"]

#: The keys of every line, in order: (output name, record attribute or None).
FIELDS: tuple[tuple[str, str | None], ...] = (
    ("timestamp", None),
    ("level", "levelname"),
    ("levelno", "levelno"),
    ("logger", "name"),
    ("message", "msg"),
    ("hostname", None),
    ("process", "process"),
    ("process_name", "processName"),
    ("thread", "thread"),
    ("thread_name", "threadName"),
    ("pathname", "pathname"),
    ("lineno", "lineno"),
    ("function", "funcName"),
    ("exception", "exc_text"),
    ("stack", "stack_info"),
    ("extra", None),
)
_SECOND = ("hostname", "process", "process_name", "thread", "thread_name", "pathname",
           "lineno", "function")
#: Nesting kept by the slow path; deeper values become their repr().
_MAX_DEPTH = 100


# The C encoder behind json.dumps, built once (json.dumps builds it on every call). No
# circular check (markers=None): a circular value raises RecursionError, and encode()
# takes the slow path. allow_nan=False: NaN is not JSON.
_fast = c_make_encoder(
    None, safe_repr, encode_basestring_ascii, None, ":", ",", False, False, False
)
_plain = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_CACHE_MAX = 4096


def _json(value: object) -> str:
    if type(value) is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    return "".join(_fast(value, 0))


def _clean(value: object, depth: int = 0, seen: frozenset[int] = frozenset()) -> Any:
    """*value* made of JSON types only, with the substitutions of the module docstring."""
    if isinstance(value, str):
        return valid_unicode(value)
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                str(value)
            except ValueError:  # more digits than int->str allows
                return safe_repr(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict | list | tuple):
        if id(value) in seen:
            return "<circular>"
        if depth >= _MAX_DEPTH:
            return valid_unicode(safe_repr(value))
        inner = seen | {id(value)}
        if isinstance(value, dict):
            return {
                valid_unicode(k if isinstance(k, str) else safe_repr(k)):
                    _clean(v, depth + 1, inner)
                for k, v in value.items()
            }
        return [_clean(v, depth + 1, inner) for v in value]
    return valid_unicode(safe_repr(value))


class JsonlWire:
    """One JSON object per line (see the module docstring).

    Options (keyword-only):
        hostname: the ``hostname`` field (default: *gethostname* called once, on first use).
        tz: a ``datetime.tzinfo`` for ``timestamp`` (default None: the local time zone).
        gethostname: where the default hostname comes from (default ``platform.node``).

    Raises :class:`mplog.ConfigError` for a bad option.
    """

    def __init__(
        self,
        *,
        hostname: str | None = None,
        tz: datetime.tzinfo | None = None,
        gethostname: Callable[[], str] = platform.node,
    ) -> None:
        if hostname is not None and not isinstance(hostname, str):
            raise ConfigError(f"hostname must be a str or None, got {hostname!r}")
        if tz is not None and not isinstance(tz, datetime.tzinfo):
            raise ConfigError(f"tz must be a datetime.tzinfo or None, got {tz!r}")
        if not callable(gethostname):
            raise ConfigError("gethostname must be callable")
        self.tz = tz
        #: One line at most this long (``mplog._limits.JSONL_LINE``); longer records are cut.
        self.max_payload = JSONL_LINE
        self._hostname = hostname
        self._gethostname = gethostname
        self._timestamp = Timestamps(tz)
        self._cache: dict[tuple[object, ...], tuple[str, str]] = {}

    @property
    def hostname(self) -> str | None:
        """The ``hostname`` field as sent (the default is looked up on first use)."""
        if self._hostname is None:
            try:
                self._hostname = str(self._gethostname())
            except Exception:  # no name to be had: null, not a lost record
                return None
        return self._hostname

    @staticmethod
    def _extra(record: Mapping[str, Any], keys: Any) -> dict[Any, Any]:
        try:
            names = sorted(keys)
        except TypeError:  # keys of mixed types (not from the pipeline)
            names = sorted(keys, key=safe_repr)
        return {k: record[k] for k in names}

    def to_object(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON object for *record*, before encoding (values as the record has them)."""
        get = record.get
        keys = record.keys() - STANDARD_ATTRS
        return {
            "timestamp": self._timestamp(get("created")),
            "level": get("levelname"),
            "levelno": get("levelno"),
            "logger": get("name"),
            "message": get("msg"),
            "hostname": self.hostname,
            "process": get("process"),
            "process_name": get("processName"),
            "thread": get("thread"),
            "thread_name": get("threadName"),
            "pathname": get("pathname"),
            "lineno": get("lineno"),
            "function": get("funcName"),
            "exception": get("exc_text"),
            "stack": get("stack_info"),
            "extra": self._extra(record, keys) if keys else {},
        }

    def _fixed(self, record: Mapping[str, Any]) -> tuple[str, str]:
        """The JSON text of the fields that repeat for a call site and thread (cached):
        from ``level`` to ``logger``, and from ``hostname`` to ``function``."""
        get = record.get
        key = (
            get("levelname"), get("levelno"), get("name"), get("process"),
            get("processName"), get("thread"), get("threadName"), get("pathname"),
            get("lineno"), get("funcName"),
        )
        try:
            parts = self._cache.get(key)
        except TypeError:  # an unhashable value: no caching
            parts, key = None, None  # type: ignore[assignment]
        if parts is None:
            obj = self.to_object(record)
            first = {k: obj[k] for k in ("level", "levelno", "logger")}
            second = {k: obj[k] for k in _SECOND}
            parts = (_json(first)[1:-1], _json(second)[1:-1])
            if key is not None:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[key] = parts
        return parts

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """One line for *record*: a JSON object in ASCII, then LF. Never raises."""
        try:
            first, second = self._fixed(record)
            get = record.get
            keys = record.keys() - STANDARD_ATTRS
            stamp = self._timestamp(get("created"))
            text = (
                f'{{"timestamp":{_json(stamp)},{first},"message":{_json(get("msg"))},'
                f'{second},"exception":{_json(get("exc_text"))},'
                f'"stack":{_json(get("stack_info"))},'
                f'"extra":{_json(self._extra(record, keys)) if keys else "{}"}}}'
            )
        except (ValueError, TypeError, RecursionError):  # NaN, circular, odd keys
            text = _plain(_clean(self.to_object(record)))
        else:
            if "\\ud" in text:  # maybe a lone surrogate (or just a pair): clean, to be sure
                text = _plain(_clean(self.to_object(record)))
        return text.encode("ascii") + b"\n"
