"""`mplog serve` against an attacker and a full disk, with real processes and sockets.

While each attack runs, a real mplog pipeline sends to the same collector over both
wires (``mplog.SocketHandler(wire="pickle")`` and ``wire="mplog"``) and must lose
nothing; the collector's RSS is sampled all along and must stay under the bound
``mplog._collector.memory_bound`` states (``docs/collector.md``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import pathlib
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import mplog
from mplog._collector import DIAG_BURST, DIAG_PERIOD, memory_bound
from tests.helpers import ROOT, die_with_parent, wait_until

MiB = 1024 * 1024


class _Serve:
    """``mplog serve`` whose stdout and stderr are read all along (a pipe nobody reads
    would hold the process), with its RSS sampled every 20 ms."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mplog", "serve", "--port", "0", *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.rss_max = 0
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()
        banner = wait_until(lambda: next((x for x in self.out + self.err
                                          if x.startswith(b"listening on ")), None),
                            30, "the banner")
        self.banner_on_stdout = bool(self.out) and self.out[0] == banner
        self.port = int(banner.rsplit(b":", 1)[1])
        self._ps = psutil.Process(self.proc.pid)
        self.rss_start = self._ps.memory_info().rss
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    @staticmethod
    def _pump(stream: Any, into: list[bytes]) -> None:
        for line in stream:
            into.append(line)

    def _sample(self) -> None:
        while self._sampling:
            try:
                self.rss_max = max(self.rss_max, self._ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)  # a sampling period, not a wait for a condition

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        return b"".join(self.err).decode("utf-8", "replace")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self._finish()
        return rc

    def _finish(self) -> None:
        self._sampling = False
        for t in self._readers:
            t.join(10)
        self._sampler.join(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._finish()
        for s in (self.proc.stdout, self.proc.stderr):
            if s:
                s.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., _Serve]]:
    started: list[_Serve] = []

    def _start(*args: str) -> _Serve:
        s = _Serve(*args)
        started.append(s)
        return s

    yield _start
    for s in started:
        s.stop()


class _Legit:
    """A real pipeline sending every record over both wires to the collector."""

    def __init__(self, start_pipeline: Callable[..., mplog.Pipeline], port: int) -> None:
        handlers = []
        for wire in ("pickle", "mplog"):
            h = mplog.SocketHandler("127.0.0.1", port, wire=wire)
            h.retryStart, h.retryMax = 0.05, 0.5
            handlers.append(h)
        self.pipeline = start_pipeline(handlers)
        self.log = logging.getLogger("hostile.legit")
        self.n = 0

    def send(self, count: int) -> None:
        for _ in range(count):
            self.log.warning("legit %d", self.n, extra={"i": self.n})
            self.n += 1

    def check(self, out: pathlib.Path) -> None:
        """Every record arrived exactly once over each wire (the stdlib wire too)."""
        assert self.pipeline.flush(90), self.pipeline.stats()
        st = self.pipeline.stats()
        assert st["dropped"] == 0, st
        # The stdlib wire has no acknowledgements: flushed means sent, not yet written.
        wait_until(lambda: _count(out, "hostile.legit") >= 2 * self.n, 30, "every record")
        mine = [r for r in _lines(out) if r.get("name") == "hostile.legit"]
        for wire, rows in (("mplog", [r for r in mine if "mplog_seq" in r]),
                           ("pickle", [r for r in mine if "mplog_seq" not in r])):
            got = sorted(r["i"] for r in rows)
            assert got == list(range(self.n)), f"{wire} wire: {len(got)} of {self.n} records"


def _lines(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_bytes().splitlines()]


def _count(path: pathlib.Path, name: str) -> int:
    # mplog-wire records are written as the sender's compact JSON, others with spaces.
    if not path.exists():
        return 0
    data = path.read_bytes()
    return sum(data.count(f'"name":{sep}"{name}"'.encode()) for sep in ("", " "))


