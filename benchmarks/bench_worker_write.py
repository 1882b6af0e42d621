"""The worker's write, in place: N forked workers logging at once into a running pipeline,
against the same workers formatting and dropping (the floor of ``mplog bench``) and
encoding and dropping (mplog's work without the write). Side by side, in rounds.

    python benchmarks/bench_worker_write.py [--workers 4] [--records 30000] [--rounds 3]

What is timed: ``time.process_time()`` around each worker's logging loop (user and
system time: the write's system call is in it), summed over the workers, per call.

- ``fmt-only``: a handler that formats each record and drops it (the floor);
- ``encode-only``: a handler that does what mplog's ``QueueHandler`` does before it
  writes (``encode_pickle``, the relay-mode frame) and drops the frame;
- ``mplog-ring``: ``mplog.worker_init(address)``: the record ring (the default on x86-64
  Linux: a memory copy per record, no system call);
- ``mplog-pipe``: the same with ``MPLOG_INTAKE_RING=0``: one write into the record pipe;
- ``mplog-socket``: the same with ``MPLOG_INTAKE_PIPE=0``: records on the Unix socket.

``mplog-ring`` (or ``mplog-pipe``) minus ``encode-only`` is what the hand-off costs a
worker among busy processes, which is what decides the worker goal of issue 12; ``bench_handoff.py``
measures the same write alone in one process, where it is several times cheaper.
This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mplog
from mplog._record import encode_pickle

MESSAGE = "request %d handled in %.3f ms"
FMT = "%(asctime)s %(levelname)s %(name)s %(message)s"
KINDS = ("fmt-only", "encode-only", "mplog-ring", "mplog-pipe", "mplog-socket")
#: What each mplog kind sets in the environment its workers connect with.
ENV = {"mplog-pipe": ("MPLOG_INTAKE_RING", "0"), "mplog-socket": ("MPLOG_INTAKE_PIPE", "0")}


class _FormatOnly(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


class _EncodeOnly(logging.Handler):
    def handle(self, record: logging.LogRecord) -> bool:
        encode_pickle(record)  # mplog's QueueHandler.handle, less the write
        return True

    def emit(self, record: logging.LogRecord) -> None:
        raise AssertionError("handle() does not call emit()")


def _sink(srv: socket.socket) -> None:
    while True:
        c, _ = srv.accept()
        threading.Thread(target=lambda c=c: [None for _ in iter(lambda: c.recv(1 << 20), b"")],
                         daemon=True).start()


def _worker(kind: str, address: str, n: int, ready: Any, go: Any, out: Any) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    if kind.startswith("mplog"):
        mplog.worker_init(address, level=logging.INFO)
    elif kind == "fmt-only":
        h = _FormatOnly()
        h.setFormatter(logging.Formatter(FMT))
        root.addHandler(h)
    else:
        root.addHandler(_EncodeOnly())
    log = logging.getLogger("bench")
    log.info(MESSAGE, -1, 0.0)  # before the clock: the connection is up
    ready.put(os.getpid())
    go.wait(60)
    t = time.process_time()
    for i in range(n):
        log.info(MESSAGE, i, (i % 1000) * 0.125)
    out.put(time.process_time() - t)
    for h in root.handlers:
        h.flush()


def _run(kind: str, address: str, workers: int, records: int) -> float:
    ctx = multiprocessing.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    env = ENV.get(kind)
    if env is not None:
        os.environ[env[0]] = env[1]  # read by each worker when it connects
    try:
        procs = [ctx.Process(target=_worker, args=(kind, address, records, ready, go, out))
                 for _ in range(workers)]
        for p in procs:
            p.start()
    finally:
        if env is not None:
            os.environ.pop(env[0], None)
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    cpu: float = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    return cpu / (records * workers) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--records", type=int, default=30000, help="per worker")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    srv = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_sink, args=(srv,), daemon=True).start()
    got: dict[str, list[float]] = {k: [] for k in KINDS}
    with mplog.start([mplog.SocketHandler("127.0.0.1", srv.getsockname()[1])],
                     install=False) as pipeline:
        for r in range(args.rounds):
            order = KINDS[r % len(KINDS):] + KINDS[: r % len(KINDS)]  # rotated each round
            for kind in order:
                got[kind].append(_run(kind, pipeline.address, args.workers, args.records))
                pipeline.flush(30)
    srv.close()
    print(f"{args.workers} workers x {args.records:,} records; worker CPU µs per call, "
          f"per round, then the median:")
    for kind, values in got.items():
        print(f"  {kind:13s} " + " ".join(f"{v:6.2f}" for v in values)
              + f"   median {statistics.median(values):6.2f}")
    enc = statistics.median(got["encode-only"])
    for kind in ("mplog-ring", "mplog-pipe", "mplog-socket"):
        write = statistics.median(got[kind]) - enc
        print(f"the write, {kind}: {write:.2f} µs per call "
              f"({write / statistics.median(got['fmt-only']):.0%} of the floor)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
