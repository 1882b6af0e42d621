"""Sans-IO: every size limit of the pipeline, in one table, and how a record is made to fit.

A record crosses up to four hops, each with a limit; they are derived from each other here
so that they cannot disagree (a disagreement is a poison pill: a record one hop accepts and
the next refuses for ever, blocking every record behind it). The rule: what a hop accepts
either fits every later hop, or is dealt with at the first hop that cannot carry it (cut,
with a marker saying by how much, or dropped and counted with the reason), and the records
behind it go on.

::

    worker --intake--> listener --wire--> [spool] --wire--> receiver (mplog serve, ...)
           INTAKE_FRAME         WIRE_FRAME  SPOOL_RECORD   COLLECTOR_FRAME

``tests/unit/test_limits.py`` asserts the ordering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "COLLECTOR_FRAME",
    "CUT_MARKER",
    "INTAKE_FRAME",
    "INTAKE_RECORD",
    "JSONL_LINE",
    "MPLOG_PAYLOAD",
    "PICKLE_FRAME",
    "RELP_DATA",
    "SPOOL_RECORD",
    "WIRE_FRAME",
    "fit",
]

#: The largest frame on any network wire mplog speaks and the largest that ``mplog serve``
#: accepts by default: 1 MiB. A log record with a long traceback is a few KiB; a record
#: near this size is a bug or an attack, and the bound is what keeps a collector's memory
#: per connection small (h11 uses 16 KiB for headers for the same reason).
WIRE_FRAME = 1024 * 1024
#: What ``mplog serve`` accepts per frame (``--max-frame-bytes`` default): every frame mplog
#: itself sends must fit, so it is the same number.
COLLECTOR_FRAME = WIRE_FRAME
#: The mplog wire: a frame is length(4) || type(1) || seq(8) || JSON || HMAC(32); the
#: limit covers type..HMAC, so the buffered payload (seq || JSON) gets the rest.
MPLOG_PAYLOAD = WIRE_FRAME - 1 - 32
#: The stdlib wire (``wire="pickle"``): 4-byte length + pickle; the collector's limit
#: applies to the pickle (existing stdlib receivers have none).
PICKLE_FRAME = WIRE_FRAME
#: ``wire="jsonl"``: one line. Logstash's ``json_lines`` has no limit; Vector's ``socket``
#: source defaults to 102,400 bytes and Fluent Bit's ``tcp`` input to a 32 KiB chunk that
#: grows, so a receiver may need its own limit raised for records this large.
JSONL_LINE = WIRE_FRAME
#: RELP: librelp's default ``maxDataSize`` (128 KiB) bounds one command's DATA.
RELP_DATA = 128 * 1024
#: A spool record holds one buffered wire payload, so it takes the largest of them: a
#: stdlib-wire frame is buffered with its 4-byte length prefix.
SPOOL_RECORD = WIRE_FRAME + 4
#: What a worker writes for one record (the intake frame's body). A record whose encoding
#: is larger is cut at the worker, the first hop, to this size. It is below WIRE_FRAME by
#: a margin for what the wires add (keys, framing, MAC), so a record that fits the intake
#: almost always fits every wire whole; the wires still cut (``fit``) rather than trust it,
#: because JSON escaping and pickle do not grow a record by the same amount.
INTAKE_RECORD = WIRE_FRAME - 64 * 1024
#: What the listener accepts per intake frame: a record body plus its length prefix. A
#: bigger frame can only come from something that is not mplog's QueueHandler.
INTAKE_FRAME = INTAKE_RECORD + 4

#: What replaces the middle of a field that was cut.
CUT_MARKER = " [mplog: {} characters cut] "
#: The text fields that may be cut, in the order they are tried (the largest first among
#: them is cut first).
_CUTTABLE = ("msg", "exc_text", "stack_info")
#: Extras are removed whole (their values are structure, not text) when cutting the text
#: fields is not enough; this key says how many.
EXTRAS_CUT_KEY = "mplog_extras_cut"


#: Characters of each text field kept while extras remain to be removed: the beginning
#: and the end of a message (its first and last lines of a traceback) matter most.
TEXT_FLOOR = 4096


def _cut(text: str, drop: int, floor: int) -> str:
    keep = max(floor, len(text) - drop - len(CUT_MARKER) - 10)
    if keep >= len(text):
        return text
    head = keep - keep // 2
    tail = keep // 2
    cut = len(text) - head - tail
    return text[:head] + CUT_MARKER.format(cut) + (text[len(text) - tail :] if tail else "")


def _cut_texts(
    d: dict[str, Any], data: bytes, encode: Callable[[dict[str, Any]], bytes], limit: int,
    floor: int,
) -> bytes:
    for _ in range(4 * len(_CUTTABLE)):
        if len(data) <= limit:
            return data
        texts = [k for k in _CUTTABLE if isinstance(d.get(k), str) and len(d[k]) > floor]
        if not texts:
            return data
        key = max(texts, key=lambda k: len(d[k]))
        text = d[key]
        # Bytes per character of this field, so a field of escaped characters (JSON writes
        # "\u00e9" for one character) is cut by what it costs, not by its length.
        ratio = max(1.0, len(text.encode("utf-8", "surrogatepass")) / len(text))
        d[key] = _cut(text, int((len(data) - limit) / ratio) + 1, floor)
        if key == "msg" and "message" in d:
            d["message"] = d["msg"]
        data = encode(d)
    return data


def fit(
    record: dict[str, Any],
    encode: Callable[[dict[str, Any]], bytes],
    limit: int,
    standard: frozenset[str] | None = None,
) -> bytes | None:
    """``encode(record)`` made to fit in *limit* bytes, or None if it cannot be.

    First the text fields (``msg``, ``exc_text``, ``stack_info``) are cut in the middle,
    the largest first, down to :data:`TEXT_FLOOR` characters each, with a marker saying
    how many characters were cut; then the extras (keys not in *standard*) are removed,
    their number kept under ``mplog_extras_cut``; then the text fields are cut further.
    *record* is not changed.
    """
    data = encode(record)
    if len(data) <= limit:
        return data
    d = dict(record)
    data = _cut_texts(d, data, encode, limit, TEXT_FLOOR)
    if len(data) > limit and standard is not None:
        extras = [k for k in d if k not in standard]
        if extras:
            for k in extras:
                del d[k]
            d[EXTRAS_CUT_KEY] = len(extras)
            data = encode(d)
    data = _cut_texts(d, data, encode, limit, 0)
    return data if len(data) <= limit else None
