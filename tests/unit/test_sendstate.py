"""The sender's decisions (mplog._sendstate), with a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import random

import pytest

from mplog._backoff import Backoff
from mplog._sendstate import Action, SendState


def _state(start: float = 1.0, factor: float = 2.0, maximum: float = 30.0) -> SendState:
    policy = Backoff(start, factor, maximum, jitter=0.0)
    return SendState("collector:9020", lambda: policy, random.Random(0))


def _next(s: SendState, now: float, pending: int = 1, window: int | None = None, inflight: int = 0) -> Action:
    return s.next(now, pending=pending, unpinned=pending - inflight, inflight=inflight, window=window)


def test_first_connect_is_immediate_then_failures_back_off_to_the_cap() -> None:
    s = _state()
    assert _next(s, 0.0) is Action.CONNECT
    delays = [s.failed(0.0, "connection refused") for _ in range(8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert _next(s, 29.9) is Action.WAIT
    assert s.wake_at(29.9) == 30.0
    assert _next(s, 30.0) is Action.CONNECT


def test_a_receiver_that_accepts_then_refuses_is_retried_on_the_schedule() -> None:
    # The reconnect storm of issue 9: connect OK, refused at once, reconnect at once...
    # Here every refusal counts as a failure, because nothing was delivered.
    s = _state()
    now = 0.0
    attempts = 0
    while now < 30.0:
        action = _next(s, now)
        if action is Action.CONNECT:
            attempts += 1
            s.connected_now()
            s.failed(now, "refused: wrong HMAC key")
        else:
            now = s.wake_at(now)
    # 0, 1, 3, 7, 15 (then 31 is past the window): 5 attempts in 30 s, not thousands.
    assert attempts == 5


def test_a_healthy_connection_that_ends_restarts_the_schedule() -> None:
    s = _state()
    for _ in range(4):
        s.failed(0.0, "refused")
    s.connected_now()
    s.delivered(10)
    assert s.failures == 0
    assert s.failed(100.0, "peer closed the connection") == 1.0  # not 16 s
    assert s.reconnects == 1


def test_delivering_nothing_does_not_reset_the_failures() -> None:
    s = _state()
    s.failed(0.0, "refused")
    s.connected_now()
    s.delivered(0)
    assert s.failed(1.0, "refused") == 2.0


def test_one_notice_per_outage_and_one_when_it_is_over() -> None:
    s = _state()
    for t in range(50):
        s.failed(float(t), "connection to collector:9020 refused")
    notices = s.take_notices()
    assert len(notices) == 1 and notices[0].error
    assert "collector:9020" in notices[0].text and "next try in 1.0 s" in notices[0].text
    s.connected_now()
    assert s.take_notices() == []  # connected is not delivering: a refusal may follow
    s.delivered(3)
    s.delivered(3)
    (back,) = s.take_notices()
    assert not back.error and "again" in back.text
    assert s.last_error == "connection to collector:9020 refused"


def test_acked_window_decides_send_or_await() -> None:
    s = _state()
    s.connected_now()
    assert _next(s, 0.0, pending=5, window=2, inflight=0) is Action.SEND
    assert _next(s, 0.0, pending=5, window=2, inflight=2) is Action.AWAIT_ACKS
    assert _next(s, 0.0, pending=2, window=8, inflight=2) is Action.AWAIT_ACKS
    assert _next(s, 0.0, pending=0, window=8) is Action.PROBE
    assert _next(s, 0.0, pending=0) is Action.PROBE
    assert _next(s, 0.0, pending=3) is Action.SEND


def test_closing_tries_once_at_once_and_gives_up_at_the_deadline() -> None:
    s = _state()
    s.failed(0.0, "refused")
    s.failed(0.0, "refused")  # next try at 2.0
    s.close(0.5, timeout=5.0)
    assert _next(s, 0.5) is Action.CONNECT  # one last try now, not in 1.5 s
    s.failed(0.5, "refused")  # next at 4.5
    assert _next(s, 1.0) is Action.WAIT and s.wake_at(1.0) == 4.5
    assert _next(s, 5.5) is Action.EXIT
    assert _next(_closed(), 0.0, pending=0) is Action.EXIT


def _closed() -> SendState:
    s = _state()
    s.close(0.0, 1.0)
    return s


def test_closing_with_nothing_buffered_exits_even_when_connected() -> None:
    s = _state()
    s.connected_now()
    s.close(0.0, 10.0)
    assert _next(s, 0.0, pending=0) is Action.EXIT
    assert _next(s, 0.0, pending=1) is Action.SEND


@pytest.mark.parametrize("start", [0.05, 1.0, 3.0])
def test_retry_attributes_are_read_at_each_failure(start: float) -> None:
    policy = {"p": Backoff(1.0, 2.0, 30.0, 0.0)}
    s = SendState("x", lambda: policy["p"])
    assert s.failed(0.0, "e") == 1.0
    policy["p"] = Backoff(start, 2.0, 30.0, 0.0)
    assert s.failed(0.0, "e") == start * 2
