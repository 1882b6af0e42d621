"""wire="syslog" into real rsyslog (imtcp) and syslog-ng (syslog() source).

The daemons parse what mplog sends with their own RFC 5424 parsers (rsyslog's message
parser plus mmpstrucdata for STRUCTURED-DATA; syslog-ng's syslog() source) and write every
field as JSON (configurations: tests/receivers.py); the tests compare each field with what
the worker logged.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import platform
import re
import socket
import threading
import time
from typing import Any

import pytest

import mplog
from tests.helpers import wait_until
from tests.receivers import Daemon, Rsyslog, SyslogNg

#: Records in the big runs (issue 4: 100,000 from 8 workers).
TOTAL = 100_000
WORKERS = 8
PER = TOTAL // WORKERS
#: Every EXC_EVERY-th record of a worker is an ERROR with a multi-line traceback.
EXC_EVERY = 1000
FACILITY = 17  # local1
SD_ID = "mplog@32473"
#: A structured-data value with every character RFC 5424 makes the sender escape.
QUOTE = 'say "hi" [x] \\ ok ü'

#: The 100k run per daemon: how the handler is configured and what the daemon reports.
DAEMONS = {
    # rsyslog: APP-NAME given; BOM kept in $msg; SD parsed by mmpstrucdata.
    "rsyslog": {"app_name": "mplog-test"},
    # syslog-ng: APP-NAME left to its default (the worker's process name); $MSG strips the
    # BOM; SD parsed by the syslog() source.
    "syslog-ng": {},
}


class _CopyCreated(logging.Filter):
    """In the worker: carry the record's exact ``created`` along as an extra, so the test
    can check TIMESTAMP to the microsecond."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.c = repr(record.created)
        return True


def work(k: int, n: int) -> int:
    log = logging.getLogger("syslog.worker")
    log.addFilter(_CopyCreated())
    pid = os.getpid()
    for i in range(n):
        extra = {"k": k, "i": i, "q": QUOTE, "pid": pid}
        if i % EXC_EVERY == EXC_EVERY - 1:
            try:
                raise ValueError(f"w{k} #{i}\nsecond line")
            except ValueError:
                log.error("w%d %d failed ✗", k, i, exc_info=True, extra=extra)
        else:
            log.info("w%d %d ünï 日本 ✓", k, i, extra=extra)
    return pid


def _special() -> None:
    """One record from the main process with everything odd at once."""
    log = logging.getLogger("syslog.spécial")  # not ASCII: MSGID is sanitized
    try:
        raise KeyError("multi\nline")
    except KeyError:
        log.error("tricky\nmessage", exc_info=True, stack_info=True,
                  extra={"q": QUOTE, "n": 7, "nested": {"a": [1, "]"]}})


def _handler(port: int, **kw: Any) -> mplog.SocketHandler:
    h = mplog.SocketHandler("127.0.0.1", port, wire="syslog", facility=FACILITY, **kw)
    h.retryStart, h.retryMax = 0.05, 0.3
    return h


def _sd(daemon: str, line: dict[str, Any]) -> dict[str, Any]:
    """STRUCTURED-DATA as the daemon's own parser read it: {sd-id: {name: value}}."""
    if daemon == "rsyslog":
        return json.loads(line["sdp"]) if line["sdp"] else {}  # type: ignore[no-any-return]
    return line.get("_SDATA", {})  # type: ignore[no-any-return]


def _stamp(created: float) -> str:
    return datetime.datetime.fromtimestamp(created).astimezone().isoformat(timespec="microseconds")


def _check_special(daemon: str, lines: list[dict[str, Any]]) -> None:
    (s,) = [x for x in lines if x["msgid"] == "syslog.sp_cial"]
    assert (s["pri"], s["facility"], s["severity"]) == (str(FACILITY * 8 + 3), str(FACILITY), "3")
    assert s["procid"] == str(os.getpid())
    assert _sd(daemon, s) == {SD_ID: {"n": "7", "q": QUOTE, "nested": '{"a":[1,"]"]}'}}
    assert s["sd"] == f'[{SD_ID} n="7" nested="{{\\"a\\":[1,\\"\\]\\"\\]}}" q="say \\"hi\\" [x\\] \\\\ ok ü"]'
    msg = s["msg"].removeprefix("\ufeff")
    assert msg.startswith("tricky\nmessage\nTraceback (most recent call last):\n")
    assert "KeyError: 'multi\\nline'\nStack (most recent call last):\n" in msg
    assert re.search(r", in _special\n    log\.error\(.*\Z", msg), msg[-300:]  # the stack ends at the call


