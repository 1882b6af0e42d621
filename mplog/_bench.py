"""End-to-end benchmark: mplog vs the stdlib patterns, side by side in one run.

    python benchmarks/bench_pipeline.py [--quick] [--records N] [--json FILE]

For N = 1, 4, 16 worker processes, four setups deliver the same records:
  mplog      workers: mplog.worker_init -> one listener process -> one mplog.SocketHandler
  cookbook   workers: QueueHandler on a multiprocessing.Queue -> a listener process running
             QueueListener -> one stdlib SocketHandler
  per-proc   a stdlib SocketHandler in every worker (N connections)
  fmt-only   a handler that formats each record and drops it (no delivery: the floor of
             the worker's cost)
The receiver is its own process: it reads the stdlib wire (4-byte length + pickle) and
counts frames without unpickling, so it costs every setup the same and little.

Reported: records/s (start signal -> the receiver counted the last record), worker CPU
per log call (time.process_time in each worker around its loop), total CPU per record
(workers + listener + receiver), and the listener's peak RSS. Ratios are what matter on a
shared machine: they are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import multiprocessing as mp
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mplog

FMT = "%(asctime)s %(levelname)s %(name)s %(message)s"


# -- receiver ------------------------------------------------------------------------------

def receiver_main(port_q: mp.Queue, expected: int, done_q: mp.Queue) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port_q.put(srv.getsockname()[1])
    count = 0
    lock = threading.Lock()
    finished = threading.Event()

    def read(conn: socket.socket) -> None:
        nonlocal count
        buf = b""
        with conn:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    return
                buf += data
                n = 0
                pos = 0
                while len(buf) - pos >= 4:
                    (ln,) = struct.unpack_from(">L", buf, pos)
                    if len(buf) - pos - 4 < ln:
                        break
                    pos += 4 + ln
                    n += 1
                buf = buf[pos:]
                with lock:
                    count += n
                    if count >= expected and not finished.is_set():
                        finished.set()
                        done_q.put(time.monotonic())

    srv.settimeout(0.2)
    while not finished.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        threading.Thread(target=read, args=(conn,), daemon=True).start()
    srv.close()
    finished.wait()
    time.sleep(0.2)  # let the other reader threads notice EOF; nothing waits on this


# -- workers ---------------------------------------------------------------------------------

class FormatOnly(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


def worker(kind: str, arg: object, n: int, go: object, out: mp.Queue) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    if kind.startswith("mplog"):
        mplog.worker_init(str(arg), level=logging.INFO)
    elif kind == "cookbook":
        root.addHandler(logging.handlers.QueueHandler(arg))  # type: ignore[arg-type]
    elif kind == "per-proc":
        root.addHandler(logging.handlers.SocketHandler("127.0.0.1", int(arg)))  # type: ignore[arg-type]
    else:
        h = FormatOnly()
        h.setFormatter(logging.Formatter(FMT))
        root.addHandler(h)
    log = logging.getLogger("bench")
    go.wait()  # type: ignore[attr-defined]
    t = time.process_time()
    for i in range(n):
        log.info("request %d handled", i)
    cpu = time.process_time() - t
    for h in root.handlers:
        h.flush()
    out.put((cpu, n))
    if kind == "cookbook":
        arg.close()  # type: ignore[attr-defined]
        arg.join_thread()  # type: ignore[attr-defined]


def cookbook_listener(q: mp.Queue, port: int) -> None:
    h = logging.handlers.SocketHandler("127.0.0.1", port)
    ql = logging.handlers.QueueListener(q, h)
    ql.start()
    ql._thread.join()  # type: ignore[attr-defined]  # ends at the sentinel
    h.close()


# -- one run -----------------------------------------------------------------------------------

class Peak(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return


def run(kind: str, nworkers: int, total: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    per = total // nworkers
    total = per * nworkers
    port_q, done_q, out = ctx.Queue(), ctx.Queue(), ctx.Queue()
    rcv = None
    if kind != "fmt-only":
        rcv = ctx.Process(target=receiver_main, args=(port_q, total, done_q))
        rcv.start()
        port = port_q.get(timeout=30)
    listener = None
    pipeline = None
    if kind.startswith("mplog"):
        opts: dict[str, str] = {}
        if kind == "mplog-spool":  # every record through the disk spool (spool_mode="all")
            opts = {"spool_dir": tempfile.mkdtemp(prefix="mplog-bench-spool-"), "spool_mode": "all"}
        pipeline = mplog.start([mplog.SocketHandler("127.0.0.1", port, **opts)], install=False)
        arg: object = pipeline.address
        listener_pid = pipeline.pid
    elif kind == "cookbook":
        arg = ctx.Queue(-1)
        listener = ctx.Process(target=cookbook_listener, args=(arg, port))
        listener.start()
        listener_pid = listener.pid
    else:
        arg = port if kind == "per-proc" else None
        listener_pid = None
    go = ctx.Event()
    workers = [ctx.Process(target=worker, args=(kind, arg, per, go, out)) for _ in range(nworkers)]
    for w in workers:
        w.start()
    time.sleep(1.0)  # let every worker import and configure before the clock starts
    procs = [psutil.Process(w.pid) for w in workers]
    extra = [psutil.Process(p) for p in (listener_pid, rcv.pid if rcv else None) if p]
    base = {p.pid: sum(p.cpu_times()[:2]) for p in extra}
    peak = Peak(listener_pid) if listener_pid else None
    if peak:
        peak.start()
    t0 = time.monotonic()
    go.set()
    results = [out.get(timeout=600) for _ in workers]
    t_workers = time.monotonic()
    t_end = done_q.get(timeout=600) if rcv else t_workers
    other_cpu = sum(sum(p.cpu_times()[:2]) - base[p.pid] for p in extra)
    for w in workers:
        w.join(60)
    if peak:
        peak.stop.set()
        peak.join()
    if pipeline is not None:
        pipeline.stop()
        if opts:
            shutil.rmtree(opts["spool_dir"], ignore_errors=True)
    if listener is not None:
        arg.put(None)  # type: ignore[attr-defined]
        listener.join(60)
    if rcv is not None:
        rcv.join(60)
    _ = procs
    worker_cpu = sum(c for c, _ in results)
    return {
        "records": total,
        "rate": total / (t_end - t0),
        "worker_us_per_call": worker_cpu / total * 1e6,
        "total_us_per_record": (worker_cpu + other_cpu) / total * 1e6,
        "listener_rss_mib": (peak.peak / 2**20) if peak else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer records (a smoke run)")
    ap.add_argument("--records", type=int, default=0, help="records per run (default 60000; quick 8000)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--sizes", default="1,4,16", help="worker counts (default 1,4,16)")
    ap.add_argument("--spool", action="store_true",
                    help='also run "mplog-spool": mplog with spool_mode="all" (every record on disk)')
    a = ap.parse_args()
    total = a.records or (8000 if a.quick else 60000)
    kinds = ["mplog", "cookbook", "per-proc", "fmt-only"] + (["mplog-spool"] if a.spool else [])
    table: dict[str, dict[int, dict[str, float]]] = {k: {} for k in kinds}
    print(f"{total} records per run; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
    print(f"{'setup':<10} {'N':>3} {'records/s':>11} {'worker us/call':>15} {'total us/rec':>13} {'listener RSS':>13}")
    sizes = [int(x) for x in a.sizes.split(",")]
    for n in sizes:
        for kind in kinds:
            r = run(kind, n, total)
            table[kind][n] = r
            rss = f"{r['listener_rss_mib']:.1f} MiB" if r["listener_rss_mib"] else "-"
            rate = f"{r['rate']:,.0f}" if kind != "fmt-only" else "-"
            print(f"{kind:<11} {n:>3} {rate:>11} {r['worker_us_per_call']:>15.2f} {r['total_us_per_record']:>13.2f} {rss:>13}", flush=True)
    print("\nratios (same run)")
    for n in sizes:
        m, c, p, f = (table[k][n] for k in kinds[:4])
        print(f"N={n:>2}: mplog/cookbook throughput {m['rate'] / c['rate']:.2f}x (goal >= 2 at N=4,16); "
              f"mplog/per-proc {m['rate'] / p['rate']:.2f}x; "
              f"worker CPU mplog/fmt-only {m['worker_us_per_call'] / f['worker_us_per_call']:.2f}x (goal <= 1.2)")
        if a.spool:
            sp = table["mplog-spool"][n]
            print(f"      mplog-spool/mplog throughput {sp['rate'] / m['rate']:.2f}x; "
                  f"total CPU {sp['total_us_per_record'] / m['total_us_per_record']:.2f}x; "
                  f"listener RSS {sp['listener_rss_mib']:.1f} vs {m['listener_rss_mib']:.1f} MiB")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(table, fh, indent=2)


if __name__ == "__main__":
    main()
