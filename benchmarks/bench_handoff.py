"""The worker's hand-off, alone: one record's write into the intake (its record pipe, and
the socket it replaced), against a write into a per-process shared-memory ring (a
file-backed ``mmap``), the alternative issue 12 asks to evaluate. Both run side by side in one process, interleaved, min of many repeats.

    python benchmarks/bench_handoff.py [--calls 2000] [--repeats 40]

What is timed, per record, with ``time.process_time()``:

- ``send``: ``IntakeClient.send`` on a real connection to a real listener (a pipeline
  started with a SocketHandler to a local sink), i.e. what a worker's log call pays after
  encoding: the lock, the bookkeeping for a resend, one ``write`` into the record pipe.
- ``write``: the bare ``os.write`` on that same pipe (the system call and CPython's
  wrapper, nothing of ours).
- ``send_sock``, ``sendall``: the same two on a connection without a pipe
  (``MPLOG_INTAKE_PIPE=0``: records on the Unix socket, as before the pipe).
- ``ring``: a prototype ring write, the least a ring would have to do: read the consumer's
  position, copy the frame in (two slices when it wraps), publish the new write position,
  read the consumer's "asleep" flag (to know whether to wake it). The consumer side is not
  modelled (the position is advanced by the writer when the ring is full), so this is a
  lower bound for the ring's cost in the worker.
- ``format``: ``logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")``
  on the same record, the work of the benchmark's format-and-drop floor.

This is a measurement, not a design: nothing here is used by mplog.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import select
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mplog
from mplog._record import encode_pickle

RING = 1 << 20
HEAD = 64
_Q = struct.Struct("<Q")


class _Ring:
    """The writer's side of a single-producer ring in a shared file mapping."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, HEAD + RING)
            self.m = mmap.mmap(fd, HEAD + RING)
        finally:
            os.close(fd)
        self.w = 0

    def write(self, frame: bytes) -> None:
        m, w, n = self.m, self.w, len(frame)
        (r,) = _Q.unpack_from(m, 8)  # the consumer's position
        if w + n - r > RING:
            _Q.pack_into(m, 8, w)  # (no consumer here: pretend it caught up)
        off = w % RING
        end = off + n
        if end <= RING:
            m[HEAD + off : HEAD + end] = frame
        else:
            k = RING - off
            m[HEAD + off : HEAD + RING] = frame[:k]
            m[HEAD : HEAD + n - k] = frame[k:]
        self.w = w = w + n
        _Q.pack_into(m, 0, w)  # publish
        if m[16]:  # the consumer sleeps: a real ring would wake it (a system call)
            raise AssertionError("no consumer in this prototype")

    def close(self) -> None:
        self.m.close()


def _sink(srv: socket.socket, stop: threading.Event) -> None:
    conns = []
    srv.settimeout(0.1)
    while not stop.is_set():
        try:
            c, _ = srv.accept()
        except TimeoutError:
            continue
        conns.append(c)
        threading.Thread(target=lambda c=c: [None for _ in iter(lambda: c.recv(1 << 20), b"")],
                         daemon=True).start()


def _write(fd: int, frame: bytes) -> None:
    try:
        os.write(fd, frame)
    except BlockingIOError:  # the pipe is full (the listener naps): wait, never drop bytes
        select.select([], [fd], [], 10)
        _write(fd, frame)


def _best(fn: Callable[[], object], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t) / calls)
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args(argv)

    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    sink = threading.Thread(target=_sink, args=(srv, stop), daemon=True)
    sink.start()
    with tempfile.TemporaryDirectory(prefix="mplog-handoff-") as d, mplog.start(
        [mplog.SocketHandler("127.0.0.1", srv.getsockname()[1])], install=False
    ) as pipeline:
        client = mplog.QueueHandler(pipeline.address).queue
        os.environ["MPLOG_INTAKE_PIPE"] = "0"
        try:
            sock_client = mplog.QueueHandler(pipeline.address).queue
        finally:
            del os.environ["MPLOG_INTAKE_PIPE"]
        rec = logging.LogRecord("bench", logging.INFO, __file__, 1,
                                "request %d handled in %.3f ms", (7, 1.25), None)
        frame = encode_pickle(rec)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        fmt_rec = logging.makeLogRecord(dict(rec.__dict__))
        ring = _Ring(os.path.join(d, "ring"))
        pid = os.getpid()
        sock, wfd = sock_client._sock, client._wfd
        assert sock is not None and wfd >= 0 and sock_client._wfd < 0
        cases: dict[str, Callable[[], object]] = {
            "send": lambda: client.send(frame, pid),
            "write": lambda: _write(wfd, frame),
            "send_sock": lambda: sock_client.send(frame, pid),
            "sendall": lambda: sock.sendall(frame),
            "ring": lambda: ring.write(frame),
            "format": lambda: fmt.format(fmt_rec),
        }
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(3):  # interleaved: a slow spell hits every case
            for name, fn in cases.items():
                best[name] = min(best[name], _best(fn, args.calls, args.repeats // 3 or 1))
            pipeline.flush()
        ring.close()
    stop.set()
    srv.close()
    print(f"frame {len(frame)} bytes; µs per record, min of {args.repeats} x {args.calls}:")
    for name, v in best.items():
        print(f"  {name:9s} {v:6.2f}")
    print(f"send (pipe) / send_sock: {best['send'] / best['send_sock']:.2f}x; "
          f"ring / send: {best['ring'] / best['send']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
