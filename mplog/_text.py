"""Sans-IO text helpers every wire, the collector and the diagnostics share.

Rules this module keeps:

- Nothing here raises for any input: a value that cannot be shown is shown as a
  placeholder naming its type.
- Text that leaves mplog is valid Unicode (:func:`valid_unicode`) and, where one record
  must stay one line, free of control characters (:func:`one_line`).
"""

from __future__ import annotations

import datetime
import math
import re

__all__ = ["Timestamps", "cut_middle", "iso_local", "one_line", "safe_repr", "valid_unicode"]


def safe_repr(value: object) -> str:
    """``repr(value)``, or a placeholder naming the type when ``repr`` itself fails."""
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not cost the record
        return f"<unrepresentable {type(value).__qualname__}: {type(exc).__name__}>"


def valid_unicode(text: str) -> str:
    """*text* made valid Unicode: a pair of surrogate code points becomes the character it
    encodes (as a JSON parser would read it), a lone surrogate its ``\\uXXXX`` text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return joined.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# C0 controls, DEL and C1 controls (ANSI escapes start with ESC or CSI), and the Unicode
# line and paragraph separators that some viewers treat as line breaks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(match: re.Match[str]) -> str:
    c = match.group()
    named = _NAMED.get(c)
    if named is not None:
        return named
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def one_line(value: object, limit: int | None = None) -> str:
    """*value* as text on one line: control characters (LF, CR, ESC, ...) written as
    backslash escapes, so that nobody can forge a line or a terminal sequence; with
    *limit*, cut to that many characters with a marker saying how many were cut."""
    text = valid_unicode(value if isinstance(value, str) else safe_repr(value))
    if _CONTROL.search(text):
        text = _CONTROL.sub(_escape_control, text.replace("\\", "\\\\"))
    if limit is not None and len(text) > limit:
        cut = len(text) - limit
        text = f"{text[:limit]}... [{cut} characters cut]"
    return text


def cut_middle(body: bytes, budget: int) -> bytes:
    """*body* (UTF-8) in at most *budget* octets: its middle replaced by a marker."""
    # Reserve the marker with the most digits it can need, then keep half of the rest
    # from each end, moved to character boundaries (never inside a UTF-8 sequence).
    reserve = len(f" [mplog: {len(body)} bytes cut] ")
    keep = max(0, budget - reserve)
    end = keep // 2
    while end > 0 and body[end] & 0xC0 == 0x80:
        end -= 1
    start = len(body) - (keep - keep // 2)
    while start < len(body) and body[start] & 0xC0 == 0x80:
        start += 1
    marker = f" [mplog: {start - end} bytes cut] ".encode("ascii")
    return body[:end] + marker + body[start:]


def iso_local(t: float) -> str:
    """Wall-clock *t* as local ``YYYY-MM-DDTHH:MM:SS.mmm`` (``-`` if not a time)."""
    try:
        dt = datetime.datetime.fromtimestamp(t)
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond // 1000:03d}"


class Timestamps:
    """RFC 3339 text with microseconds and offset for ``created`` values (sans-IO: the
    zone rules come from the ``datetime`` module).

    ``tz=None`` is the machine's local zone, with the offset in force at each instant
    (daylight saving time included); an offset with seconds (old local mean times) is
    not RFC 3339, so such an instant is written in UTC. Microseconds are rounded as
    ``datetime.fromtimestamp`` rounds them. A value that is not a representable time
    gives None. The date, time and offset are computed once per second.
    """

    def __init__(self, tz: datetime.tzinfo | None = None) -> None:
        self.tz = tz
        self._seconds: dict[int, tuple[str, str]] = {}

    def __call__(self, created: object) -> str | None:
        try:
            frac, whole = math.modf(created)  # type: ignore[arg-type]
            micros = round(frac * 1e6)
            if micros >= 1_000_000:
                micros -= 1_000_000
                whole += 1.0
            elif micros < 0:
                micros += 1_000_000
                whole -= 1.0
            second = int(whole)
            parts = self._seconds.get(second)
            if parts is None:
                aware = datetime.datetime.fromtimestamp(second, datetime.UTC).astimezone(self.tz)
                text = aware.isoformat()
                if len(text) != 25:  # an offset with seconds
                    text = datetime.datetime.fromtimestamp(second, datetime.UTC).isoformat()
                if len(self._seconds) >= 64:
                    self._seconds.clear()
                parts = self._seconds[second] = (text[:19], text[19:])
        except (TypeError, ValueError, OverflowError, OSError):
            return None
        return f"{parts[0]}.{micros:06d}{parts[1]}"