@pytest.mark.parametrize("daemon", list(DAEMONS))
def test_100k_records_from_8_workers_every_field_parsed_as_sent(daemon: str, tmp_path, start_pipeline) -> None:
    rcv: Daemon = Rsyslog(tmp_path, "imtcp") if daemon == "rsyslog" else SyslogNg(tmp_path)
    with rcv:
        p = start_pipeline([_handler(rcv.port, **DAEMONS[daemon])])
        _special()
        t0 = time.monotonic()
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(WORKERS, initializer=mplog.worker_init, initargs=(p.address,)) as pool:
            pids = set(pool.starmap(work, [(k, PER) for k in range(WORKERS)], chunksize=1))
        assert p.flush(120)
        rcv.wait_count(TOTAL + 1, 120)
        elapsed = time.monotonic() - t0
        lines = rcv.lines()
        assert len(lines) == TOTAL + 1
        _check_special(daemon, lines)

        host = platform.node()
        seen: dict[int, list[int]] = {k: [] for k in range(WORKERS)}
        procids: set[str] = set()
        for x in lines:
            if x["msgid"] != "syslog.worker":
                continue
            sd = _sd(daemon, x)[SD_ID]
            k, i = int(sd["k"]), int(sd["i"])
            seen[k].append(i)
            error = i % EXC_EVERY == EXC_EVERY - 1
            sev = 3 if error else 6
            assert (x["pri"], x["facility"], x["severity"]) == (str(FACILITY * 8 + sev), str(FACILITY), str(sev))
            assert x["hostname"] == host
            assert x["procid"] == sd["pid"]  # PROCID: the worker that logged, not the listener
            procids.add(x["procid"])
            assert x["app"] == DAEMONS[daemon].get("app_name", f"ForkPoolWorker-{x['app'].rsplit('-', 1)[-1]}")
            assert sd == {"k": str(k), "i": str(i), "q": QUOTE, "pid": sd["pid"], "c": sd["c"]}
            stamp = _stamp(float(sd["c"]))
            assert f" {stamp} " in x["raw"]  # TIMESTAMP exactly as sent: microseconds, offset
            assert datetime.datetime.fromisoformat(x["ts"]) == datetime.datetime.fromisoformat(stamp)
            assert "\ufeff" in x["raw"]
            msg = x["msg"].removeprefix("\ufeff")
            if error:
                assert msg.startswith(f"w{k} {i} failed ✗\nTraceback (most recent call last):\n  File ")
                assert msg.endswith(f"ValueError: w{k} #{i}\nsecond line")
            else:
                assert msg == f"w{k} {i} ünï 日本 ✓"
        # Every record exactly once, in each worker's order.
        assert seen == {k: list(range(PER)) for k in range(WORKERS)}
        assert {int(pid) for pid in procids} == pids and p.pid not in pids and os.getpid() not in pids
        st = p.stats()
        assert st["sent"] == TOTAL + 1 and st["dropped"] == 0
        print(f"{daemon}: {TOTAL} records from {WORKERS} workers landed in {elapsed:.1f} s")


def stream_seq(logged: list[int], stop: threading.Event) -> None:
    log = logging.getLogger("syslog.seq")
    while not stop.is_set():
        base = logged[0]
        for i in range(base, base + 100):
            log.info("s %d", i)
        logged[0] = base + 100


def _seq(rcv: Daemon) -> list[int]:
    return [int(x["msg"].removeprefix("\ufeff").split()[1]) for x in rcv.lines() if x["msgid"] == "syslog.seq"]


def _last_msg(rcv: Daemon) -> str:
    """The message of the last complete line (rsyslog may be writing the next one: a line
    without its LF yet is not read, so polling never parses half a line)."""
    data = rcv.out.read_bytes()
    end = data.rfind(b"\n")
    if end <= 0:
        return ""
    complete = data[:end]
    last = complete.rsplit(b"\n", 1)[-1]
    try:
        return json.loads(last)["msg"].removeprefix("\ufeff")  # type: ignore[no-any-return]
    except ValueError:  # a torn fragment of a killed rsyslog glued to the next line
        return ""