def _closed_by_peer(sock: socket.socket, timeout: float = 15.0) -> bool:
    """True if the collector closed *sock* (EOF or reset) within *timeout*."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            continue  # an mplog-wire error frame comes before the close
    except TimeoutError:
        return False
    except OSError:
        return True  # reset: closed too
    return True


def _frame(body: bytes) -> bytes:
    return struct.pack(">L", len(body)) + body


def _memo_bomb(levels: int = 60) -> bytes:
    out = b"}X\x03\x00\x00\x00msgX\x01\x00\x00\x00xX\x01\x00\x00\x00k]X\xe8\x03\x00\x00"
    out += b"x" * 1000 + b"aq\x000"
    for i in range(levels):
        out += b"](h%ch%ceq%c0" % (i, i, i + 1)
    return b"(" + out[1:] + b"h%cd." % levels  # a DICT from MARK: msg, k


# Each: one small frame that ended `mplog serve` (or grew it past 1 GiB) before.
SMALL_ATTACKS = {
    "tuple key": pickle.dumps({"msg": "x", "extra": {(1, 2): 3}}, 1),
    "int of 5000 digits": pickle.dumps({"msg": "x", "n": 10**5000}, 2),  # LONG4: no str()
    "list nested 100,000 deep": b"}X\x01\x00\x00\x00k" + b"]" * 100_000 + b"a" * 99_999 + b"s.",
    "2**60 memo references": _memo_bomb(60),
    "2**22 memo references, shallow": _memo_bomb(22),
    "LONG_BINPUT 0x04000000": b"}r" + struct.pack("<I", 0x04000000) + b".",
    "global (os.system)": b"cos\nsystem\n(S'true'\ntR.",
}


def test_small_frames_neither_kill_nor_bloat_serve(tmp_path: pathlib.Path, serve, start_pipeline) -> None:
    out = tmp_path / "out.jsonl"
    srv = serve("--output", str(out))
    legit = _Legit(start_pipeline, srv.port)
    legit.send(300)
    for name, body in SMALL_ATTACKS.items():
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
                s.sendall(_frame(body))
                assert _closed_by_peer(s), f"{name}: connection not closed"
            assert srv.alive(), f"{name} killed mplog serve: {srv.stderr()[-2000:]}"
        legit.send(50)
    legit.check(out)
    assert srv.alive()
    # No attack holds a partial frame: the collector stays near its starting size.
    assert srv.rss_max < srv.rss_start + 64 * MiB, (srv.rss_start, srv.rss_max)
    assert srv.rss_max < memory_bound(), srv.rss_max
    assert srv.terminate() == 0
    err = srv.stderr()
    assert "Traceback" not in err
    summary = err.strip().splitlines()[-1]
    assert "stopped:" in summary and "bad_pickle=" in summary, summary
    n_bad = sum(int(x.split("=")[1].rstrip(",")) for x in summary.split()
                if x.startswith(("bad_pickle=", "bad_record=")))
    assert n_bad == 3 * len(SMALL_ATTACKS), summary


def test_partial_frames_capped_by_max_connections_and_idle_timeout(tmp_path: pathlib.Path, serve, start_pipeline) -> None:
    out = tmp_path / "out.jsonl"
    srv = serve("--output", str(out), "--max-connections", "64", "--idle-timeout", "4")
    legit = _Legit(start_pipeline, srv.port)
    legit.send(100)
    assert legit.pipeline.flush(30)  # both legit connections are open before the attack
    attackers: list[socket.socket] = []
    partial = struct.pack(">L", MiB) + b"\x80" * (MiB - 1)  # one byte short of a frame
    silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # sends nothing
    try:
        t_silent = time.monotonic()
        assert _closed_by_peer(silent, 15)
        assert 3.5 < time.monotonic() - t_silent < 10  # after --idle-timeout 4, not before
        for _ in range(250):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            attackers.append(s)
            with contextlib.suppress(OSError):  # refused ones are closed under us
                s.sendall(partial)
            legit.send(2)
        held = [s for s in attackers if not _closed_by_peer(s, 0.01)]
        assert 0 < len(held) <= 64, len(held)
        # A partial frame does not count as activity: the held ones are closed too.
        t0 = time.monotonic()
        assert all(_closed_by_peer(s, 15) for s in held)
        assert time.monotonic() - t0 < 10
    finally:
        silent.close()
        for s in attackers:
            s.close()
    legit.send(100)
    legit.check(out)
    bound = memory_bound(64)
    assert srv.rss_max < bound, f"RSS {srv.rss_max / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB"
    assert srv.terminate() == 0
    summary = srv.stderr().strip().splitlines()[-1]
    refused = dict(x.rstrip(",").split("=") for x in summary.split() if "=" in x)
    assert int(refused["max_connections"]) >= 250 - 64, summary
    assert int(refused["idle_timeout"]) >= len(held), summary


def test_text_output_cannot_be_forged(tmp_path: pathlib.Path, serve) -> None:
    out = tmp_path / "out.txt"
    srv = serve("--output", str(out), "--text")
    h = logging.handlers.SocketHandler("127.0.0.1", srv.port)
    forged = [
        {"msg": "one\n2026-01-01T00:00:00.000 CRITICAL root [x:1] fake\rthree\x1b[2J",
         "name": "n\nm", "levelname": "INFO", "user": "a b\nc", "k=v": "x"},
        {"msg": "time", "created": 1e17},
        {"msg": "time", "created": "not a time"},
        {"msg": "exc", "exc_text": "Traceback (most recent call last):\n  File\nValueError: x",
         "stack_info": "Stack:\n  here"},
        {"msg": "\u2028sep\u2029", "levelname": "\x9b31m"},
    ]
    try:
        for rec in forged:
            h.handle(logging.makeLogRecord(rec))
    finally:
        h.close()
    wait_until(lambda: out.exists() and out.read_bytes().count(b"\n") >= len(forged), what="lines")
    assert srv.alive()
    text = out.read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]
    assert len(lines) == len(forged), lines  # one record, one line
    assert not any(c in text for c in "\r\x1b\x9b\u2028\u2029")
    assert "one\\n2026-01-01T00:00:00.000 CRITICAL" in lines[0] and "fake\\rthree\\x1b[2J" in lines[0]
    assert "n\\nm" in lines[0] and 'user="a b\\nc"' in lines[0]
    assert lines[1].startswith("- ") and lines[2].startswith("- ")
    assert 'exc_text="Traceback (most recent call last):\\n  File\\nValueError: x"' in lines[3]
    assert 'stack_info="Stack:\\n  here"' in lines[3]
    assert srv.terminate() == 0


def test_stderr_is_escaped_bounded_and_rate_limited(tmp_path: pathlib.Path, serve, start_pipeline) -> None:
    from mplog._wires.mplog import MAGIC

    out = tmp_path / "out.jsonl"
    srv = serve("--output", str(out))
    legit = _Legit(start_pipeline, srv.port)
    huge = json.dumps({"sender": "s", "version": "\nmplog serve: forged\n" + "A" * 900_000}).encode()
    small = json.dumps({"sender": "s", "version": "\nmplog serve: forged\n"}).encode()
    n = 1500
    t0 = time.monotonic()
    for i in range(n):
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            if i % 2:
                hello = huge if i % 20 == 1 else small  # 75 lines of 900 KB before
                s.sendall(MAGIC + struct.pack(">L", len(hello) + 1) + b"H" + hello)
            else:  # a global whose name is a forged line
                s.sendall(_frame(b"cos\nsystem\nmplog serve: forged\n."))
            assert _closed_by_peer(s)
        if i % 10 == 0:
            legit.send(1)
    legit.check(out)
    assert srv.alive()
    assert srv.rss_max < memory_bound(), srv.rss_max
    assert srv.terminate() == 0
    elapsed = time.monotonic() - t0
    err = srv.stderr()
    lines = err.splitlines()
    # Four reasons here (connect, disconnect, bad_pickle, protocol): at most DIAG_BURST
    # lines each per window, plus one "suppressed" line; the banner and the summary.
    windows = int(elapsed // DIAG_PERIOD) + 2
    assert len(lines) <= windows * 4 * (DIAG_BURST + 1) + 2, (len(lines), elapsed)
    assert all(line.startswith(("mplog serve: ", "listening on ")) for line in lines), lines[:5]
    assert not any("mplog serve: forged" in line.split("mplog serve: ", 1)[-1][:20] for line in lines)
    assert max(len(line) for line in lines) < 400, max(len(line) for line in lines)
    assert len(err) < len(lines) * 400  # 1,500 bad connections: was 1.9 MB for 10,000
    assert "more" in err and "suppressed" in err
    assert "stopped:" in lines[-1] and "protocol=" in lines[-1] and "bad_pickle=" in lines[-1]


def test_records_on_stdout_are_only_records(tmp_path: pathlib.Path, serve, start_pipeline) -> None:
    srv = serve()  # --output -: records on stdout
    assert not srv.banner_on_stdout
    h = mplog.SocketHandler("127.0.0.1", srv.port, wire="mplog")
    p = start_pipeline([h])
    logging.getLogger("hostile.mplog").warning("over the mplog wire")
    assert p.flush(30)
    p.stop()
    h = logging.handlers.SocketHandler("127.0.0.1", srv.port)
    try:
        for i in range(20):
            h.handle(logging.makeLogRecord({"msg": f"m{i}\n", "levelno": 20, "i": i}))
    finally:
        h.close()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(_frame(b"cos\nsystem\n."))
        assert _closed_by_peer(s)
    wait_until(lambda: len(srv.out) >= 21, what="21 stdout lines")
    assert srv.terminate() == 0
    rows = [json.loads(line) for line in srv.out]  # `mplog serve | jq` works
    assert rows[0]["msg"] == "over the mplog wire" and "mplog_seq" in rows[0]
    assert [r["i"] for r in rows[1:]] == list(range(20))
    err = srv.stderr()
    assert err.startswith("listening on 127.0.0.1:")
    assert "connection from 127.0.0.1:" in err and "closed 127.0.0.1:" in err
    assert "(pickle wire)" in err and "(mplog wire, sender " in err
    assert err.strip().splitlines()[-1].startswith("mplog serve: stopped: 21 records written")


@pytest.fixture
def small_disk(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_holds_senders_and_loses_nothing(small_disk: pathlib.Path, serve, start_pipeline) -> None:
    out = small_disk / "out.jsonl"
    srv = serve("--output", str(out))
    legit = _Legit(start_pipeline, srv.port)
    legit.send(20)
    assert legit.pipeline.flush(30)
    filler = _fill(small_disk)
    probe = os.open(small_disk / "probe", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with pytest.raises(OSError):
            os.write(probe, b"x")
    finally:
        os.close(probe)
    legit.send(500)
    wait_until(lambda: "cannot write the output" in srv.stderr(), 30, "the stall line")
    assert not legit.pipeline.flush(2)  # held: nothing acknowledged that is not written
    assert srv.alive()
    filler.unlink()
    wait_until(lambda: "works again" in srv.stderr(), 30, "the resume line")
    legit.send(20)
    legit.check(out)
    assert srv.alive()
    assert srv.rss_max < memory_bound(), srv.rss_max
    assert srv.terminate() == 0
    err = srv.stderr()
    assert err.count("cannot write the output") == 1, err
    assert "Traceback" not in err
    assert "output failed 1 times" in err.strip().splitlines()[-1]


def _fill(disk: pathlib.Path) -> pathlib.Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):  # ENOSPC: full at this grain
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    return filler


def test_stopped_while_the_disk_is_full_nothing_acknowledged_is_lost(small_disk: pathlib.Path, tmp_path: pathlib.Path, serve, start_pipeline) -> None:
    srv = serve("--output", str(small_disk / "out.jsonl"))
    h = mplog.SocketHandler("127.0.0.1", srv.port, wire="mplog")
    h.retryStart, h.retryMax = 0.05, 0.5
    p = start_pipeline([h])
    log = logging.getLogger("hostile.stopped")
    _fill(small_disk)
    for i in range(50):
        log.warning("held %d", i, extra={"i": i})
    wait_until(lambda: "cannot write the output" in srv.stderr(), 30, "the stall line")
    assert not p.flush(1)
    assert srv.terminate() == 0  # SIGTERM while the output fails: still a clean exit
    summary = srv.stderr().strip().splitlines()[-1]
    assert "records read but NOT written" in summary, summary
    # None of them was acknowledged: the sender still has them, and a collector with a
    # working disk gets every one.
    out = tmp_path / "out.jsonl"
    srv2 = serve("--output", str(out), "--port", str(srv.port))
    assert p.flush(60), p.stats()
    got = [r["i"] for r in _lines(out) if r.get("name") == "hostile.stopped"]
    assert got == list(range(50))
    assert srv2.terminate() == 0


def test_a_reader_that_goes_away_stops_serve_and_nothing_acknowledged_is_lost(tmp_path: pathlib.Path) -> None:
    # `mplog serve | head -3`: once head exits, every write to stdout is EPIPE for good.
    # serve used to hold the records and retry every second for ever; it now stops, as a
    # filter does (exit 1), and what it did not write it never acknowledged.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mplog", "serve", "--port", "0"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    err: list[bytes] = []
    pump = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    pump.start()
    h = None
    try:
        banner = wait_until(lambda: next((x for x in err if x.startswith(b"listening on ")), None),
                            30, "the banner")
        h = mplog.SocketHandler("127.0.0.1", int(banner.rsplit(b":", 1)[1]), wire="mplog")
        log = logging.getLogger("hostile.head")
        log.propagate = False
        log.addHandler(h)
        for i in range(500):
            log.warning("r %d", i)
        assert proc.stdout is not None
        head = [proc.stdout.readline() for _ in range(3)]
        assert all(b'"msg":"r ' in line for line in head), head
        proc.stdout.close()  # the reader goes
        assert proc.wait(30) == 1
        pump.join(10)
        text = b"".join(err).decode()
        assert "the output's reader is gone (broken pipe): stopping" in text, text
        assert "mplog serve: stopped: " in text.strip().splitlines()[-1]
        st = h.stats()
        # Nothing lost: written and acknowledged, or still at the sender for another try.
        assert st["dropped"] == 0 and st["sent"] + st["buffered"] == 500, st
        assert st["buffered"] > 0, st
    finally:
        if h is not None:
            h.close_timeout = 0.1
            h.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        pump.join(10)
        assert proc.stderr is not None
        proc.stderr.close()
        if proc.stdout is not None:
            proc.stdout.close()
