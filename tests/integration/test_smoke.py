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
