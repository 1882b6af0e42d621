"""Writing to a peer that may be gone, in a process that did not ignore SIGPIPE.

Python ignores SIGPIPE at start-up, so a write to a closed pipe or socket fails with
``EPIPE`` and mplog reconnects. A program may put the default back
(``signal.signal(signal.SIGPIPE, signal.SIG_DFL)``, the usual way for a command-line tool
to end quietly under ``| head``); then that same write *kills the process*: a listener
that dies would take every process that logs with it. So:

- a socket write from a process's own threads uses ``MSG_NOSIGNAL`` (:func:`send_all`);
- a pipe has no such flag: a process that does not ignore SIGPIPE writes its records on
  the socket instead (see ``IntakeClient._open_pipe``), and the rare pipe writes outside
  the record path run under :func:`no_sigpipe`;
- the threads mplog owns in a user's process block SIGPIPE for themselves
  (:func:`block_in_this_thread`), and the listener process ignores it.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # getsignal without the enum wrapper
import contextlib
import signal
import socket
from collections.abc import Iterator

__all__ = ["block_in_this_thread", "ignored", "no_sigpipe", "send_all"]

_SIGPIPE = {signal.SIGPIPE}
_IGN = int(signal.SIG_IGN)


def ignored() -> bool:
    """True if this process ignores SIGPIPE (Python's default)."""
    return bool(_signal.getsignal(signal.SIGPIPE) == _IGN)  # the C call: 45 ns, not 600


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall(data)`` that never raises SIGPIPE (``EPIPE`` is an ``OSError``)."""
    view = memoryview(data)
    while view:
        view = view[sock.send(view, socket.MSG_NOSIGNAL) :]


def block_in_this_thread() -> None:
    """For a thread mplog owns: SIGPIPE is blocked in it, so its writes fail with
    ``EPIPE`` whatever the process's disposition (a SIGPIPE such a write raises stays
    pending on this thread, which never unblocks it)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)


@contextlib.contextmanager
def no_sigpipe() -> Iterator[None]:
    """Writes in the block fail with ``EPIPE`` instead of raising SIGPIPE, in any thread:
    SIGPIPE is blocked around them, and one they raised is taken before it is unblocked.
    Three system calls: for rare writes, not for every record."""
    if ignored():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE)
    try:
        yield
    finally:
        if signal.SIGPIPE not in old:  # it was deliverable before: none was pending
            with contextlib.suppress(OSError):
                signal.sigtimedwait(_SIGPIPE, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
