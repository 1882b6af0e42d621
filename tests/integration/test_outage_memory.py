"""A 30 s receiver outage under steady logging: nothing lost, listener memory bounded."""

from __future__ import annotations

import logging
import multiprocessing
import pathlib
import socket
import threading
import time

import psutil

import mplog
from tests.helpers import Serve, wait_until

OUTAGE = 30.0
RATE = 400  # records/s per worker
WORKERS = 2
BUFFER_BYTES = 32 * 1024 * 1024
#: What the listener may hold beyond its buffer's bytes: per-frame object overhead
#: (a bytes object and a deque slot, ~60 B on ~300 B frames: 25 %) plus 16 MiB for
#: everything else (interpreter, decode batches, socket buffers).
OVERHEAD_FACTOR = 1.25
FIXED_OVERHEAD = 16 * 1024 * 1024


def steady(tag: str, seconds: float) -> int:
    log = logging.getLogger("outage")
    n = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        log.info("%s %d", tag, n, extra={"tag": tag, "i": n})
        n += 1
        # Pace to RATE: this is the load pattern, not a wait for anything.
        time.sleep(max(0.0, t0 + n / RATE - time.monotonic()))
    return n


def test_receiver_down_30_s(tmp_path: pathlib.Path, start_pipeline) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = mplog.SocketHandler("127.0.0.1", port, wire="mplog", buffer_bytes=BUFFER_BYTES, buffer_records=10**6)
    h.retryStart, h.retryMax = 0.2, 1.0
    p = start_pipeline([h])
    listener = psutil.Process(p.pid)
    baseline = listener.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.25):
            peak[0] = max(peak[0], listener.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            counts = pool.starmap(steady, [(f"w{k}", OUTAGE) for k in range(WORKERS)])
    finally:
        stop.set()
        sampler.join()
    st = p.stats()
    assert st["connected"] == 0 and st["dropped"] == 0
    assert st["buffered"] == sum(counts) >= WORKERS * RATE * OUTAGE * 0.8
    limit = baseline + OVERHEAD_FACTOR * st["buffered_bytes"] + FIXED_OVERHEAD
    assert st["buffered_bytes"] <= BUFFER_BYTES
    print(f"outage: {st['buffered']} records, {st['buffered_bytes'] / 2**20:.1f} MiB buffered; "
          f"listener RSS {baseline / 2**20:.1f} -> peak {peak[0] / 2**20:.1f} MiB (limit {limit / 2**20:.1f})")
    assert peak[0] <= limit, f"peak RSS {peak[0] / 2**20:.1f} MiB > {limit / 2**20:.1f} MiB"
    srv = Serve(tmp_path / "out.jsonl", port)
    try:
        assert p.flush(60)
        wait_until(lambda: srv.count() >= sum(counts), 60, "every record")
        by_tag: dict[str, list[int]] = {}
        for r in srv.lines():
            by_tag.setdefault(r["tag"], []).append(r["i"])
        assert by_tag == {f"w{k}": list(range(counts[k])) for k in range(WORKERS)}
        assert srv.terminate() == 0
    finally:
        srv.stop()
