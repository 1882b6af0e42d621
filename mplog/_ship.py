"""IO: handler instances shipped to the listener process by value, minus what must not travel.

A handler built in the parent holds things that belong to the parent: its ``RLock``
(copied by dill in whatever state it was, which deadlocks the listener on the first
record if it was held), the parent's open file or stream, a connected socket. Copying
those is the bug; rebuilding them is the fix. So a handler instance is reduced to its
class and its ``__dict__`` without those, and :func:`revive` builds it in the listener
the way its constructor would have:

- the handler lock is new (``createLock()``), and so is any other plain lock it keeps;
- ``FileHandler`` and its subclasses (``RotatingFileHandler``, ``TimedRotatingFileHandler``,
  ``WatchedFileHandler``, user subclasses) reopen ``baseFilename`` with their own mode and
  encoding (``_open()``), unless they were made with ``delay=True`` and have not opened it;
- a ``StreamHandler`` writing to the parent's stderr or stdout writes to the listener's
  (the same file descriptors: the listener inherits them); one writing to another named
  file reopens it for appending; any other stream (``io.StringIO`` ...) is copied as is;
- ``SysLogHandler`` makes its socket again (``createSocket()``); the stdlib's
  ``SocketHandler`` and ``DatagramHandler`` reconnect on their first record, as they do
  after an error.

Formatters and filters travel by value. A handler class that defines its own
``__reduce__``, ``__reduce_ex__`` or ``__getstate__`` (``mplog.SocketHandler`` does) is
pickled its own way: it knows better.
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import stat
import sys
import threading
from typing import IO, Any

from ._stderr import say

__all__ = ["reduce_handler", "release", "revive"]

_LOCK_TYPES: tuple[type[Any], ...] = (type(threading.Lock()), type(threading.RLock()))

#: How long :func:`release` waits for a handler's lock another thread holds.
LOCK_WAIT = 0.5

# Markers for a StreamHandler's stream (anything else is the stream itself, by value).
_STDERR = "stderr"
_STDOUT = "stdout"


def _own_reduction(cls: type[Any]) -> bool:
    """True if *cls* (or a base other than ``logging.Handler``'s) says how to pickle it."""
    for name in ("__reduce__", "__reduce_ex__", "__getstate__", "__setstate__"):
        if getattr(cls, name, None) is not getattr(object, name, None):
            return True
    return False


def _stream_marker(stream: object) -> object:
    """How a ``StreamHandler``'s *stream* travels: a marker, a reopen recipe, or itself."""
    if stream is None:
        return None
    if stream is sys.stderr or stream is sys.__stderr__:
        return _STDERR
    if stream is sys.stdout or stream is sys.__stdout__:
        return _STDOUT
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return stream  # StringIO and friends: by value
    if fd == 2:
        return _STDERR
    if fd == 1:
        return _STDOUT
    name = getattr(stream, "name", None)
    if isinstance(name, str):
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except OSError:
            regular = False
        if regular:
            return ("reopen", os.path.abspath(name), getattr(stream, "encoding", None),
                    getattr(stream, "errors", None))
    return stream


def reduce_handler(handler: logging.Handler) -> Any:
    """The pickle reduction of *handler* (``NotImplemented``: pickle it the usual way)."""
    cls = type(handler)
    if _own_reduction(cls):
        return NotImplemented
    state = dict(handler.__dict__)
    state.pop("lock", None)
    stream: object = None
    kind = "plain"
    if isinstance(handler, logging.FileHandler):
        kind = "file"
        opened = state.pop("stream", None) is not None
        stream = opened
    elif isinstance(handler, logging.StreamHandler):
        kind = "stream"
        stream = _stream_marker(state.pop("stream", None))
    if isinstance(handler, logging.handlers.SysLogHandler):
        state.pop("socket", None)
        kind = "syslog"
    elif isinstance(handler, logging.handlers.SocketHandler):  # DatagramHandler too
        state["sock"] = None
    for key, value in list(state.items()):
        if isinstance(value, _LOCK_TYPES):
            state[key] = ("__mplog_lock__", isinstance(value, type(threading.RLock())))
    return (revive, (cls, state, kind, stream))


def release(handler: logging.Handler) -> None:
    """In the process that shipped *handler*: close what :func:`reduce_handler` left out,
    the file the handler opened and its socket. Otherwise this process holds the log file
    open for the rest of its life (the listener has its own), and the descriptor is closed
    only by the garbage collector, with a ``ResourceWarning`` (an error under
    ``-W error``, pytest's ``filterwarnings = error``). The handler stays usable here:
    each of these is opened again on its first record, as with ``delay=True``."""
    if _own_reduction(type(handler)):
        return  # it pickled itself: what it holds is its own business
    lock = getattr(handler, "lock", None)  # a subclass may have replaced createLock
    if lock is not None and not lock.acquire(timeout=LOCK_WAIT):
        return  # a thread here is stuck inside it: leave it to the garbage collector
    try:
        h: Any = handler
        if isinstance(handler, logging.FileHandler):
            stream, h.stream = h.stream, None
            if stream is not None:
                stream.close()
        sock = None
        if isinstance(handler, logging.handlers.SysLogHandler):
            sock, h.socket = getattr(h, "socket", None), None
        elif isinstance(handler, logging.handlers.SocketHandler):  # DatagramHandler too
            sock, h.sock = h.sock, None
        if sock is not None:
            sock.close()
    finally:
        if lock is not None:
            lock.release()


def _reopen(path: str, encoding: str | None, errors: str | None) -> IO[str]:
    return open(path, "a", encoding=encoding, errors=errors)  # the handler owns it


def revive(
    cls: type[logging.Handler], state: dict[str, Any], kind: str, stream: object
) -> logging.Handler:
    """Build in this process the handler :func:`reduce_handler` described."""
    h = cls.__new__(cls)
    for key, value in list(state.items()):
        if isinstance(value, tuple) and len(value) == 2 and value[0] == "__mplog_lock__":
            state[key] = threading.RLock() if value[1] else threading.Lock()
    h.__dict__.update(state)
    h.createLock()
    if kind == "file":
        fh: Any = h
        fh.stream = fh._open() if stream else None
        if stream and isinstance(h, logging.handlers.WatchedFileHandler):
            h._statstream()
    elif kind == "stream":
        sh: Any = h
        if stream == _STDERR:
            sh.stream = sys.stderr
        elif stream == _STDOUT:
            sh.stream = sys.stdout
        elif isinstance(stream, tuple) and stream and stream[0] == "reopen":
            sh.stream = _reopen(stream[1], stream[2], stream[3])
        else:
            sh.stream = stream
    elif kind == "syslog":
        syslog: Any = h
        syslog.socket = None
        try:
            syslog.createSocket()
        except OSError as exc:
            # As the stdlib does when the server is not there yet: emit() tries again.
            say(f"mplog listener: {cls.__name__} cannot connect yet: {exc}")
    # Handler.__init__ registers every handler for logging.shutdown(); so does this one.
    logging._addHandlerRef(h)  # type: ignore[attr-defined]
    return h