def test_plain_tcp_rsyslog_sigkilled_mid_run_loses_only_the_documented_gap(tmp_path, start_pipeline) -> None:
    with Rsyslog(tmp_path, "imtcp") as rcv:
        p = start_pipeline([_handler(rcv.port)])
        stop = threading.Event()
        logged = [0]
        t = threading.Thread(target=stream_seq, args=(logged, stop))
        t.start()
        try:
            rcv.wait_count(20_000, 60)
            at_kill = logged[0]
            rcv.kill()  # mid-stream: records are in flight and in rsyslog's queue
            wait_until(lambda: p.stats()["connected"] == 0, 30, "the sender to notice the dead peer")
            noticed = logged[0] + 100  # records are logged 100 at a time
            # Keep logging during the outage: these wait in the buffer.
            wait_until(lambda: logged[0] >= noticed + 5_000, 30, "records logged during the outage")
        finally:
            stop.set()
            t.join(60)
        total = logged[0]
        during = p.stats()
        assert during["connected"] == 0 and during["buffered"] > 0 and during["dropped"] == 0
        # Nothing is logged from here on: the reconnect must come from the back-off timer.
        rcv.start()
        wait_until(lambda: p.stats()["connected"] == 1, 30, "the reconnect on the back-off timer")
        assert p.flush(60)
        wait_until(lambda: _last_msg(rcv) == f"s {total - 1}", 60, "the last record")
        after = p.stats()
        assert after["received"] == during["received"] == total
        assert after["reconnects"] > during["reconnects"]
        # Plain TCP has no acknowledgements: mplog counted every record as sent (written to
        # the socket) and cannot know which of them the dead rsyslog lost; nothing dropped.
        assert after["sent"] == total and after["buffered"] == 0 and after["dropped"] == 0
        got = _seq(rcv)
        assert len(got) == len(set(got)), "a record arrived twice"
        assert got == sorted(got), "records out of order"
        missing = sorted(set(range(total)) - set(got))
        # The documented loss: what the killed rsyslog had read but not written, and what
        # was written into the dead connection before the sender noticed: one contiguous
        # run, all logged before the sender noticed. Everything logged after that (in
        # the outage, held in the buffer) arrived after the restart.
        if missing:
            assert missing == list(range(missing[0], missing[-1] + 1)), "the loss is not one gap"
            assert missing[-1] < noticed, "a record logged after the sender noticed was lost"
        assert set(range(noticed, total)) <= set(got)
        print(f"plain TCP, rsyslog SIGKILLed after {at_kill} records logged: {total} records, "
              f"gap of {len(missing)} ({missing[:1]}..{missing[-1:]}), {total - noticed} held in the outage")


def stream_paced(k: int, stop: Any, counts: Any) -> None:
    """Log in small paced batches until *stop* is set (about 500 records/s)."""
    log = logging.getLogger("syslog.late")
    i = 0
    while not stop.is_set():
        for _ in range(10):
            log.info("L %d %d", k, i)
            i += 1
        counts[k] = i
        stop.wait(0.02)  # pacing, so the 5 s of records stay within the memory buffer


def test_rsyslog_started_5_s_after_the_workers_began_nothing_lost(tmp_path, start_pipeline) -> None:
    with socket.socket() as s:  # a port nothing listens on yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = start_pipeline([_handler(port)])
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    counts = ctx.Array("i", WORKERS)
    workers = [ctx.Process(target=stream_paced, args=(k, stop, counts)) for k in range(WORKERS)]
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: [w.join(30) for w in workers])
        cleanup.callback(stop.set)
        for w in workers:
            w.start()
        wait_until(lambda: p.stats()["received"] > 0, 30, "the workers to begin logging")
        began = time.monotonic()
        # The scenario: no receiver for 5 s while the workers log; mplog keeps trying.
        wait_until(lambda: time.monotonic() - began >= 5.0, 10, "5 s of logging without a receiver")
        held = p.stats()
        assert held["connected"] == 0 and held["dropped"] == 0 and held["buffered"] > 5_000
        rcv = cleanup.enter_context(Rsyslog(tmp_path, "imtcp", port))
        wait_until(lambda: p.stats()["connected"] == 1, 30, "the connection to the late rsyslog")
        at_start = sum(counts)
        wait_until(lambda: sum(counts) >= at_start + 2_000, 30, "more records after rsyslog started")
        stop.set()
        for w in workers:
            w.join(30)
        total = sum(counts)
        assert p.flush(60)
        rcv.wait_count(total, 60)
        got: dict[int, list[int]] = {k: [] for k in range(WORKERS)}
        for x in rcv.lines():
            _, k, i = x["msg"].removeprefix("\ufeff").split()
            got[int(k)].append(int(i))
        assert got == {k: list(range(counts[k])) for k in range(WORKERS)}
        st = p.stats()
        assert st["dropped"] == 0 and st["sent"] == total and st["reconnects"] >= 1
        print(f"late rsyslog: {held['buffered']} records held for 5 s, {total} delivered, none lost")


