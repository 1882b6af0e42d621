from __future__ import annotations

import logging

import mplog
from tests.helpers import Receiver


def test_main_process_records_arrive(receiver: Receiver, start_pipeline) -> None:
    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)])
    log = logging.getLogger("smoke")
    for i in range(100):
        log.info("record %d", i)
    assert p.flush(10)
    recs = receiver.wait_records(100)
    assert [r["msg"] for r in recs] == [f"record {i}" for i in range(100)]
    st = p.stats()
    assert st["received"] == st["handled"] == st["sent"] == 100
    assert receiver.connections() == 1


def test_flush_finishes_under_a_steady_stream(receiver: Receiver, start_pipeline) -> None:
    import threading
    import time

    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)])
    stop = threading.Event()
    log = logging.getLogger("stream")

    def stream() -> None:
        # Steady, and more than the test's receiver can take without falling behind by
        # much (~40k/s): unpaced, a worker outruns it, the listener's buffer fills and
        # overflows, and a marker can be among the records it drops (counted).
        while not stop.is_set():
            for _ in range(100):
                log.info("tick")
            time.sleep(0.0025)

    t = threading.Thread(target=stream)
    t.start()
    try:
        for i in range(5):
            logging.getLogger("marker").info("marker %d", i)
            t0 = time.monotonic()
            assert p.flush(10), "flush starved by a steady stream"
            assert time.monotonic() - t0 < 5
            # Written to the receiver's socket; it shows up once the receiver has read it.
            # The stream fills the file fast (tens of MB): scan its bytes, parse nothing.
            receiver.wait_for_bytes(f'"msg": "marker {i}"'.encode())
    finally:
        stop.set()
        t.join()
    assert p.stats()["dropped"] == 0
