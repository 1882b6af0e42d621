"""IO: :func:`say`, how the pipeline (the program's side and the listener) writes a
diagnostic line on stderr. (Two writers stay apart: ``mplog serve``'s rate-limited
``_collector._Diagnostics``, and a worker's line for each record it could not deliver,
written on fd 2 itself, past a ``sys.stderr`` the program may have replaced.)

A diagnostic must never cost what it reports on. stderr can be gone: a pipe whose reader
exited (``app 2>&1 | head``), a closed terminal, ``None`` (``pythonw``, some daemons). A
write that fails there raised ``BrokenPipeError`` out of ``Pipeline.stop()`` half way
through (its socket file, temp dir and helper processes left behind), and out of the
listener's threads. What a line says is also in the counters and ``stats()``
(``last_error``), so a line stderr cannot take is left out.
"""

from __future__ import annotations

import sys

__all__ = ["say"]


def say(line: str) -> bool:
    """Write *line* and a newline on stderr, and flush; False if stderr could not take it."""
    stream = sys.stderr
    if stream is None:
        return False
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):  # EPIPE, EIO, a closed stream
        return False
    return True
