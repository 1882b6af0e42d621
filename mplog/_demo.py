"""``mplog demo``: a pipeline, a pool of workers logging, a receiver, and a summary."""

from __future__ import annotations

import io
import logging
import pickle
import socket
import struct
import threading
import time

__all__ = ["run"]


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


class _Receiver:
    """A minimal stdlib-wire receiver (what a ``logging.handlers.SocketHandler`` speaks)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.connections = 0
        self.records = 0
        self.warnings: list[str] = []
        self.last: dict[str, object] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, name="demo-receiver", daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        buf = bytearray()
        with conn:
            while data := conn.recv(1 << 20):
                buf += data
                while len(buf) >= 4:
                    (n,) = struct.unpack_from(">L", buf)
                    if len(buf) < 4 + n:
                        break
                    d = _NoGlobals(io.BytesIO(bytes(buf[4 : 4 + n]))).load()
                    del buf[: 4 + n]
                    with self._lock:
                        self.records += 1
                        self.last = d
                        if d.get("name") == "mplog":
                            self.warnings.append(str(d.get("msg")))

    def close(self) -> None:
        self.server.close()


def _work(n: int) -> int:
    log = logging.getLogger("demo.worker")
    for i in range(n):
        log.info("request %d handled", i, extra={"request_id": i})
    return n


def run(workers: int = 8, records: int = 20000) -> int:
    import multiprocessing

    import mplog

    receiver = _Receiver()
    print(f"receiver: a stdlib SocketHandler receiver on 127.0.0.1:{receiver.port}")
    t0 = time.perf_counter()
    with mplog.start([mplog.SocketHandler("127.0.0.1", receiver.port)], level=logging.INFO) as p:
        print(f"pipeline: listener pid {p.pid}, intake {p.address}")
        logging.getLogger("demo").info("demo starting: %d workers, %d records", workers, records)
        per = [records // workers + (1 if i < records % workers else 0) for i in range(workers)]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=mplog.worker_init, initargs=(p.address,)) as pool:
            emitted = sum(pool.map(_work, per)) + 1
        flushed = p.flush(30)
        stats = p.stats()
    elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + 10
    while receiver.records < stats["sent"] and time.monotonic() < deadline:
        time.sleep(0.01)
    receiver.close()
    print()
    print(f"emitted   {emitted:>8} records from {workers} worker processes + the main one")
    print(f"delivered {receiver.records:>8} records over {receiver.connections} connection(s)")
    print(f"dropped   {stats['dropped']:>8}   (buffered now: {stats['buffered']})")
    rate = emitted / elapsed
    print(f"flushed   {flushed!s:>8}   in {elapsed:.2f} s, {rate:,.0f} records/s end to end")
    print(f"listener  {stats['listener_rss'] / 2**20:>7.1f} MiB RSS")
    ok = flushed and receiver.records == emitted and stats["dropped"] == 0
    print("OK: every record arrived exactly once" if ok else "MISMATCH: see the figures above")
    return 0 if ok else 1
