"""Records/s through mplog into real receivers, one wire after another, in one run.

    python benchmarks/bench_wires.py [--records N] [--workers N]

rsyslog (imtcp for syslog, imrelp for relp; needs scripts/ci-deps.sh), `mplog serve` for
mplog (jsonl lines go to rsyslog imtcp too, which takes each line as a message), and the
suite's stdlib-wire receiver (it unpickles and writes JSON lines, so it is
the slow end of that run) for pickle. The clock runs
from the first log call until the receiver holds every record (rsyslog: lines in its
output file).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mplog
from tests.helpers import Receiver, Serve, wait_until
from tests.receivers import Rsyslog


def work(n: int) -> None:
    log = logging.getLogger("bench")
    for i in range(n):
        log.info("request %d handled", i)


def run(wire: str, tmp: pathlib.Path, total: int, workers: int) -> float:
    if wire in ("syslog", "syslog-newline", "relp", "jsonl"):
        rcv = Rsyslog(tmp, "imrelp" if wire == "relp" else "imtcp")
        count = rcv.count
    elif wire == "mplog":
        rcv = Serve(tmp / f"serve-{time.monotonic_ns()}.jsonl")  # type: ignore[assignment]
        count = rcv.count
    else:
        rcv = Receiver(tmp)  # type: ignore[assignment]
        count = lambda: rcv.out.read_bytes().count(b'"record"') if rcv.out.exists() else 0  # noqa: E731
    kw: dict[str, object] = {
        "pickle-file": {},
        "syslog-newline": {"wire": "syslog", "framing": "newline"},
    }.get(wire, {"wire": wire})  # type: ignore[assignment]
    h = mplog.SocketHandler("127.0.0.1", rcv.port, **kw)  # type: ignore[arg-type]
    p = mplog.start([h], install=False)
    per = total // workers
    ctx = multiprocessing.get_context("fork")
    try:
        t0 = time.monotonic()
        with ctx.Pool(workers, initializer=mplog.worker_init, initargs=(p.address,)) as pool:
            pool.map(work, [per] * workers)
        wait_until(lambda: count() >= per * workers, 300, f"{wire}: all records")
        return per * workers / (time.monotonic() - t0)
    finally:
        p.stop()
        rcv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--wires", default="", help="comma-separated subset")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        print(f"{a.records} records from {a.workers} workers through one mplog listener")
        wires = a.wires.split(",") if a.wires else ["pickle-file", "mplog", "syslog", "syslog-newline", "relp", "jsonl"]
        for wire in wires:
            rate = run(wire, tmp, a.records, a.workers)
            print(f"{wire:<15} {rate:>10,.0f} records/s", flush=True)


if __name__ == "__main__":
    main()
