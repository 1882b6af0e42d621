from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mplog import ProtocolError
from mplog._errors import LocalProtocolError
from mplog._wires.relp import RelpSession

OPEN_RSP = b"1 rsp 93 200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n"


def _opened() -> RelpSession:
    s = RelpSession()
    assert s.open_frame() == b"1 open 54 relp_version=0\nrelp_software=mplog,1,-\ncommands=syslog\n"
    assert s.receive(OPEN_RSP) == 0
    assert s.ready
    return s


def test_open_frame_datalen_counts_data_only() -> None:
    frame = RelpSession().open_frame()
    head, data = frame.split(b" ", 3)[:3], frame.split(b" ", 3)[3]
    assert int(head[2]) == len(data) - 1 and data.endswith(b"\n")


def test_exact_session_bytes_as_seen_with_rsyslog() -> None:
    s = _opened()
    assert s.syslog_frame(b"<134>1 - h a 1 ID - one") == b"2 syslog 23 <134>1 - h a 1 ID - one\n"
    assert s.syslog_frame(b"a\nb") == b"3 syslog 3 a\nb\n"
    assert s.in_flight == 2
    # Responses may arrive split anywhere.
    data = b"2 rsp 6 200 OK\n3 rsp 6 200 OK\n"
    got = sum(s.receive(data[i : i + 1]) for i in range(len(data)))
    assert got == 2 and s.in_flight == 0
    assert s.close_frame() == b"4 close 0\n"
    assert s.receive(b"4 rsp 0\n") == 0 and s.closed


def test_empty_message() -> None:
    s = _opened()
    assert s.syslog_frame(b"") == b"2 syslog 0\n"


def test_serverclose_and_refusals_end_the_session() -> None:
    s = _opened()
    s.syslog_frame(b"x")
    with pytest.raises(ProtocolError, match="serverclose"):
        s.receive(b"0 serverclose 0\n")
    s = _opened()
    s.syslog_frame(b"x")
    with pytest.raises(ProtocolError, match="refused"):
        s.receive(b"2 rsp 9 500 error\n")
    s = RelpSession()
    s.open_frame()
    with pytest.raises(ProtocolError, match="open refused"):
        s.receive(b"1 rsp 44 500 required command not supported by client\n")


def test_out_of_order_rsp_is_an_error() -> None:
    s = _opened()
    s.syslog_frame(b"x")
    s.syslog_frame(b"y")
    with pytest.raises(ProtocolError, match="unexpected txnr"):
        s.receive(b"3 rsp 6 200 OK\n")


def test_syslog_before_open_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        RelpSession().syslog_frame(b"x")


def test_eof_is_an_error() -> None:
    with pytest.raises(ProtocolError):
        _opened().receive(b"")


def test_txnr_wraps_to_one() -> None:
    s = _opened()
    s._txnr = 999_999_999
    assert s.syslog_frame(b"x").startswith(b"1 syslog")


@given(st.binary(max_size=300))
def test_fuzz_receive_only_protocol_error(data: bytes) -> None:
    s = _opened()
    for _ in range(3):
        s.syslog_frame(b"m")
    try:
        n = s.receive(data)
    except ProtocolError:
        return
    assert 0 <= n <= 3
