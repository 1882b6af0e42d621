"""Waiting for a few file descriptors, for any descriptor number.

``select.select`` refuses a descriptor of 1024 or more (``ValueError: filedescriptor out
of range in select()``), and a server that raised its open-files limit has such
descriptors as a matter of course: every socket or pipe mplog opens in it would be one.
``poll(2)`` has no such limit, so it waits for those; descriptors below 1024 are waited
for with ``select()`` as before (under gevent or eventlet, their cooperative one; and
where a green ``select`` module has no ``poll()``, always). These helpers keep ``select``'s
meaning: a descriptor that hung up or failed counts as ready, so the
caller's read or write finds out what happened (EOF, or the ``OSError`` it already
handles).
"""

from __future__ import annotations

import math
import select
from collections.abc import Sequence
from typing import Any, TypeVar, cast

__all__ = ["readable", "writable"]

T = TypeVar("T")

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT


def _ms(timeout: float | None) -> int | None:
    if timeout is None:
        return None  # block
    return 0 if timeout <= 0 else math.ceil(timeout * 1000)  # never a busy 0 for 0.0004 s


def _fileno(obj: Any) -> int:
    return obj if isinstance(obj, int) else int(obj.fileno())


def readable(objs: Sequence[T], timeout: float | None) -> list[T]:
    """The members of *objs* (file descriptors, or objects with ``fileno()``) that are
    readable, or hung up, within *timeout* seconds (None: no limit); ``[]`` on timeout.
    Raises ``ValueError`` for a closed socket (its ``fileno()`` is -1), as ``select``
    does; an interrupted wait is retried by Python (PEP 475)."""
    return _wait(objs, _READ, timeout)


def writable(obj: Any, timeout: float | None) -> bool:
    """True if *obj* can be written (or has failed) within *timeout* seconds."""
    return bool(_wait([obj], _WRITE, timeout))


#: select()'s limit (FD_SETSIZE): descriptors below it are waited for with select().
_FD_SETSIZE = 1024


def _wait(objs: Sequence[T], events: int, timeout: float | None) -> list[T]:
    fds = [_fileno(obj) for obj in objs]
    if any(fd < 0 for fd in fds):  # what select says of a closed socket
        raise ValueError(f"file descriptor cannot be a negative integer ({min(fds)})")
    make = getattr(select, "poll", None)  # looked up each time: green libraries patch it
    if make is None or max(fds, default=0) < _FD_SETSIZE:
        # select() where it can: under gevent or eventlet it is their cooperative one,
        # whose first look is a real non-blocking select (gevent's poll() has none, and
        # waits on a hub that may no longer run, e.g. at exit).
        given: list[Any] = list(objs)
        if events == _WRITE:
            return cast("list[T]", select.select([], given, [], timeout)[1])
        return cast("list[T]", select.select(given, [], [], timeout)[0])
    poller = make()
    for fd in fds:
        poller.register(fd, events)
    ready = {fd for fd, _ in poller.poll(_ms(timeout))}
    return [obj for obj, fd in zip(objs, fds, strict=True) if fd in ready]
