"""The limits table (mplog._limits) is consistent, and fit() cuts records as documented."""

from __future__ import annotations

import json
import logging

from mplog import _limits as L
from mplog._framing import MAX_FRAME as INTAKE_SPLITTER
from mplog._record import STANDARD_ATTRS, decode_record, encode
from mplog._spoolfmt import MAX_RECORD
from mplog._wires.mplog import MAX_FRAME as MPLOG_FRAME
from mplog._wires.relp import RelpWire
from mplog._wires.syslog import SyslogWire


def test_the_limits_are_ordered_so_no_hop_refuses_what_the_one_before_sent() -> None:
    # What a worker writes, the listener reads.
    assert L.INTAKE_RECORD + 4 <= L.INTAKE_FRAME == INTAKE_SPLITTER
    # Each wire's largest frame fits what mplog serve takes.
    assert L.MPLOG_PAYLOAD + 1 + 32 <= MPLOG_FRAME <= L.COLLECTOR_FRAME
    assert L.PICKLE_FRAME <= L.COLLECTOR_FRAME
    # Every buffered payload fits one spool record.
    assert L.SPOOL_RECORD == MAX_RECORD
    for payload in (L.MPLOG_PAYLOAD, L.PICKLE_FRAME + 4, L.JSONL_LINE, L.RELP_DATA):
        assert payload <= L.SPOOL_RECORD
    # RELP and syslog messages are cut by their wire before the buffer sees them.
    assert RelpWire().max_payload <= L.RELP_DATA
    assert SyslogWire().max_payload <= L.SPOOL_RECORD
    # The intake is below the wires by a margin, so most records fit every wire whole.
    assert L.INTAKE_RECORD < L.WIRE_FRAME


def _enc(d: dict) -> bytes:
    return json.dumps(d).encode()


def test_fit_leaves_a_small_record_alone() -> None:
    d = {"msg": "hello", "name": "x"}
    assert L.fit(d, _enc, 1000) == _enc(d)


def test_fit_cuts_the_middle_of_the_largest_text_with_a_marker() -> None:
    d = {"msg": "A" * 1000 + "B" * 50_000 + "Z" * 1000, "exc_text": "tb" * 10, "name": "x"}
    out = L.fit(d, _enc, 20_000)
    assert out is not None and len(out) <= 20_000
    back = json.loads(out)
    assert back["msg"].startswith("A" * 1000) and back["msg"].endswith("Z" * 1000)
    assert "characters cut]" in back["msg"] and back["exc_text"] == d["exc_text"]
    assert len(d["msg"]) == 52_000  # the caller's record is not changed


def test_fit_removes_extras_before_cutting_below_the_floor() -> None:
    d = {"msg": "m" * 5000, "name": "x", "big": ["y" * 100] * 2000}
    out = L.fit(d, _enc, 9000, frozenset({"msg", "name"}))
    back = json.loads(out or b"{}")
    assert "big" not in back and back[L.EXTRAS_CUT_KEY] == 1
    assert len(back["msg"]) >= 4096


def test_fit_gives_up_when_nothing_can_be_cut() -> None:
    assert L.fit({"name": "n" * 5000}, _enc, 100) is None


def test_a_worker_cuts_a_2_mib_record_to_the_intake_limit() -> None:
    rec = logging.LogRecord("app", logging.INFO, "/p.py", 1, "start-" + "x" * (2 << 20) + "-end", None, None)
    rec.order_id = 17
    frame = encode(rec)
    assert len(frame) - 4 <= L.INTAKE_RECORD
    d = decode_record(frame[4:])
    assert d["msg"].startswith("start-") and d["msg"].endswith("-end")
    assert "characters cut]" in d["msg"] and d["order_id"] == 17
    assert set(d) - STANDARD_ATTRS == {"order_id"}