def test_newline_framing_into_rsyslog_one_message_per_record(tmp_path, start_pipeline) -> None:
    with Rsyslog(tmp_path, "imtcp") as rcv:  # imtcp tells the framings apart per frame
        p = start_pipeline([_handler(rcv.port, framing="newline", app_name="nl")])
        log = logging.getLogger("syslog.nl")
        for i in range(100):
            log.warning("line one %d\nline two", i, extra={"note": "a\nb", "q": QUOTE})
        assert p.flush(30)
        rcv.wait_count(100, 30)
        lines = rcv.lines()
        assert len(lines) == 100
        for i, x in enumerate(lines):
            # LF inside the message is written as #012 (rsyslog's own escape).
            assert x["msg"] == f"\ufeffline one {i}#012line two"
            assert json.loads(x["sdp"]) == {SD_ID: {"note": "a#012b", "q": QUOTE}}
            assert (x["app"], x["msgid"], x["severity"]) == ("nl", "syslog.nl", "4")


def test_default_max_length_fits_rsyslogs_default_message_size(tmp_path, start_pipeline) -> None:
    # rsyslog with its default maxMessageSize (8k = 8096 octets): a longer message would be
    # split in two; mplog's default max_length cuts it (marked) so it arrives as one.
    with Rsyslog(tmp_path, "imtcp", max_message_size="8k") as rcv:
        p = start_pipeline([_handler(rcv.port, app_name="big")])
        log = logging.getLogger("syslog.big")
        head = "START " + "é" * 10_000
        try:
            raise RuntimeError("the end")
        except RuntimeError:
            log.error("%s", head, exc_info=True, extra={"blob": "b" * 20_000, "small": 1})
        log.info("after")
        assert p.flush(30)
        rcv.wait_count(2, 30)
        got = rcv.lines()
        assert len(got) == 2, (len(got), p.stats())
        big, after = got
        assert len(big["raw"].encode()) <= 8096
        msg = big["msg"].removeprefix("\ufeff")
        assert re.fullmatch(r"START é+ \[mplog: \d+ bytes cut\] .*RuntimeError: the end", msg, re.S), msg[-200:]
        assert json.loads(big["sdp"]) == {SD_ID: {"small": "1", "mplog_truncated": "1"}}
        assert after["msg"] == "\ufeffafter"
        assert "oversize" not in (rcv.dir / "internal.log").read_text()


def test_beyond_one_machine_mplog_to_local_rsyslog_to_a_central_relay(tmp_path, start_pipeline) -> None:
    # docs/destinations.md, "Beyond one machine": mplog -> the machine's rsyslog (imtcp on
    # loopback) -> a central receiver (here a second rsyslog, also on this machine).
    with Rsyslog(tmp_path, "imtcp") as central, Rsyslog(tmp_path, "imtcp", forward_port=central.port) as local:
        p = start_pipeline([_handler(local.port, app_name="myapp")])
        _special()
        log = logging.getLogger("hop")
        for i in range(1000):
            log.info("hop %d ü", i, extra={"i": i, "q": QUOTE})
        assert p.flush(30)
        local.wait_count(1001, 30)
        central.wait_count(1001, 60)
        first, second = local.lines(), central.lines()
        assert len(second) == 1001
        # The central receiver got the very message mplog sent, every field as parsed
        # on the first hop (multi-line traceback, SD escapes, BOM, offset included).
        assert second == first
        _check_special("rsyslog", second)
        assert [json.loads(b["sdp"])[SD_ID]["i"] for b in second[1:]] == [str(i) for i in range(1000)]
