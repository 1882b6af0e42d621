"""The shape of :meth:`mplog.Pipeline.stats` (a ``TypedDict``, for type checkers only).

Every key is an ``int`` unless said otherwise. The first eight are the contract's "Stats"
table; the others are details that help when something goes wrong.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

__all__ = ["Stats"]


class Stats(TypedDict):
    """Counters of a pipeline for its whole life (they survive a listener restart)."""

    #: Records the listener has read from processes (the main one included).
    received: int
    #: Records the listener has passed to its handlers.
    handled: int
    #: Records mplog socket handlers have written (acknowledged, where the wire acks).
    sent: int
    #: Records waiting now in socket handlers' memory buffers or spools.
    buffered: int
    #: Records discarded for any reason, ever.
    dropped: int
    #: Times a socket handler re-established a lost or never-made connection.
    reconnects: int
    #: Socket handlers connected now.
    connected: int
    #: Times the supervisor restarted a dead listener.
    restarts: int
    buffered_bytes: NotRequired[int]
    drop_reports: NotRequired[int]
    spooled: NotRequired[int]
    spool_bytes: NotRequired[int]
    spool_damaged: NotRequired[int]
    worker_lost: NotRequired[int]
    torn_frames: NotRequired[int]
    bad_frames: NotRequired[int]
    handler_errors: NotRequired[int]
    #: Worker connections the listener turned away for want of file descriptors.
    turned_away: NotRequired[int]
    #: Worker connections open now.
    connections: NotRequired[int]
    #: The listener process's pid.
    pid: NotRequired[int]
    #: The listener's resident memory, bytes.
    listener_rss: NotRequired[int]
    #: The listener's CPU time (user + system), seconds.
    listener_cpu: NotRequired[float]
    #: The port ``GET /metrics`` is served on (``metrics_port=`` given), else absent.
    metrics_port: NotRequired[int]
    #: The latest delivery error of any socket handler, one line, or None.
    last_error: NotRequired[str | None]
    #: When it happened (``time.time()``), or None.
    last_error_at: NotRequired[float | None]
    #: True: the listener did not answer, and these are the counters last published (a
    #: stuck handler) or those of the listeners that died (see ``listener_down``).
    stale: NotRequired[bool]
    #: Why the supervisor cannot start a new listener (present only while it cannot).
    listener_down: NotRequired[str]
