"""Records/s through mplog into real receivers, one wire after another, in one run.

    python benchmarks/bench_wires.py [--records N] [--workers N] [--wires a,b,...]

Each wire gets a fresh pipeline (one listener, one ``mplog.SocketHandler``) and a fresh
receiver; *workers* forked processes (``mplog.worker_init``) log ``records`` in all
(``log.info("request %d handled", i)``). The clock runs from the first log call until
the receiver holds every record (its output file has every line). Also shown: the
listener's CPU time per record (decode + wire encoding + send), which does not depend on
how fast the receiver is, and the receiver's (rsyslog's CPU includes the JSON template
the tests use, with mmpstrucdata parsing STRUCTURED-DATA).

| name | wire | receiver |
|---|---|---|
| syslog | ``wire="syslog"`` (octet counting) | rsyslog ``imtcp`` -> omfile |
| syslog-newline | ``wire="syslog", framing="newline"`` | rsyslog ``imtcp`` -> omfile |
| jsonl | ``wire="jsonl"`` | ``tests.receivers`` line reader (writes the lines) |
| pickle | the stdlib wire (default) | the suite's stdlib receiver (unpickles, writes JSON) |
| relp | ``wire="relp"`` | rsyslog ``imrelp`` (Direct queue) -> omfile |
| mplog | ``wire="mplog"`` | ``mplog serve`` (acknowledges after writing) |

Needs the daemons of ``scripts/ci-deps-syslog.sh``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mplog
from tests.helpers import Receiver, Serve, wait_until
from tests.receivers import LineReceiver, Rsyslog

WIRES = ["syslog", "syslog-newline", "jsonl", "pickle", "relp", "mplog"]


def work(n: int) -> None:
    log = logging.getLogger("bench")
    for i in range(n):
        log.info("request %d handled", i)


def _receiver(wire: str, tmp: pathlib.Path) -> tuple[Any, Callable[[], int], dict[str, Any], str]:
    """(receiver, count of records it holds, handler options, description)."""
    if wire in ("syslog", "syslog-newline"):
        r = Rsyslog(tmp, "imtcp")
        opts = {"wire": "syslog", "framing": "newline" if wire == "syslog-newline" else "octet-counting"}
        return r, r.count, opts, "rsyslog imtcp -> omfile"
    if wire == "relp":
        r = Rsyslog(tmp, "imrelp")
        return r, r.count, {"wire": "relp"}, "rsyslog imrelp (Direct queue) -> omfile"
    if wire == "jsonl":
        lr = LineReceiver(tmp)
        return lr, lr.count, {"wire": "jsonl"}, "TCP line reader -> file"
    if wire == "mplog":
        s = Serve(tmp / f"serve-{time.monotonic_ns()}.jsonl")
        return s, s.count, {"wire": "mplog"}, "mplog serve (acks after writing)"
    if wire == "pickle":
        rc = Receiver(tmp)

        def count() -> int:
            return rc.out.read_bytes().count(b'"record"') if rc.out.exists() else 0

        return rc, count, {}, "stdlib receiver (unpickles, writes JSON)"
    raise SystemExit(f"unknown wire {wire!r}; one of {', '.join(WIRES)}")


def run(wire: str, tmp: pathlib.Path, total: int, workers: int) -> tuple[float, float, float, str]:
    """(records/s, listener and receiver CPU µs per record, receiver description)."""
    rcv, count, opts, desc = _receiver(wire, tmp)
    p = mplog.start([mplog.SocketHandler("127.0.0.1", rcv.port, **opts)], install=False)
    per = total // workers
    ctx = multiprocessing.get_context("fork")
    try:
        listener = psutil.Process(p.pid)
        receiver = psutil.Process(rcv.proc.pid)
        cpu0 = sum(listener.cpu_times()[:2])
        rcpu0 = sum(receiver.cpu_times()[:2])
        t0 = time.monotonic()
        with ctx.Pool(workers, initializer=mplog.worker_init, initargs=(p.address,)) as pool:
            pool.map(work, [per] * workers)
        wait_until(lambda: count() >= per * workers, 600, f"{wire}: all records at the receiver")
        elapsed = time.monotonic() - t0
        cpu = sum(listener.cpu_times()[:2]) - cpu0
        rcpu = sum(receiver.cpu_times()[:2]) - rcpu0
        n = per * workers
        return n / elapsed, cpu / n * 1e6, rcpu / n * 1e6, desc
    finally:
        p.stop()
        rcv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--wires", default=",".join(WIRES), help=f"comma-separated, from {','.join(WIRES)}")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        print(f"{a.records:,} records from {a.workers} workers through one mplog listener, one wire at a time")
        print(f"{'wire':<16}{'records/s':>11}{'listener µs/rec':>17}{'receiver µs/rec':>17}  receiver")
        for wire in a.wires.split(","):
            rate, cpu, rcpu, desc = run(wire, tmp, a.records, a.workers)
            print(f"{wire:<16}{rate:>11,.0f}{cpu:>17.1f}{rcpu:>17.1f}  {desc}", flush=True)


if __name__ == "__main__":
    main()
