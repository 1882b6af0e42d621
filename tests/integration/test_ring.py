"""The record ring a worker's hello hands over (``mplog._ring``), against a real pipeline:
what another process hands the listener is data, so a ring that is not a sealed memfd of
a size it accepts, or a write position the worker could not have written, closes that
connection only; a frame left half written is counted; a record larger than the ring
arrives whole."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pathlib
import socket

import pytest

import mplog
from mplog._framing import HEADER as FRAME_HEADER
from mplog._intake import GREETING
from mplog._ring import HEADER, RING_SIZE, Ring, available
from tests.helpers import Receiver, connect_with_fds, read_to_eof, wait_until

pytestmark = pytest.mark.skipif(not available(), reason="record rings are for x86-64 Linux")


def _still_served(p: mplog.Pipeline, receiver: Receiver, name: str) -> None:
    logging.getLogger(name).warning("still served")
    assert p.flush(20)
    assert receiver.wait_records(1)[0]["msg"] == "still served"


def _memfd(size: int, seal: bool) -> int:
    fd = os.memfd_create("not-a-ring", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seal:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


@pytest.mark.parametrize("what", ["an unsealed memfd", "a ring of an odd size", "a file"])
def test_a_hello_handing_over_a_bad_ring_closes_that_connection_only(receiver: Receiver, start_pipeline, tmp_path: pathlib.Path, what: str) -> None:
    # An unsealed memfd could be shrunk under the listener's mapping: its next read of the
    # ring would kill it (SIGBUS). Refused before the greeting, like any fd but a pipe.
    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)])
    pid = p.pid
    r, w = os.pipe()
    if what == "an unsealed memfd":
        bad = _memfd(HEADER + RING_SIZE, seal=False)
    elif what == "a ring of an odd size":
        bad = _memfd(HEADER + 5000, seal=True)
    else:
        path = tmp_path / "not-a-ring"
        path.write_bytes(b"\0" * (HEADER + RING_SIZE))
        bad = os.open(path, os.O_RDWR)
    try:
        with connect_with_fds(p.address, [r, bad]) as s:
            assert read_to_eof(s) == b""
    finally:
        for fd in (r, w, bad):
            os.close(fd)
    _still_served(p, receiver, "ring.bad")
    st = p.stats()
    assert p.pid == pid and st["restarts"] == 0 and st["bad_frames"] == 1, st


def _hand_over(address: str) -> tuple[socket.socket, Ring, int]:
    """A connection whose hello hands over a real ring; the test writes into it as a
    worker would (or would not)."""
    r, w = os.pipe()
    ring, mfd = Ring.create()
    ring.bell = w
    try:
        s = connect_with_fds(address, [r, mfd])
    finally:
        os.close(r)
        os.close(mfd)
    return s, ring, w


def test_a_ring_write_position_out_of_range_closes_that_connection_only(receiver: Receiver, start_pipeline) -> None:
    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)])
    s, ring, w = _hand_over(p.address)
    try:
        ring.words[0] = 3 * RING_SIZE  # more than the ring ahead of what was taken
        os.write(w, b"\0")
        data = read_to_eof(s)  # the greeting, then EOF: closed by the listener
        assert data.startswith(GREETING), data
    finally:
        s.close()
        ring.close()
        os.close(w)
    _still_served(p, receiver, "ring.position")
    st = p.stats()
    assert st["bad_frames"] == 1 and st["restarts"] == 0, st


def test_a_frame_left_half_written_in_a_ring_is_counted(receiver: Receiver, start_pipeline) -> None:
    # A worker killed inside a frame larger than its ring's room: its socket closes, the
    # bell pipe stays open (a child holds it), and the half frame is counted as torn.
    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)])
    s, ring, w = _hand_over(p.address)
    try:
        assert ring.put(FRAME_HEADER.pack(1000) + b"}" + b"x" * 99)  # 100 of its 1000 bytes
        wait_until(lambda: p.stats()["connections"] >= 2, 10, "the connection taken")
        s.close()
        st = wait_until(lambda: (x := p.stats())["torn_frames"] == 1 and x, 10, "the torn frame")
        assert st["dropped"] >= 1 and st["bad_frames"] == 0, st
    finally:
        s.close()
        ring.close()
        os.close(w)
    _still_served(p, receiver, "ring.torn")


def _log_big_and_report(size: int) -> None:
    log = logging.getLogger("ring.big")
    log.info("before")
    log.info("HEAD%sTAIL", "x" * size)
    log.info("after")
    client = next(h for h in logging.getLogger().handlers
                  if isinstance(h, mplog.QueueHandler)).queue
    os._exit(0 if client._ring is not None else 3)  # right after the last call


def test_records_larger_than_the_ring_arrive_whole_and_in_order(receiver: Receiver, start_pipeline) -> None:
    # 5 rings' worth in one record: written in parts as the listener makes room.
    size = 5 * RING_SIZE
    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)])
    proc = multiprocessing.get_context("fork").Process(target=_log_big_and_report, args=(size,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0  # 0: it wrote into a ring
    assert p.flush(20)
    msgs = [r["msg"] for r in receiver.wait_records(3)]
    assert msgs[0] == "before" and msgs[2] == "after", [m[:20] for m in msgs]
    assert msgs[1] == "HEAD" + "x" * size + "TAIL"
    assert p.stats()["dropped"] == 0
