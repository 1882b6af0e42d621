"""Sans-IO: the decisions of a socket handler's sender, as a state machine that takes ``now``.

The sender thread (``mplog._sender``) is a thin loop: it asks :meth:`SendState.next` what
to do, does it (connect, write, wait for acks), and reports what happened back. Every
decision about time lives here, with the clock passed in, so the 3 s and 30 s behaviours
are millisecond tests with a fake clock (``tests/unit/test_sendstate.py``).

Rules this module keeps:

- One back-off timer governs every reconnect, whatever ended the previous connection: a
  refused connect, a TLS failure, a refusal by the receiver, a peer that closed, a protocol
  error. Consecutive failures grow the delay (``Backoff``); only a connection that
  *delivered* something resets it, so a receiver that accepts and then refuses is retried
  on the schedule, never in a storm.
- An outage is announced once, when it begins (what failed, why, when the next try is),
  and once when it ends (the first delivery after it); never once per record or per try.
- Closing: keep trying to deliver until the close deadline, then stop.
- No clock, socket, thread or randomness of its own: ``now`` and the RNG come in.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from ._backoff import Backoff

__all__ = ["Action", "Notice", "SendState"]


class Action(enum.Enum):
    """What the sender thread should do next."""

    EXIT = "exit"  #: closing and done (delivered, or the deadline passed)
    CONNECT = "connect"  #: make a connection now
    WAIT = "wait"  #: nothing to do before ``SendState.wake_at`` (or new records)
    SEND = "send"  #: write buffered records
    AWAIT_ACKS = "await"  #: wait for acknowledgements (acked wires, window full)
    PROBE = "probe"  #: idle and connected: check that the peer is still there


@dataclass(frozen=True)
class Notice:
    """A line the sender should write to stderr (and keep as ``last_error``)."""

    text: str
    error: bool  #: True for a failure (kept as last_error), False for "back again"


class SendState:
    """The state of one sender: connected or not, failures, the retry time, closing.

    *backoff* returns the current policy (read at each failure, so ``retryStart`` and
    friends can be changed on a live handler, as with the stdlib). *name* names the
    receiver in notices (``host:port`` or a path).
    """

    def __init__(
        self, name: str, backoff: Callable[[], Backoff], rng: random.Random | None = None
    ) -> None:
        self.name = name
        self._backoff = backoff
        self._rng = rng or random.Random()
        self.connected = False
        #: Consecutive failures since the last connection that delivered something.
        self.failures = 0
        #: When the next connection attempt may start (same clock as ``now``).
        self.retry_at = 0.0
        self.closing = False
        self.close_deadline = 0.0
        #: True from the first failure until something is delivered again.
        self.in_outage = False
        self._delivered_on_this_connection = False
        self.reconnects = 0
        self._ever_connected = False
        self.last_error: str | None = None
        #: Notices not yet taken by the IO layer (:meth:`take_notices`).
        self._notices: list[Notice] = []

    # -- decisions ------------------------------------------------------------------------

    def next(
        self, now: float, *, pending: int, unpinned: int, inflight: int, window: int | None
    ) -> Action:
        """The next action. *pending*: records buffered (pinned or not); *unpinned*: those
        not yet written on this connection; *inflight*: written and awaiting an ack;
        *window*: the acked wire's window, or None for a wire without acks."""
        if self.closing and (not pending or now >= self.close_deadline):
            return Action.EXIT
        if not self.connected:
            if now >= self.retry_at:
                return Action.CONNECT
            return Action.WAIT
        if window is not None:
            if unpinned and inflight < window:
                return Action.SEND
            if inflight:
                return Action.AWAIT_ACKS
        elif pending:
            return Action.SEND
        if self.closing:
            return Action.EXIT
        return Action.PROBE

    def wake_at(self, now: float) -> float:
        """While disconnected: when :meth:`next` will say something other than WAIT."""
        at = self.retry_at
        if self.closing:
            at = min(at, self.close_deadline)
        return max(now, at)

    # -- events ---------------------------------------------------------------------------

    def connected_now(self) -> None:
        """A connection (and its handshake, if any) succeeded."""
        self.connected = True
        self._delivered_on_this_connection = False
        if self._ever_connected or self.failures:
            self.reconnects += 1
        self._ever_connected = True

    def delivered(self, n: int) -> None:
        """*n* records were delivered on the current connection (written, or acked)."""
        if n <= 0:
            return
        self._delivered_on_this_connection = True
        self.failures = 0
        if self.in_outage:
            self.in_outage = False
            self._notices.append(Notice(f"mplog: delivering to {self.name} again", False))

    def failed(self, now: float, reason: str) -> float:
        """The connection attempt failed, or the connection ended (*reason*, one line).

        Returns the delay until the next attempt, on the back-off schedule.
        """
        if self.connected and self._delivered_on_this_connection:
            self.failures = 0  # a healthy connection ended: start the schedule again
        self.connected = False
        self._delivered_on_this_connection = False
        self.failures += 1
        delay = self._backoff().delay(self.failures, self._rng)
        self.retry_at = now + delay
        self.last_error = reason
        if not self.in_outage:
            self.in_outage = True
            self._notices.append(
                Notice(f"mplog: cannot deliver to {self.name}: {reason}; records wait in the "
                       f"buffer; next try in {delay:.1f} s", True)
            )
        return delay

    def close(self, now: float, timeout: float) -> None:
        """Start closing: deliver what is buffered until ``now + timeout``."""
        if not self.closing:
            self.closing = True
            self.close_deadline = now + timeout
            if not self.connected:
                self.retry_at = min(self.retry_at, now)  # one last try, now

    def take_notices(self) -> list[Notice]:
        out, self._notices = self._notices, []
        return out
