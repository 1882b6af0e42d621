"""wire="relp" against a real rsyslog imrelp."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pathlib
import re

import mplog
from tests.helpers import wait_until
from tests.receivers import Rsyslog


def log_tagged(tag: str, n: int) -> None:
    log = logging.getLogger("relp.worker")
    for i in range(n):
        log.info("%s %d", tag, i, extra={"tag": tag})


def _handler(port: int) -> mplog.SocketHandler:
    h = mplog.SocketHandler("127.0.0.1", port, wire="relp", app_name="mplogtest", facility="local4")
    h.retryStart, h.retryMax = 0.05, 0.3
    return h


def test_relp_fields_and_acks(tmp_path: pathlib.Path, start_pipeline) -> None:
    rs = Rsyslog(tmp_path, "imrelp")
    try:
        p = start_pipeline([_handler(rs.port)])
        log = logging.getLogger("relp.main")
        try:
            raise ValueError("bad")
        except ValueError:
            log.error('odd "quote" ] and ünïcode', exc_info=True, extra={"k": 'v"]\\'})
        for i in range(500):
            log.info("n %d", i)
        assert p.flush(30)
        st = p.stats()
        assert st["sent"] == st["received"] == 501  # acknowledged by rsyslog
        wait_until(lambda: rs.count() >= 501, what="501 lines in rsyslog's output")
        lines = rs.lines()
        first = lines[0]
        assert first["pri"] == str(20 * 8 + 3) and first["app"] == "mplogtest"
        assert first["procid"] == str(os.getpid()) and first["msgid"] == "relp.main"
        assert first["msg"].startswith('\ufeffodd "quote" ] and ünïcode\nTraceback')
        assert "ValueError: bad" in first["msg"]
        assert re.search(r'k="v\\"\\]\\\\"', first["sd"]), first["sd"]
        assert [x["msg"].lstrip("\ufeff") for x in lines[1:]] == [f"n {i}" for i in range(500)]
    finally:
        rs.stop()


def test_relp_rsyslog_killed_3_times_nothing_lost(tmp_path: pathlib.Path, start_pipeline) -> None:
    rs = Rsyslog(tmp_path, "imrelp")
    workers, per = 8, 50_000 // 8
    try:
        p = start_pipeline([_handler(rs.port)])
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            res = pool.starmap_async(log_tagged, [(f"w{k}", per) for k in range(workers)])
            for k in range(3):
                target = (k + 1) * 50_000 // 5
                wait_until(lambda t=target: rs.count() >= t, 90, f"{target} lines")
                rs.kill()
                rs.start()
            res.get(180)
        assert p.flush(90)
        st = p.stats()
        assert st["sent"] == st["received"] == workers * per and st["dropped"] == 0
        wait_until(lambda: rs.count() >= workers * per, 20, f"every record in rsyslog output (have {rs.count()})")
        seen: dict[str, int] = {}
        for line in rs.lines():
            m = re.search(r"(w\d+ \d+)$", line["msg"])
            if m:
                seen[m[1]] = seen.get(m[1], 0) + 1
        expected = {f"w{k} {i}" for k in range(workers) for i in range(per)}
        assert expected <= set(seen), f"lost: {len(expected - set(seen))}"
        duplicates = sum(c - 1 for c in seen.values())
        # Duplicates come only from the resend window: at most one window per kill.
        assert duplicates <= 3 * 128, duplicates
        assert st["reconnects"] >= 3
    finally:
        rs.stop()
