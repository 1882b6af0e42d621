"""The worker's stdlib-wire encoder (``encode_pickle``): its fast paths give the receiver
exactly what its general path gives, for every record shape they take.

The general path (``_encode_pickle_slow``) is the definition: the ``b"R"`` record, decoded
as the listener decodes it, pickled. The fast paths splice cached and hand-made pickle
bytes; these tests decode both with mplog's data-only unpickler and compare."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mplog import _record
from mplog._record import decode_record, encode, encode_pickle
from mplog._unpickle import loads


class _Color(enum.IntEnum):
    RED = 1


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def _record_with(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("unit.pickle")
    return logger.makeRecord(logger.name, logging.INFO, "/app/x.py", 7, "req %d in %.3f ms",
                             (3, 1.5), None, "handler", extra or None)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _decoded(frame: bytes) -> dict[str, Any]:
    assert _record.HEADER.unpack_from(frame)[0] == len(frame) - 4
    value = loads(frame[4:])
    assert isinstance(value, dict)
    return value


def _assert_fast_matches_slow(rec: logging.LogRecord) -> dict[str, Any]:
    fast, slow = _decoded(encode_pickle(rec)), _decoded(_record._encode_pickle_slow(rec))
    assert _same(fast, slow), {k: (fast.get(k), slow.get(k)) for k in fast.keys() | slow.keys()
                               if not _same(fast.get(k), slow.get(k))}
    return fast


EXTRAS: list[dict[str, object]] = [
    {"request_id": "4f1c2a", "user": 1234, "ok": True},
    {"flag": False, "none": None, "zero": 0, "neg": -5, "big": 2**40, "huge": -(2**70)},
    {"edge_lo": -0x80000000, "edge_hi": 0x7FFFFFFF, "past_hi": 0x80000000},
    {"f": 0.1, "nan": float("nan"), "inf": float("-inf"), "negzero": -0.0},
    {"text": "héllo \udcff wörld ✓ 𝄞", "clé": "v", "empty": ""},
    {"tuple": (1, "a"), "list": [1, [2]], "nested": {"a": {"b": None}}},
    {"enum": _Color.RED},  # JSON makes it 1; the pickle must not name the class
    {"opaque": _Opaque(), "set": {1}},  # not JSON: repr()
]


@pytest.mark.parametrize("extra", EXTRAS, ids=",".join)
def test_records_with_extras_give_what_the_general_path_gives(extra: dict[str, object]) -> None:
    got = _assert_fast_matches_slow(_record_with(**extra))
    assert set(extra) <= set(got)


def test_a_record_another_handler_formatted_first_gives_the_same_frame() -> None:
    # A console handler before mplog's on the root logger: Formatter.format() has added
    # "message" and "asctime" to the record. Neither is sent (the receiver formats).
    for extra in ({}, {"request_id": "4f1c2a"}):
        rec, formatted = _record_with(**extra), _record_with(**extra)
        formatted.__dict__.update(created=rec.created, msecs=rec.msecs,
                                  relativeCreated=rec.relativeCreated)
        logging.Formatter("%(asctime)s %(message)s").format(formatted)
        assert "message" in formatted.__dict__ and "asctime" in formatted.__dict__
        assert encode_pickle(formatted) == encode_pickle(rec)
        assert encode(formatted) == encode(rec)
        got = _assert_fast_matches_slow(formatted)
        assert "message" not in got and "asctime" not in got


def test_the_fast_paths_are_taken() -> None:
    # What the fast paths exist for: a formatted record, or one with plain extras, is not
    # encoded the general way (which encodes, decodes and pickles the whole record).
    calls = []
    slow = _record._encode_pickle_slow

    def counting(rec: logging.LogRecord) -> bytes:
        calls.append(rec)
        return slow(rec)

    _record._encode_pickle_slow = counting  # type: ignore[assignment]
    try:
        formatted = _record_with()
        logging.Formatter("%(asctime)s %(message)s").format(formatted)
        encode_pickle(formatted)
        encode_pickle(_record_with(request_id="r", n=1, d=0.5, ok=False, x=None))
        assert calls == []
        encode_pickle(_record_with(opaque=_Opaque()))  # not JSON: the general path
        assert len(calls) == 1
    finally:
        _record._encode_pickle_slow = slow  # type: ignore[assignment]


@pytest.mark.parametrize("extra", [{}, {"a": 1}, {"a": 1, "b": 2}])
@pytest.mark.parametrize("gone", ["funcName", "name", "levelno", "thread"])
def test_a_record_a_filter_took_a_standard_attribute_from_still_goes(
        gone: str, extra: dict[str, object]) -> None:
    rec = _record_with(**extra)
    del rec.__dict__[gone]
    want = {"name": "", "levelno": 0}.get(gone)
    for frame in (encode_pickle(rec), encode(rec)):  # neither raises
        got = _decoded(frame) if frame[4:5] == b"}" else decode_record(frame[4:])
        assert got[gone] == want and got["msg"] == "req 3 in 1.500 ms"
        assert {k: got[k] for k in extra} == extra


_plain = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())),
)


@given(st.dictionaries(st.text(min_size=1).filter(lambda k: k not in _record.STANDARD_ATTRS),
                       _plain, max_size=6))
def test_any_plain_extras_give_what_the_general_path_gives(extra: dict[str, object]) -> None:
    rec = _record_with()
    rec.__dict__.update(extra)
    _assert_fast_matches_slow(rec)


@pytest.mark.parametrize("extra", [{}, {"request_id": "r1"}])
def test_the_asyncio_task_name_travels(extra: dict[str, object]) -> None:
    # Python 3.12+ records the task a record was logged in (taskName); the fast paths
    # once sent None for it. Set by hand here, so that every Python runs it.
    rec = _record_with(**extra)
    rec.taskName = "Task-7 ✓"
    for frame in (encode_pickle(rec), encode(rec)):
        got = _decoded(frame) if frame[4:5] == b"}" else decode_record(frame[4:])
        assert got["taskName"] == "Task-7 ✓"
    _assert_fast_matches_slow(rec)
    rec.taskName = 5  # not a str: the general path, which keeps it as data
    assert _decoded(encode_pickle(rec))["taskName"] == 5
    assert decode_record(encode(rec)[4:])["taskName"] == 5


@pytest.mark.skipif(sys.version_info < (3, 12), reason="LogRecord.taskName is 3.12+")
def test_a_record_logged_in_an_asyncio_task_carries_its_name() -> None:
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    logger = logging.getLogger("unit.pickle.task")
    logger.addHandler(Keep())
    logger.propagate = False

    async def main() -> None:
        logger.warning("inside")

    asyncio.run(main())
    (rec,) = got
    assert rec.taskName and rec.taskName.startswith("Task-")
    assert _decoded(encode_pickle(rec))["taskName"] == rec.taskName
    assert decode_record(encode(rec)[4:])["taskName"] == rec.taskName
