"""wire="jsonl" through a real TCP line reader (what Logstash json_lines, Vector's socket
source or Fluent Bit's tcp input read), from worker processes, with odd characters."""

from __future__ import annotations

import datetime
import json
import logging
import multiprocessing
import os
import platform
from typing import Any

import mplog
from mplog._wires.jsonl import FIELDS
from tests.receivers import LineReceiver

WORKERS = 8
PER = 2_500
EXC_EVERY = 500

#: Messages (and extras) that break naive line formats: every record carries one.
ODD = [
    "new\nline", "crlf\r\nend", 'quo"te', "back\\slash", "ctl \x00\x01\x07\x1b\x7f", "tab\tend",
    "c1 \x85 and U+2028 \u2028 U+2029 \u2029", "ünïcödé ✓ 日本 😀", "brace } { ] [", "", " ",
    "lone \udcff surrogate", "json {\"a\": 1}\n",
]


def _clean(text: str) -> str:
    """What the wire writes for a str (lone surrogates as their \\uXXXX text)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def log_odd(k: int, n: int) -> int:
    log = logging.getLogger("jsonl.worker")
    pid = os.getpid()
    for i in range(n):
        text = ODD[i % len(ODD)]
        extra = {
            "k": k, "i": i, "pid": pid, "odd": text,
            "raw": text.encode("utf-8", "surrogateescape") + b"\xff\xfe",  # not UTF-8: its repr travels
            "path": os.fsdecode(b"/tmp/\xff.txt"),  # undecodable file name: a lone surrogate
            "nan": float("nan"),
            "nested": {"list": [1, 2.5, None, True, text], "deeper": {"x": text}},
        }
        if i % EXC_EVERY == EXC_EVERY - 1:
            try:
                raise ValueError(f"bad {text}")
            except ValueError:
                log.error("%s", text, exc_info=True, stack_info=True, extra=extra)
        else:
            log.info("%s", text, extra=extra)
    return pid


def _reject(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


def test_jsonl_from_8_workers_odd_characters_one_valid_line_each(tmp_path, start_pipeline) -> None:
    with LineReceiver(tmp_path) as rcv:
        assert isinstance(rcv, LineReceiver)
        p = start_pipeline([mplog.SocketHandler("127.0.0.1", rcv.port, wire="jsonl")])
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(WORKERS, initializer=mplog.worker_init, initargs=(p.address,)) as pool:
            pids = set(pool.starmap(log_odd, [(k, PER) for k in range(WORKERS)], chunksize=1))
        assert p.flush(60)
        rcv.wait_count(WORKERS * PER, 60)
        raw = rcv.raw_lines()
        assert len(raw) == WORKERS * PER  # exactly one line per record
        host = platform.node()
        seen: dict[int, list[int]] = {k: [] for k in range(WORKERS)}
        for line in raw:
            assert line.isascii()
            o: dict[str, Any] = json.loads(line, parse_constant=_reject)  # strict JSON: no NaN
            assert list(o) == [name for name, _ in FIELDS]
            x = o["extra"]
            k, i = x["k"], x["i"]
            seen[k].append(i)
            text = ODD[i % len(ODD)]
            error = i % EXC_EVERY == EXC_EVERY - 1
            assert o["message"] == _clean(text) and o["logger"] == "jsonl.worker"
            assert (o["level"], o["levelno"]) == (("ERROR", 40) if error else ("INFO", 20))
            assert o["hostname"] == host and o["process"] == x["pid"] and o["process"] in pids
            assert o["process_name"].startswith("ForkPoolWorker-") and o["thread_name"] == "MainThread"
            assert isinstance(o["thread"], int) and o["pathname"] == __file__ and o["function"] == "log_odd"
            stamp = datetime.datetime.fromisoformat(o["timestamp"])
            assert stamp.utcoffset() == datetime.datetime.now().astimezone().utcoffset()
            assert len(o["timestamp"]) == 32  # YYYY-MM-DDTHH:MM:SS.ffffff+hh:mm
            assert x == {
                "k": k, "i": i, "pid": x["pid"], "odd": _clean(text),
                "raw": repr(text.encode("utf-8", "surrogateescape") + b"\xff\xfe"),
                "path": "/tmp/\\udcff.txt", "nan": "nan",
                "nested": {"list": [1, 2.5, None, True, _clean(text)], "deeper": {"x": _clean(text)}},
            }
            if error:
                assert o["exception"].startswith("Traceback (most recent call last):\n")
                assert o["exception"].endswith(f"ValueError: bad {_clean(text)}")
                assert o["stack"].startswith("Stack (most recent call last):\n")
            else:
                assert o["exception"] is None and o["stack"] is None
        assert seen == {k: list(range(PER)) for k in range(WORKERS)}
        st = p.stats()
        assert st["sent"] == WORKERS * PER and st["dropped"] == 0
