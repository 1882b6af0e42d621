"""``mplog bench``: mplog against the stdlib patterns, side by side, on this machine.

Part 1, the pipeline (issue 12). For N = 4, 16 and 64 worker processes (``--quick``: 4),
four setups deliver the same records, ``logger.info("request %d handled in %.3f ms", i, x)``:

  mplog      workers: ``mplog.worker_init`` -> one listener process -> one ``mplog.SocketHandler``
  cookbook   workers: stdlib ``QueueHandler`` on a ``multiprocessing.Queue`` -> a listener
             process running ``QueueListener`` -> one stdlib ``SocketHandler``
  per-proc   a stdlib ``SocketHandler`` in every worker (N connections)
  fmt-only   a handler that formats each record and drops it: the floor of a worker's cost

The receiver is its own process: it reads the stdlib wire (4-byte length + pickle) and
counts frames without unpickling, so it costs every setup the same, and little. Workers
are forked from a forkserver (the default start method from Python 3.14); each logs one
warm-up record, and once every warm-up record is at the receiver (every connection is up,
mplog's probation of a new connection's first record is over) they start on one event, so
start-up is not timed. The setups run once per round (3 rounds by default, the order
rotated each round); the report shows medians, and each ratio is the median of the
rounds' own ratios.

Part 2, the collector (``--no-collector`` skips it; ``--collector-only`` runs only it):
pre-built frames of the same record blasted over one TCP connection at ``mplog serve``
(mplog wire with acks and de-duplication, HMAC off and on; the stdlib wire) and at rsyslog
``imtcp`` -> ``omfile`` when rsyslogd is installed; the clock stops when the output file
holds every line; median of 3 runs, interleaved (run k of every receiver, then run k + 1).

Rules this module keeps:

- Measurement only: it uses mplog's public API (and, to pre-build frames, the wire
  encoders); nothing here changes how mplog runs.
- Everything it starts it ends: every setup runs under a deadline, a setup that fails or
  times out is reported as ``failed: reason`` and its processes are killed; daemons get
  ``PR_SET_PDEATHSIG`` and helper processes wait on the bench process's sentinel (their
  OS parent is the forkserver), so even a killed ``mplog bench`` leaves nothing running.
- Progress goes to stderr (one rewritten line on a terminal, plain lines otherwise); the
  report is markdown, written to ``--out`` between two markers (the rest of the file is
  kept) or to stdout.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import inspect
import json
import logging
import logging.handlers
import multiprocessing as mp
import os
import pathlib
import platform
import queue
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import psutil

import mplog
from mplog import _poll

__all__ = [
    "BEGIN_MARKER",
    "END_MARKER",
    "BenchConfig",
    "UsageError",
    "check_usage",
    "main",
]

FMT = "%(asctime)s %(levelname)s %(name)s %(message)s"
MESSAGE = "request %d handled in %.3f ms"
SETUPS = ("mplog", "cookbook", "per-proc", "fmt-only")
SIZES = (4, 16, 64)  # issue 12
QUICK_SIZES = (4,)
RECORDS = 120_000  # per run, all workers together
QUICK_RECORDS_PER_WORKER = 2_000
COLLECTOR_RECORDS = 300_000  # issue 12
QUICK_COLLECTOR_RECORDS = 20_000
COLLECTOR_RUNS = 3
#: Rounds of the pipeline part: every setup once per round, the order rotated each round;
#: the tables show medians, and each ratio is the median of the rounds' own ratios (a
#: shared machine's slow spells then hit both sides of a ratio, or one round of three).
ROUNDS = 3
#: The listener's memory goal (issue 12): this much plus the handler's configured buffer.
RSS_GOAL_MIB = 30
BEGIN_MARKER = (
    "<!-- mplog bench: begin. Written by `mplog bench --out`; everything down to the end "
    "marker is replaced at the next run. -->"
)
END_MARKER = "<!-- mplog bench: end -->"
TIMES = "\N{MULTIPLICATION SIGN}"
PLOT_HINT = "--plot needs matplotlib: pip install 'mplog[plot]'"
_FRAME_LEN = struct.Struct(">L")
_LIBC = ctypes.CDLL(None, use_errno=True)  # prctl, clock_getcpuclockid (Linux)


class UsageError(Exception):
    """A user mistake on the command line: one line, exit status 2."""


@dataclass(frozen=True)
class BenchConfig:
    """What one ``mplog bench`` run measures (built from the command line)."""

    sizes: tuple[int, ...] = SIZES
    records: int = RECORDS
    pipeline: bool = True
    collector: bool = True
    collector_records: int = COLLECTOR_RECORDS
    collector_runs: int = COLLECTOR_RUNS
    rounds: int = ROUNDS
    spool: bool = False
    timeout: float = 0.0  # per setup; 0: derived from the number of records
    out: str | None = None
    plot: str | None = None
    json_out: str | None = None
    command: str = "mplog bench"

    @staticmethod
    def make(
        *, quick: bool = False, sizes: Sequence[int] | None = None, records: int | None = None,
        collector: bool = True, spool: bool = False, timeout: float | None = None,
        out: str | None = None, plot: str | None = None, json_out: str | None = None,
        command: str = "mplog bench", pipeline: bool = True, rounds: int | None = None,
    ) -> BenchConfig:
        """The configuration for these options (``quick``: 4 workers, few records, 1 round
        and 1 collector run; ``pipeline=False``: the collector part only; ``rounds``:
        pipeline rounds and collector runs both)."""
        chosen = tuple(sizes) if sizes else (QUICK_SIZES if quick else SIZES)
        if records is None:
            records = QUICK_RECORDS_PER_WORKER * max(chosen) if quick else RECORDS
        return BenchConfig(
            sizes=chosen, records=records, pipeline=pipeline, collector=collector,
            collector_records=QUICK_COLLECTOR_RECORDS if quick else COLLECTOR_RECORDS,
            collector_runs=rounds or (1 if quick else COLLECTOR_RUNS),
            rounds=rounds or (1 if quick else ROUNDS), spool=spool,
            timeout=timeout or 0.0, out=out, plot=plot, json_out=json_out, command=command,
        )

    def setup_timeout(self, records: int) -> float:
        # Generous: 1,000 records/s is far below any setup's rate on a loaded 2-core box.
        return self.timeout or 60.0 + records / 1000.0


def check_usage(cfg: BenchConfig) -> None:
    """Fail fast, before anything runs, on what would only fail at the end."""
    if not cfg.pipeline and not cfg.collector:
        raise UsageError("--collector-only and --no-collector leave nothing to run")
    if not cfg.timeout >= 0:  # also refuses nan
        raise UsageError(f"--timeout must be a positive number of seconds, got {cfg.timeout}")
    for size in cfg.sizes:
        if not 1 <= size <= 1024:
            raise UsageError(f"worker counts must be 1-1024, got {size}")
    if not 1 <= cfg.rounds <= 20:
        raise UsageError(f"--rounds must be 1-20, got {cfg.rounds}")
    if cfg.records < max(cfg.sizes):
        raise UsageError(f"--records {cfg.records} is fewer than one per worker")
    for opt, path in (("--out", cfg.out), ("--plot", cfg.plot), ("--json", cfg.json_out)):
        if path is None:
            continue
        parent = pathlib.Path(path).resolve().parent
        if not parent.is_dir():
            raise UsageError(f"{opt} {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"{opt} {path}: directory {parent} is not writable")
        if pathlib.Path(path).is_dir():
            raise UsageError(f"{opt} {path} is a directory")
    if cfg.out is not None and pathlib.Path(cfg.out).exists():
        text = pathlib.Path(cfg.out).read_text(encoding="utf-8", errors="replace")
        if (BEGIN_MARKER in text) != (END_MARKER in text):
            raise UsageError(f"--out {cfg.out} has only one of the two mplog bench markers")
    if cfg.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(PLOT_HINT) from None


# -- progress ---------------------------------------------------------------------------------


class Progress:
    """Progress on *stream*: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self, stream: IO[str], steps: int) -> None:
        self.stream = stream
        self.steps = steps
        self.step = 0
        self.label = ""
        self.tty = stream.isatty()
        self._last = 0.0

    def begin(self, label: str) -> None:
        self.step += 1
        self.label = label
        self._last = 0.0
        if self.tty:
            self.update(0.0)
        else:
            self._line(f"[{self.step}/{self.steps}] {label} ...")

    def update(self, fraction: float, note: str = "") -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and fraction < 1.0:
            return
        self._last = now
        fraction = min(max(fraction, 0.0), 1.0)
        bar = "#" * int(fraction * 20)
        text = f"[{self.step}/{self.steps}] {self.label} [{bar:<20}] {fraction:4.0%} {note}"
        self.stream.write("\r\x1b[K" + text[:200])
        self.stream.flush()

    def end(self, summary: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self._line(f"[{self.step}/{self.steps}] {self.label}: {summary}")

    def note(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        self._line(text)

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


# -- part 1: helper processes (module level: the forkserver imports them by name) --------------


def _exit_with_bench() -> None:
    """End this helper process as soon as the bench process is gone (even SIGKILLed).

    Its OS parent is the forkserver, which lives as long as any of its children does, so
    the parent's pid says nothing; the sentinel of ``multiprocessing.parent_process()``
    is the bench's own. A daemon thread blocked on it costs no CPU while it waits.
    """
    from multiprocessing.connection import wait

    # Ctrl-C reaches the whole process group: the bench itself ends its helpers, quietly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    bench = mp.parent_process()
    if bench is None:
        return
    sentinel = bench.sentinel

    def watch() -> None:
        wait([sentinel])
        os._exit(3)

    threading.Thread(target=watch, name="mplog-bench-watch", daemon=True).start()


def _receiver_main(port_q: Any, expected: int, done_q: Any, counter: Any, release: Any) -> None:
    """Count stdlib-wire frames on every connection; report once *expected* arrived, then
    stay until *release* is set (the bench reads this process's CPU time first)."""
    _exit_with_bench()
    srv = socket.create_server(("127.0.0.1", 0))
    port_q.put(srv.getsockname()[1])
    count = 0
    connections = 0
    lock = threading.Lock()
    finished = threading.Event()

    def read(conn: socket.socket) -> None:
        nonlocal count
        buf = b""
        with conn:
            while data := conn.recv(1 << 20):
                buf += data
                n = pos = 0
                while len(buf) - pos >= 4:
                    (ln,) = _FRAME_LEN.unpack_from(buf, pos)
                    if len(buf) - pos - 4 < ln:
                        break
                    pos += 4 + ln
                    n += 1
                buf = buf[pos:]
                with lock:
                    count += n
                    counter.value = count
                    if count >= expected and not finished.is_set():
                        finished.set()
                        done_q.put((time.monotonic(), connections))

    srv.settimeout(0.2)
    while not finished.is_set():
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        with lock:
            connections += 1
        threading.Thread(target=read, args=(conn,), daemon=True).start()
    srv.close()
    release.wait()


class _FormatOnly(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


def _worker(kind: str, arg: Any, n: int, *, wait_s: float, ready: Any, go: Any, out: Any) -> None:
    _exit_with_bench()
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    if kind.startswith("mplog"):
        try:
            mplog.worker_init(str(arg), level=logging.INFO)
        except mplog.ConfigError:
            return  # the setup was given up (its deadline) before this worker started
    elif kind == "cookbook":
        root.addHandler(logging.handlers.QueueHandler(arg))
    elif kind == "per-proc":
        root.addHandler(logging.handlers.SocketHandler("127.0.0.1", int(arg)))
    else:
        h = _FormatOnly()
        h.setFormatter(logging.Formatter(FMT))
        root.addHandler(h)
    log = logging.getLogger("bench")
    # Before the clock: one record, so every connection on its way is up (a lazy connect,
    # and mplog's probation of a new connection's first record, are start-up, untimed).
    log.info(MESSAGE, -1, 0.0)
    ready.put(os.getpid())
    if not go.wait(wait_s):  # the bench gave up on this setup
        os._exit(3)
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    t = time.process_time()
    for i in range(n):
        log.info(MESSAGE, i, (i % 1000) * 0.125)
    loop_cpu = time.process_time() - t
    loop_sys = resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0
    for h in root.handlers:
        h.flush()
    if kind == "cookbook":
        arg.close()
        arg.join_thread()  # the feeder thread's work is the cookbook's cost too
    out.put((loop_cpu, time.process_time() - t, n, loop_sys))


def _cookbook_listener(q: Any, port: int) -> None:
    _exit_with_bench()
    h = logging.handlers.SocketHandler("127.0.0.1", port)
    ql = logging.handlers.QueueListener(q, h)
    ql.start()
    thread = ql._thread  # ends at the sentinel
    assert thread is not None
    thread.join()
    h.close()


# -- part 1: one setup -------------------------------------------------------------------------


@dataclass
class Result:
    """One setup at one N: the figures, or why it failed."""

    setup: str
    workers: int
    records: int = 0
    rate: float | None = None
    worker_us: float | None = None
    #: The part of worker_us spent in the kernel (system calls: mplog's and the per-process
    #: handler's writes, the cookbook's pipe).
    worker_sys_us: float | None = None
    total_us: float | None = None
    listener_us: float | None = None
    rss_mib: float | None = None
    connections: int | None = None
    error: str | None = None
    round: int = 0

    @property
    def worker_user_us(self) -> float | None:
        """worker_us without its system time: the worker's own code."""
        if self.worker_us is None or self.worker_sys_us is None:
            return None
        return self.worker_us - self.worker_sys_us

    def summary(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        rate = f"{self.rate:,.0f} rec/s, " if self.rate else ""
        return (f"{rate}worker {self.worker_us:.2f} µs/call ({self.worker_sys_us or 0:.2f} "
                f"system), total {self.total_us:.2f} µs/rec")


class _SetupFailed(Exception):
    pass


def _cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread, ended ones too) of process *pid*.

    Read from the process's CPU clock (nanoseconds); psutil's figure comes in clock ticks
    (10 ms), too coarse for a listener that spends 0.1 s on a quick run.
    """
    clock = ctypes.c_int()
    if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) == 0:
        with contextlib.suppress(OSError):
            return time.clock_gettime(clock.value)
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


class _Owned:
    """The processes and pipeline one setup started; :meth:`close` ends every one."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, Any]] = []
        self.pipeline: mplog.Pipeline | None = None
        self.dirs: list[str] = []
        # The queues and events the processes were given: a child started by the
        # forkserver unpickles them after start() returns, so they must outlive it.
        self.keep: list[Any] = []

    def close(self) -> list[str]:
        """End everything; what did not go as it should, one phrase each."""
        problems = []
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except Exception as exc:  # reported in the setup's row
                problems.append(f"stopping the pipeline: {type(exc).__name__}: {exc}")
            self.pipeline = None
        for _, p in self.procs:
            if p.is_alive():
                p.kill()
        for name, p in self.procs:
            p.join(10)
            if p.exitcode is None:
                problems.append(f"{name} (pid {p.pid}) did not end")
        self.procs.clear()
        self.keep.clear()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        return problems


def _get(q: Any, deadline: float, alive: Callable[[], None], what: str) -> Any:
    """The next item of *q*, checking *alive* and the deadline while waiting."""
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            alive()
            if time.monotonic() > deadline:
                raise _SetupFailed(f"timed out waiting for {what}") from None


def _run_setup(ctx: Any, kind: str, nworkers: int, *, total: int, timeout: float,
               progress: Progress) -> Result:
    per = total // nworkers
    total = per * nworkers
    res = Result(kind, nworkers, total)
    owned = _Owned()
    start = time.monotonic()
    deadline = start + timeout
    try:
        _measure(ctx, kind, nworkers, per=per, timeout=timeout, deadline=deadline,
                 owned=owned, progress=progress, res=res)
    except _SetupFailed as exc:
        res.error = f"{exc} (after {time.monotonic() - start:.1f} s)"
    except Exception as exc:  # whatever broke this setup shows in its row; the rest runs
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        problems = owned.close()
    if problems:
        res.error = "; ".join(([res.error] if res.error else []) + problems)
    return res


def _measure(ctx: Any, kind: str, nworkers: int, *, per: int, timeout: float, deadline: float,
             owned: _Owned, progress: Progress, res: Result) -> None:
    total = per * nworkers
    port_q, done_q, out, ready = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue()
    counter = ctx.RawValue("q", 0)
    go, release = ctx.Event(), ctx.Event()
    owned.keep += [port_q, done_q, out, ready, counter, go, release]
    rcv = None

    def alive() -> None:
        for name, p in owned.procs:
            if p.exitcode not in (None, 0):
                raise _SetupFailed(f"{name} exited with status {p.exitcode}")

    if kind != "fmt-only":
        # Every worker's warm-up record (see _worker), then the timed ones.
        rcv = ctx.Process(target=_receiver_main,
                          args=(port_q, total + nworkers, done_q, counter, release),
                          daemon=True)
        rcv.start()
        owned.procs.append(("the receiver", rcv))
        port = _get(port_q, deadline, alive, "the receiver's port")
    listener_pid = None
    arg: Any = None
    if kind.startswith("mplog"):
        opts: dict[str, Any] = {}
        if kind == "mplog-spool":  # every record through the disk spool
            spool = tempfile.mkdtemp(prefix="mplog-bench-spool-")
            owned.dirs.append(spool)
            opts = {"spool_dir": spool, "spool_mode": "all"}
        owned.pipeline = mplog.start([mplog.SocketHandler("127.0.0.1", port, **opts)],
                                     install=False)
        arg = owned.pipeline.address
        listener_pid = owned.pipeline.pid
    elif kind == "cookbook":
        arg = ctx.Queue(-1)
        owned.keep.append(arg)
        listener = ctx.Process(target=_cookbook_listener, args=(arg, port), daemon=True)
        listener.start()
        owned.procs.append(("the cookbook's listener", listener))
        listener_pid = listener.pid
    elif kind == "per-proc":
        arg = port
    workers = [ctx.Process(target=_worker, args=(kind, arg, per),
                           # wait_s: a safety net only; the bench's own deadline comes first
                           kwargs={"wait_s": timeout + 30, "ready": ready, "go": go, "out": out})
               for _ in range(nworkers)]
    for w in workers:
        w.start()
        owned.procs.append(("a worker", w))
    for k in range(nworkers):
        _get(ready, deadline, alive, f"workers to start ({k} of {nworkers} ready)")
        progress.update(0.0, f"{k + 1}/{nworkers} workers ready")
    while rcv is not None and counter.value < nworkers:  # the warm-up records: not timed
        alive()
        if time.monotonic() > deadline:
            raise _SetupFailed(f"timed out: {counter.value} of {nworkers} warm-up records "
                               "at the receiver")
        time.sleep(0.005)  # polling a shared counter: nothing to block on
    extra = [p for p in (listener_pid, rcv.pid if rcv else None) if p]
    lst = psutil.Process(listener_pid) if listener_pid else None
    base = {p: _cpu(p) for p in extra}
    peak = lst.memory_info().rss if lst else 0
    t0 = time.monotonic()
    go.set()
    results: list[tuple[float, float, int, float]] = []
    t_end: float | None = None
    connections = 0
    while len(results) < nworkers or (rcv is not None and t_end is None):
        if lst is not None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, lst.memory_info().rss)
        with contextlib.suppress(queue.Empty):  # no more results yet: sample again
            while len(results) < nworkers:
                results.append(out.get_nowait())
        if rcv is not None and t_end is None:
            with contextlib.suppress(queue.Empty):
                t_end, connections = done_q.get(timeout=0.02)
            done = (counter.value - nworkers) / total
        else:
            time.sleep(0.02)  # polling the workers' results: nothing to block on
            done = len(results) / nworkers
        progress.update(done, f"{counter.value - nworkers:,} of {total:,} records" if rcv else
                        f"{len(results)} of {nworkers} workers done")
        alive()
        if time.monotonic() > deadline:
            got = f"{counter.value - nworkers:,} of {total:,} records at the receiver" if rcv else (
                f"{len(results)} of {nworkers} workers done")
            raise _SetupFailed(f"timed out after {timeout:g} s ({got})")
    t_stop = t_end if t_end is not None else time.monotonic()
    other = sum(_cpu(p) - base[p] for p in extra)
    listener_cpu = (_cpu(lst.pid) - base[lst.pid]) if lst is not None else None
    release.set()
    loop_cpu = sum(r[0] for r in results)
    worker_cpu = sum(r[1] for r in results)
    loop_sys = sum(r[3] for r in results)
    for w in workers:
        w.join(30)
    if kind == "cookbook":  # the sentinel ends its QueueListener (killed only on failure)
        arg.put(None)
        listener.join(30)
    if rcv is not None:
        rcv.join(30)
    res.rate = total / (t_stop - t0) if rcv is not None else None
    res.worker_us = loop_cpu / total * 1e6
    res.worker_sys_us = loop_sys / total * 1e6
    res.total_us = (worker_cpu + other) / total * 1e6
    res.listener_us = listener_cpu / total * 1e6 if listener_cpu is not None else None
    res.rss_mib = peak / 2**20 if lst is not None else None
    res.connections = connections if rcv is not None else 0


def run_pipeline(cfg: BenchConfig, progress: Progress) -> list[Result]:
    """Part 1: every setup at every N, each once per round (N outer, so each N is compared
    in one go; the setups' order rotated each round). One Result per setup, N and round."""
    ctx = mp.get_context("forkserver")
    # The forkserver imports this module once; each worker is then a cheap fork of it.
    ctx.set_forkserver_preload(["mplog._bench"])
    out = []
    kinds = setups(cfg)
    for n in cfg.sizes:
        for rnd in range(cfg.rounds):
            for kind in kinds[rnd % len(kinds):] + kinds[: rnd % len(kinds)]:
                per = cfg.records // n
                of = f", round {rnd + 1}/{cfg.rounds}" if cfg.rounds > 1 else ""
                progress.begin(f"{kind}, N={n}, {per * n:,} records{of}")
                r = _run_setup(ctx, kind, n, total=cfg.records,
                               timeout=cfg.setup_timeout(cfg.records), progress=progress)
                r.round = rnd
                progress.end(r.summary())
                out.append(r)
    return out


def combine(rounds: list[Result], cfg: BenchConfig) -> list[Result]:
    """One Result per setup and N: the median of its rounds (peak RSS: the largest), or the
    first failure if any round failed (a failure is shown, never averaged away)."""
    out = []
    for n in cfg.sizes:
        for kind in setups(cfg):
            mine = [r for r in rounds if r.setup == kind and r.workers == n]
            if not mine:
                continue
            failed = [r for r in mine if r.error]
            if failed:
                first = failed[0]
                note = f" (round {first.round + 1})" if cfg.rounds > 1 else ""
                out.append(Result(kind, n, first.records, error=f"{first.error}{note}"))
                continue

            def med(attr: str, rs: list[Result] = mine) -> float | None:
                vals = [getattr(r, attr) for r in rs if getattr(r, attr) is not None]
                return statistics.median(vals) if vals else None

            rss = [r.rss_mib for r in mine if r.rss_mib is not None]
            conns = [r.connections for r in mine if r.connections is not None]
            out.append(Result(
                kind, n, mine[0].records, rate=med("rate"), worker_us=med("worker_us"),
                worker_sys_us=med("worker_sys_us"),
                total_us=med("total_us"), listener_us=med("listener_us"),
                rss_mib=max(rss) if rss else None, connections=max(conns) if conns else None,
            ))
    return out


def setups(cfg: BenchConfig) -> tuple[str, ...]:
    return SETUPS + (("mplog-spool",) if cfg.spool else ())


# -- part 2: the collector against rsyslog -----------------------------------------------------


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the daemon gets SIGKILL when this process dies, so a killed bench
    leaks none. libc is looked up here, in the parent: the child only makes one call."""
    prctl = _LIBC.prctl

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return preexec


def _sample_records(n: int) -> Iterator[logging.LogRecord]:
    log = logging.getLogger("bench")
    for i in range(n):
        yield log.makeRecord("bench", logging.INFO, "/srv/app/handlers.py", 42, MESSAGE,
                             (i, (i % 1000) * 0.125), None, "handle")


def _mplog_payloads(n: int) -> list[bytes]:
    """The records' mplog-wire payloads (seq || JSON): the costly part, made once."""
    from ._record import prepare_dict
    from ._wires.mplog import record_payload

    return [record_payload(i + 1, prepare_dict(r)) for i, r in enumerate(_sample_records(n))]


def _mplog_session(key: bytes | None) -> Any:
    """A fresh client session (a new sender id; its own nonce where the wire has one),
    made by the wire itself, so the bench speaks whatever version mplog speaks."""
    from ._wires.mplog import MplogWire

    wire = MplogWire(hmac_key=key, sender_id=f"bench-{os.getpid()}-{time.monotonic_ns()}")
    return wire.new_session()


def _pickle_frames(n: int) -> list[bytes]:
    h = logging.handlers.SocketHandler("127.0.0.1", 0)  # makePickle only; never connects
    try:
        return [h.makePickle(r) for r in _sample_records(n)]
    finally:
        h.close()


def _syslog_frames(n: int) -> list[bytes]:
    """RFC 5424 messages whose MSG is the record's JSON object (what the mplog wire
    carries), so that rsyslog gets as many bytes per record as mplog serve does."""
    from ._record import prepare_dict
    from ._wires.mplog import record_payload
    from ._wires.syslog import SyslogWire

    wire = SyslogWire(app_name="bench", hostname="benchhost", bom=False)
    frames = []
    for r in _sample_records(n):
        d = prepare_dict(r)
        body = record_payload(0, d)[8:].decode("ascii")  # the JSON, without the seq
        frames.append(wire.encode({**d, "msg": body}))
    return frames


class _LineCounter:
    """Lines in a growing file, read incrementally (the file is opened once it exists)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.lines = 0
        self._fd = -1

    def poll(self) -> int:
        if self._fd < 0:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return 0
        while data := os.read(self._fd, 1 << 20):
            self.lines += data.count(b"\n")
        return self.lines

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Daemon:
    """A receiver process (``mplog serve`` or rsyslogd) with its port and output file."""

    def __init__(self, argv: list[str], workdir: pathlib.Path, out: pathlib.Path,
                 deadline: float, port_file: pathlib.Path | None = None) -> None:
        self.out = out
        self.port = 0
        self.log = workdir / "daemon.log"
        env = dict(os.environ)
        env.pop("MPLOG_HMAC_KEY", None)  # "HMAC off" must mean off
        # `python -m mplog serve` runs this very mplog, installed or not.
        root = str(pathlib.Path(mplog.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, cwd=workdir, stdin=subprocess.DEVNULL, env=env,
                stdout=subprocess.PIPE if port_file is None else log, stderr=log,
                # The one call it makes is async-signal-safe (see _die_with_parent).
                preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )
        try:
            self.port = self._port(port_file, deadline)
        except BaseException:
            self.stop()
            raise

    def _port(self, port_file: pathlib.Path | None, deadline: float) -> int:
        if port_file is None:  # mplog serve: "listening on HOST:PORT", first line on stdout
            assert self.proc.stdout is not None
            fd = self.proc.stdout.fileno()
            line = b""
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not _poll.readable([fd], left):
                    raise _SetupFailed("mplog serve did not say where it listens")
                chunk = os.read(fd, 1)
                if not chunk:
                    raise _SetupFailed(f"mplog serve exited: {self.tail()}")
                line += chunk
            text = line.decode(errors="replace").strip()
            if not text.startswith("listening on "):
                raise _SetupFailed(f"mplog serve said {text!r}")
            return int(text.rsplit(":", 1)[1])
        while True:  # rsyslogd writes the port it got to listenPortFileName
            if self.proc.poll() is not None:
                raise _SetupFailed(f"rsyslogd exited with status {self.proc.returncode}: "
                                   f"{self.tail()}")
            with contextlib.suppress(FileNotFoundError, ValueError):
                port = int(port_file.read_text().strip())
                with contextlib.suppress(OSError), \
                        socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return port
            if time.monotonic() > deadline:
                raise _SetupFailed("rsyslogd did not start listening")
            time.sleep(0.01)  # polling rsyslog's port file: it gives no other signal

    def tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError as exc:
            return f"(no log: {exc})"
        return text[-1][:200] if text else "(nothing on stderr)"

    def cpu(self) -> float:
        return _cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


_RSYSLOG_CONF = """\
global(workDirectory="{d}/work" maxMessageSize="64k" net.enableDNS="off"
       parser.escapeControlCharactersOnReceive="off" processInternalMessages="on")
main_queue(queue.type="FixedArray" queue.size="100000" queue.timeoutEnqueue="600000")
module(load="imtcp" maxSessions="16")
template(name="jsonl" type="list" option.jsonf="on") {{
  property(outname="pri"      name="pri"             format="jsonf")
  property(outname="hostname" name="hostname"        format="jsonf")
  property(outname="app"      name="app-name"        format="jsonf")
  property(outname="procid"   name="procid"          format="jsonf")
  property(outname="msgid"    name="msgid"           format="jsonf")
  property(outname="sd"       name="structured-data" format="jsonf")
  property(outname="ts"       name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="msg"      name="msg"             format="jsonf")
}}
ruleset(name="recv") {{
  action(type="omfile" file="{d}/out.jsonl" template="jsonl")
}}
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{d}/port" ruleset="recv"
      supportOctetCountedFraming="on" ratelimit.interval="0")
action(type="omfile" file="{d}/internal.log")
"""


def rsyslogd_path() -> str | None:
    """rsyslogd, if installed (``/usr/sbin`` is not on every user's PATH)."""
    found = shutil.which("rsyslogd")
    if found:
        return found
    return "/usr/sbin/rsyslogd" if os.access("/usr/sbin/rsyslogd", os.X_OK) else None


def _rsyslog_version(path: str) -> str:
    try:
        out = subprocess.run([path, "-v"], check=False, capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"rsyslogd (version unknown: {exc})"
    first = out.splitlines()[0].split() if out else []
    return f"rsyslog {first[1]}" if len(first) > 1 else "rsyslog"


@dataclass
class CollectorResult:
    """One receiver and wire: per-run figures, or why it failed."""

    receiver: str
    wire: str
    kind: str = ""
    frame_bytes: float = 0.0
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        if self.error:
            return f"failed: {self.error}"
        return f"{statistics.median(self.rates):,.0f} rec/s (median of {len(self.rates)})"


def _blast(sock: socket.socket, frames: list[bytes], *, session: Any, deadline: float,
           lines: _LineCounter, progress: Progress) -> None:
    """Send every frame; with a *session* (mplog wire) keep to its window and read acks."""
    total = len(frames)
    if session is None:
        chunk = 512
        for i in range(0, len(frames), chunk):
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            sock.sendall(b"".join(frames[i : i + chunk]))
            if i % (chunk * 16) == 0:
                progress.update(lines.poll() / total)
        return
    window = session.window
    sent = acked = 0
    while acked < len(frames):
        left = deadline - time.monotonic()
        if left <= 0:
            raise _SetupFailed(f"timed out: {acked:,} of {len(frames):,} acknowledged")
        sock.settimeout(left)
        if sent < len(frames) and sent - acked < window:
            k = min(window - (sent - acked), len(frames) - sent)
            sock.sendall(b"".join(frames[sent : sent + k]))
            sent += k
        acked += session.receive(sock.recv(1 << 16))  # ProtocolError if it closes
        progress.update(acked / total)


def _collector_run(kind: str, made: _Frames, *, workdir: pathlib.Path, timeout: float,
                   progress: Progress) -> tuple[float, float, float]:
    """One run: (records/s, receiver CPU µs per record, mean frame size)."""
    deadline = time.monotonic() + timeout
    session = made.session(workdir)
    out = workdir / "out.jsonl"
    if kind == "rsyslog":
        rsyslogd = rsyslogd_path()
        assert rsyslogd is not None
        (workdir / "work").mkdir()
        conf = workdir / "rsyslog.conf"
        conf.write_text(_RSYSLOG_CONF.format(d=workdir))
        argv = [rsyslogd, "-n", "-f", str(conf), "-i", str(workdir / "rsyslogd.pid")]
        daemon = _Daemon(argv, workdir, out, deadline, port_file=workdir / "port")
    else:
        argv = [sys.executable, "-m", "mplog", "serve", "--port", "0", "--output", str(out)]
        if kind == "serve-hmac":  # the key file made.session() wrote
            argv += ["--hmac-key-file", str(workdir / "key")]
        daemon = _Daemon(argv, workdir, out, deadline)
    lines = _LineCounter(out)
    total = made.count
    try:
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if session is not None:  # handshake, then the frames: all before the clock
                sock.sendall(session.handshake())
                while not session.ready:
                    sock.settimeout(max(deadline - time.monotonic(), 0.01))
                    session.receive(sock.recv(1 << 16))
            frames = made.frames(session)
            cpu0 = daemon.cpu()
            t0 = time.monotonic()
            _blast(sock, frames, session=session, deadline=deadline, lines=lines,
                   progress=progress)
            while lines.poll() < total:
                if daemon.proc.poll() is not None:
                    raise _SetupFailed(f"the receiver exited: {daemon.tail()}")
                if time.monotonic() > deadline:
                    raise _SetupFailed(f"timed out: {lines.lines:,} of {total:,} lines written")
                progress.update(lines.lines / total)
                time.sleep(0.001)  # polling the output file: it is the finish line
            elapsed = time.monotonic() - t0
            cpu = daemon.cpu() - cpu0
        return total / elapsed, cpu / total * 1e6, sum(map(len, frames)) / total
    finally:
        lines.close()
        daemon.stop()


COLLECTOR_SETUPS = (
    ("rsyslog", "rsyslog imtcp -> omfile", "syslog (RFC 5424, octet counting), JSON in MSG"),
    ("serve", "mplog serve", "mplog (acks, de-duplication), HMAC off"),
    ("serve-hmac", "mplog serve", "mplog (acks, de-duplication), HMAC on"),
    ("serve-pickle", "mplog serve", "stdlib SocketHandler (pickle)"),
)


def run_collector(cfg: BenchConfig, progress: Progress) -> tuple[list[CollectorResult], str]:
    """Part 2: (results, a note on what was skipped)."""
    rsyslogd = rsyslogd_path()
    note = "" if rsyslogd else "rsyslog not measured: rsyslogd is not installed."
    results: list[CollectorResult] = []
    n = cfg.collector_records
    timeout = cfg.setup_timeout(n)
    for kind, name, wire in COLLECTOR_SETUPS:
        receiver = name
        if kind == "rsyslog":
            if rsyslogd is None:
                continue
            receiver = f"{_rsyslog_version(rsyslogd)} imtcp -> omfile"
        results.append(CollectorResult(receiver, wire, kind))
    made: dict[str, _Frames] = {}
    # Interleaved: run k of every receiver, then run k + 1, so a slow spell of a shared
    # machine falls on every receiver's run k alike, and ratios are taken per run.
    for run in range(cfg.collector_runs):
        for res in results:
            if res.error:
                continue  # it failed in an earlier run: its row says so
            progress.begin(f"{res.receiver}, {res.wire}, {n:,} records, "
                           f"run {run + 1}/{cfg.collector_runs}")
            try:
                with tempfile.TemporaryDirectory(prefix="mplog-bench-") as d:
                    workdir = pathlib.Path(d)
                    frames = made.get(res.kind) or made.setdefault(res.kind, _Frames(res.kind, n))
                    rate, cpu, res.frame_bytes = _collector_run(
                        res.kind, frames, workdir=workdir, timeout=timeout, progress=progress)
                res.rates.append(rate)
                res.cpu_us.append(cpu)
                progress.end(f"{rate:,.0f} rec/s, receiver {cpu:.2f} µs/rec")
            except Exception as exc:  # shown in the row; the other receivers still run
                res.error = str(exc) if isinstance(exc, _SetupFailed) else (
                    f"{type(exc).__name__}: {exc}")
                progress.end(f"failed: {res.error}")
    return results, note


def collector_ratio_rows(collector: list[CollectorResult]) -> list[str]:
    """``mplog serve`` / rsyslog, records/s, per wire: the median of the runs' own ratios."""
    base = next((c for c in collector if c.kind == "rsyslog" and not c.error), None)
    rows = []
    for c in collector:
        if c.kind == "rsyslog":
            continue
        what = f"{c.receiver} / rsyslog, {c.wire}"
        values = ([a / b for a, b in zip(c.rates, base.rates, strict=False) if b]
                  if base is not None and not c.error else [])
        if not values:
            why = "rsyslog not measured" if base is None else (c.error or "no run")
            rows.append(f"| {what} | ≥ 1.0{TIMES} | - | not measured: {_md(why)} |")
            continue
        verdict = "met" if statistics.median(values) >= 1.0 else "**missed**"
        rows.append(f"| {what} | ≥ 1.0{TIMES} | {_shown_ratio(values)} | {verdict} |")
    return rows


class _Frames:
    """Pre-built frames for one receiver: encoded once; on the mplog wire only framed
    (and signed) afresh for each connection, once its session is established."""

    def __init__(self, kind: str, n: int) -> None:
        self.kind = kind
        self.key = os.urandom(32).hex().encode() if kind == "serve-hmac" else None
        self._made: list[bytes] = (
            _syslog_frames(n) if kind == "rsyslog" else
            _pickle_frames(n) if kind == "serve-pickle" else _mplog_payloads(n)
        )
        self.count = n

    def session(self, workdir: pathlib.Path) -> Any:
        """The mplog-wire client session for one run (None for the other wires); the
        key file the collector of that run reads is written to *workdir*."""
        if self.kind in ("rsyslog", "serve-pickle"):
            return None
        if self.key is not None:
            path = workdir / "key"
            path.write_bytes(self.key)
            path.chmod(0o600)
        return _mplog_session(self.key)

    def frames(self, session: Any) -> list[bytes]:
        """The frames to send (after the welcome, when *session* is not None)."""
        if session is None:
            return self._made
        if not getattr(session, "sealed", False):
            return [session.frame(p) for p in self._made]
        # A sealed session, as a SocketHandler writes it: records in batches, one seal
        # (one MAC) each. One entry per record still (the blast counts the window in
        # entries); a batch's bytes ride on its last entry, so what is written never
        # runs ahead of what is counted.
        group = max(1, min(256, session.window // 4))
        out: list[bytes] = []
        for i in range(0, len(self._made), group):
            batch = self._made[i : i + group]
            out += [b""] * (len(batch) - 1)
            out.append(session.frames(batch))
        return out


# -- the report --------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs "
            f"({usable} usable){f', {model}' if model else ''}; load average at start {load}")


def buffer_bytes_default() -> int:
    """The ``buffer_bytes`` an ``mplog.SocketHandler`` gets when none is given."""
    default = inspect.signature(mplog.SocketHandler).parameters["buffer_bytes"].default
    return int(default)


def paired_ratios(rounds: Sequence[Result], a: str, b: str, attr: str,
                  match: Callable[[Result], bool] = lambda r: True) -> list[float]:
    """``a / b`` of *attr* (setups *a* and *b*) within each round that measured both, in
    round order."""
    per: dict[int, dict[str, float]] = {}
    for r in rounds:
        value = getattr(r, attr)
        if match(r) and not r.error and value is not None and r.setup in (a, b):
            per.setdefault(r.round, {})[r.setup] = value
    return [v[a] / v[b] for _, v in sorted(per.items()) if a in v and v.get(b)]


def _shown_ratio(values: list[float]) -> str:
    """The median, and the range when there is more than one round."""
    text = f"{statistics.median(values):.2f}{TIMES}"
    if len(values) > 1:
        text += f" ({min(values):.2f}-{max(values):.2f})"
    return text


def _ratio_rows(results: list[Result], rounds: list[Result], sizes: Sequence[int]) -> list[str]:
    by = {(r.setup, r.workers): r for r in results}
    buf_mib = buffer_bytes_default() / 2**20
    rows = []

    def row(n: int, what: str, goal: str, value: list[float] | float | None, *, unit: str,
            ok: Callable[[float], bool], why: str) -> None:
        if not value:
            rows.append(f"| {n} | {what} | {goal} | - | not measured: {why} |")
            return
        if isinstance(value, list):
            shown, mid = _shown_ratio(value), statistics.median(value)
        else:
            shown, mid = f"{value:.1f} MiB", value
        rows.append(f"| {n} | {what} | {goal} | {shown} | {'met' if ok(mid) else '**missed**'} |")

    def context(n: int, what: str, value: list[float]) -> None:
        # Not a goal: what a goal's figure is made of.
        if value:
            rows.append(f"| {n} | {what} | (context) | {_shown_ratio(value)} | |")

    def get(setup: str, n: int, attr: str) -> float | None:
        r = by.get((setup, n))
        return None if r is None or r.error else getattr(r, attr)

    def ratio(a: str, b: str, n: int, attr: str) -> list[float]:
        if get(a, n, attr) is None or get(b, n, attr) is None:
            return []  # a failed round fails the setup (see combine)
        return paired_ratios(rounds, a, b, attr, lambda r: r.workers == n)

    for n in sizes:
        failed = ", ".join(s for s in SETUPS if (r := by.get((s, n))) and r.error) or "-"
        why = f"{failed} failed"
        row(n, "throughput, mplog / per-process SocketHandler", f"≥ 1.0{TIMES}",
            ratio("mplog", "per-proc", n, "rate"), unit="x", ok=lambda v: v >= 1.0, why=why)
        row(n, "throughput, mplog / cookbook", f"≥ 4{TIMES}",
            ratio("mplog", "cookbook", n, "rate"), unit="x", ok=lambda v: v >= 4.0, why=why)
        row(n, "total CPU per record, mplog / per-process", f"≤ 1.0{TIMES}",
            ratio("mplog", "per-proc", n, "total_us"), unit="x", ok=lambda v: v <= 1.0,
            why=why)
        row(n, "worker CPU per call, mplog / fmt-only floor", f"≤ 1.0{TIMES}",
            ratio("mplog", "fmt-only", n, "worker_us"), unit="x", ok=lambda v: v <= 1.0,
            why=why)
        context(n, "worker CPU per call outside the kernel, mplog / fmt-only floor",
                ratio("mplog", "fmt-only", n, "worker_user_us"))
        row(n, "mplog listener peak RSS", f"≤ {RSS_GOAL_MIB} MiB + buffer ({buf_mib:g} MiB)",
            get("mplog", n, "rss_mib"), unit="MiB", ok=lambda v: v <= RSS_GOAL_MIB + buf_mib,
            why=why)
    return rows


def _pipeline_lines(cfg: BenchConfig, results: list[Result], rounds: list[Result]) -> list[str]:
    how = ("1 round" if cfg.rounds == 1 else
           f"{cfg.rounds} rounds, the setups' order rotated each round; medians (peak RSS: "
           "the largest), and each ratio is the median of the rounds' own ratios (range in "
           "brackets)")
    lines = [
        f"- **Records**: {cfg.records:,} per run in all, "
        f'`logger.info("{MESSAGE}", i, x)`; workers forked from a forkserver, '
        f"timed from one start event; {how}",
        "",
        "### Side by side",
        "",
        "| setup | N | records/s | worker µs/call | of it, system | total µs/rec "
        "| listener µs/rec | listener RSS | connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.setup} | {r.workers} | failed: {_md(r.error)} | | | | | | |")
            continue
        lines.append(
            f"| {r.setup} | {r.workers} | {_fmt(r.rate, ',.0f')} | {_fmt(r.worker_us, '.2f')} "
            f"| {_fmt(r.worker_sys_us, '.2f')} | {_fmt(r.total_us, '.2f')} "
            f"| {_fmt(r.listener_us, '.2f')} "
            f"| {_fmt(r.rss_mib, '.1f', ' MiB')} | {r.connections} |"
        )
    if cfg.plot and cfg.out:
        rel = os.path.relpath(cfg.plot, os.path.dirname(os.path.abspath(cfg.out)))
        lines += ["", f"![records/s per setup and N]({rel})"]
    lines += [
        "",
        "### Ratios against the goals of issue 12 (same run)",
        "",
        "| N | measure | goal | measured | |",
        "|---:|---|---|---:|---|",
        *_ratio_rows(results, rounds, cfg.sizes),
    ]
    return lines


def render(cfg: BenchConfig, rounds: list[Result], collector: list[CollectorResult] | None,
           *, collector_note: str, machine: str, started: datetime.datetime,
           elapsed: float) -> str:
    """The markdown report, between (and including) the two markers; *rounds*: what
    :func:`run_pipeline` returned."""
    results = combine(rounds, cfg)
    lines = [BEGIN_MARKER, "", "## Results", ""]
    lines += [
        f"- **Command**: `{cfg.command}` ({elapsed:.0f} s)",
        f"- **Date**: {started:%Y-%m-%d %H:%M} UTC",
        f"- **Machine**: {machine}",
        f"- **Python**: {platform.python_implementation()} {platform.python_version()}; "
        f"mplog {mplog.__version__}",
    ]
    if cfg.pipeline:
        lines += _pipeline_lines(cfg, results, rounds)
    else:
        lines += ["", "The pipeline part was not run (`--collector-only`)."]
    if collector is not None:
        lines += ["", "### The collector: `mplog serve` and rsyslog", ""]
        runs = cfg.collector_runs
        lines.append(
            f"Pre-built frames of the same record, {cfg.collector_records:,} per run, blasted "
            "over one TCP connection (mplog wire: within its window of acknowledgements); the "
            "clock stops when the output file holds every line"
            + (f"; median of {runs} runs." if runs > 1 else "; 1 run.")
        )
        lines += [
            "",
            "| receiver | wire | frame bytes | records/s | min-max | receiver CPU µs/rec |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for c in collector:
            if c.error:
                lines.append(f"| {c.receiver} | {c.wire} | {c.frame_bytes:.0f} "
                             f"| failed: {_md(c.error)} | | |")
                continue
            lines.append(
                f"| {c.receiver} | {c.wire} | {c.frame_bytes:.0f} "
                f"| {statistics.median(c.rates):,.0f} | {min(c.rates):,.0f}-{max(c.rates):,.0f} "
                f"| {statistics.median(c.cpu_us):.2f} |"
            )
        ratio_rows = collector_ratio_rows(collector)
        if ratio_rows:
            lines += ["", "Records/s against rsyslog, run by run (runs interleaved: run k of "
                      "every receiver, then run k + 1):", "",
                      "| measure | goal | measured | |", "|---|---|---:|---|", *ratio_rows]
        if collector_note:
            lines += ["", collector_note]
    else:
        lines += ["", "The collector part was not run (`--no-collector`)."]
    lines += ["", END_MARKER, ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(path: str, report: str) -> None:
    """Write *report* to *path*: between the markers if the file has them, else the whole file."""
    p = pathlib.Path(path)
    if p.exists():
        text = p.read_text(encoding="utf-8")
        if BEGIN_MARKER in text and END_MARKER in text:
            head = text[: text.index(BEGIN_MARKER)]
            tail = text[text.index(END_MARKER) + len(END_MARKER) :].lstrip("\n")
            report = head + report + (("\n" + tail) if tail else "")
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(report, encoding="utf-8")
    tmp.replace(p)


def plot(path: str, results: list[Result], collector: list[CollectorResult] | None) -> None:
    """A bar chart of records/s per setup per N (and the collector's, if measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in dict.fromkeys(r.setup for r in results) if k != "fmt-only"]
    sizes = list(dict.fromkeys(r.workers for r in results))
    by = {(r.setup, r.workers): r for r in results}
    panels = (1 if results else 0) + (1 if collector else 0) or 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels + 2, 4.5), squeeze=False)
    if results:
        ax = axes[0][0]
        width = 0.8 / max(len(kinds), 1)
        for k, kind in enumerate(kinds):
            xs = [i + k * width for i in range(len(sizes))]
            ys = [(by[(kind, n)].rate or 0.0) if (kind, n) in by else 0.0 for n in sizes]
            ax.bar(xs, ys, width, label=kind)
        ax.set_xticks([i + width * (len(kinds) - 1) / 2 for i in range(len(sizes))])
        ax.set_xticklabels([f"N = {n}" for n in sizes])
        ax.set_ylabel("records/s")
        ax.set_title("Worker processes to one receiver")
        ax.legend()
    if collector:
        cx = axes[0][-1]
        names = [f"{c.receiver.split(' imtcp')[0]}\n{c.wire.split(' (')[0]}"
                 + ("\nHMAC" if "HMAC on" in c.wire else "") for c in collector]
        cx.bar(range(len(collector)),
               [statistics.median(c.rates) if c.rates and not c.error else 0.0
                for c in collector])
        cx.set_xticks(range(len(collector)))
        cx.set_xticklabels(names, fontsize=8)
        cx.set_ylabel("records/s")
        cx.set_title("Pre-built frames into a file")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


# -- entry point --------------------------------------------------------------------------------


def _sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup below


def main(cfg: BenchConfig) -> int:
    """Run the benchmark; 0 if every setup ran, 1 if one failed; the report is written.

    Raises :class:`UsageError` (before anything runs) for a user mistake.
    """
    check_usage(cfg)
    try:
        return _main(cfg)
    except KeyboardInterrupt:  # everything started is already ended (finally blocks)
        sys.stderr.write("\nmplog bench: interrupted; no report written\n")
        return 130


def _main(cfg: BenchConfig) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    steps = len(cfg.sizes) * len(setups(cfg)) * cfg.rounds if cfg.pipeline else 0
    if cfg.collector:
        steps += cfg.collector_runs * (len(COLLECTOR_SETUPS) - (0 if rsyslogd_path() else 1))
    progress = Progress(sys.stderr, steps)
    machine = _machine()
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    rounds = run_pipeline(cfg, progress) if cfg.pipeline else []
    results = combine(rounds, cfg)
    collector, note = run_collector(cfg, progress) if cfg.collector else (None, "")
    if note:
        progress.note(note)
    report = render(cfg, rounds, collector, collector_note=note, machine=machine,
                    started=started, elapsed=time.monotonic() - t0)
    if cfg.out:
        write_report(cfg.out, report)
        progress.note(f"report written to {cfg.out}")
    else:
        sys.stdout.write(report)
        sys.stdout.flush()
    if cfg.plot:
        plot(cfg.plot, results, collector)
        progress.note(f"chart written to {cfg.plot}")
    if cfg.json_out:
        data = {"pipeline": [r.__dict__ for r in results],
                "pipeline_rounds": [r.__dict__ for r in rounds],
                "collector": [c.__dict__ for c in collector or []]}
        pathlib.Path(cfg.json_out).write_text(json.dumps(data, indent=2) + "\n")
    failed = [r for r in results if r.error] + [c for c in collector or [] if c.error]
    return 1 if failed else 0
