"""mplog._poll: select()'s meaning for a few descriptors, without select()'s 1024 limit."""

from __future__ import annotations

import fcntl
import os
import resource
import select
import socket
import time
from collections.abc import Iterator

import pytest

from mplog import _poll


@pytest.fixture
def high_fd_pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose ends are above 1024 (the lowest free descriptors from 1050 up)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1100:
        if hard != resource.RLIM_INFINITY and hard < 1100:
            pytest.skip(f"the hard open-files limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1100, hard))
    r, w = os.pipe()
    try:
        hr = fcntl.fcntl(r, fcntl.F_DUPFD_CLOEXEC, 1050)
        hw = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 1050)
    finally:
        os.close(r)
        os.close(w)
    yield hr, hw
    os.close(hr)
    os.close(hw)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_descriptors_above_1024_work(high_fd_pipe: tuple[int, int]) -> None:
    r, w = high_fd_pipe
    with pytest.raises(ValueError, match="out of range"):
        select.select([r], [], [], 0)  # what these helpers exist for
    assert _poll.readable([r], 0) == []
    assert _poll.writable(w, 0) is True
    os.write(w, b"x")
    assert _poll.readable([r], 0) == [r]


def test_a_hang_up_counts_as_readable_and_a_timeout_as_nothing() -> None:
    a, b = socket.socketpair()
    with a, b:
        t0 = time.monotonic()
        assert _poll.readable([a, b], 0.05) == []
        assert time.monotonic() - t0 >= 0.045  # it waited (rounded up to whole ms, never 0)
        b.close()
        assert _poll.readable([a], 1) == [a]  # EOF: the read that follows finds it
        assert a.recv(1) == b""


def test_a_closed_socket_is_refused_as_select_refuses_it() -> None:
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError):
        select.select([s], [], [], 0)
    with pytest.raises(ValueError):
        _poll.readable([s], 0)


def test_only_the_ready_ones_come_back_in_the_given_order() -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        d.send(b"x")
        b.send(b"y")
        assert _poll.readable([c, a], 0) == [c, a]
        assert _poll.readable([a.fileno(), d], 0) == [a.fileno()]


def test_a_select_module_without_poll_falls_back_to_select(monkeypatch: pytest.MonkeyPatch) -> None:
    # eventlet's green select has no poll(); gevent's replaces it (and is used as is).
    monkeypatch.delattr(select, "poll")
    a, b = socket.socketpair()
    with a, b:
        assert _poll.readable([a], 0) == []
        assert _poll.writable(a, 0) is True
        b.send(b"x")
        assert _poll.readable([b, a], 0) == [a]
