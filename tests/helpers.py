"""Shared test helpers: a real receiver process, condition waits, leak checks."""

from __future__ import annotations

import array
import contextlib
import ctypes
import json
import math
import os
import pathlib
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

ROOT = pathlib.Path(__file__).resolve().parent.parent


def die_with_parent() -> None:  # preexec_fn: a crashed test run leaks no receiver
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll *cond* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Receiver:
    """``tests/receiver.py`` in its own process; records land in a JSON-lines file."""

    def __init__(self, tmp: pathlib.Path, port: int = 0) -> None:
        self.out = tmp / f"received-{time.monotonic_ns()}.jsonl"
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        # The file only grows (the receiver appends, also after a restart), so each look
        # parses only the lines added since the last one: a test polling a file that a
        # steady stream fills must not re-read it whole every 10 ms.
        self._events: list[dict[str, Any]] = []
        self._parsed_to = 0
        self._scanned_to = 0
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.receiver", "--port", str(self.port), "--out", str(self.out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=die_with_parent,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.kill()

    def _new_lines(self, since: int) -> tuple[bytes, int]:
        """The complete lines written after byte *since*, and the offset after them."""
        if not self.out.exists():
            return b"", since
        with self.out.open("rb") as f:
            f.seek(since)
            data = f.read()
        end = data.rfind(b"\n") + 1
        return data[:end], since + end

    def events(self) -> list[dict[str, Any]]:
        data, self._parsed_to = self._new_lines(self._parsed_to)
        self._events.extend(json.loads(line) for line in data.splitlines() if line.endswith(b"}"))
        return list(self._events)

    def records(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == "record"]

    def connections(self) -> int:
        return sum(1 for e in self.events() if e["event"] == "connect")

    def count(self) -> int:
        """Records received so far (cheap: counts lines, parses nothing)."""
        if not self.out.exists():
            return 0
        with self.out.open("rb") as f:
            return sum(1 for line in f if line.endswith(b'"event": "record"}\n'))

    def wait_records(self, n: int, timeout: float = 30.0, where: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            recs = self.records()
            if where is not None:
                recs = [r for r in recs if where(r)]
            return recs if len(recs) >= n else None

        return wait_until(enough, timeout, f"{n} records at the receiver")  # type: ignore[no-any-return]

    def wait_for_bytes(self, needle: bytes, timeout: float = 30.0) -> None:
        """Wait until *needle* appears in a line written after the last such wait.

        Scans the file's new bytes without parsing them, for tests whose stream is too
        large to keep as dicts. A later wait starts after the line that held *needle*.
        """

        def found() -> bool:
            data, end = self._new_lines(self._scanned_to)
            at = data.find(needle)
            if at < 0:
                self._scanned_to = end  # a needle holds no newline, so it never spans lines
                return False
            self._scanned_to += data.index(b"\n", at) + 1
            return True

        wait_until(found, timeout, f"{needle!r} at the receiver")


#: Helpers the stdlib's multiprocessing starts once per test process (by the tests' own
#: spawn/forkserver pools) and keeps for the life of that process, by design. mplog's own
#: helpers (the listener, multiprocess's resource tracker) are not in this list.
_STDLIB_HELPERS = ("from multiprocessing.resource_tracker import", "from multiprocessing.forkserver import")


def _is_stdlib_helper(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return any(h in cmd for h in _STDLIB_HELPERS)


def children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE or _is_stdlib_helper(p):
                continue
        except psutil.NoSuchProcess:
            continue
        out.append(p)
    return out


def assert_no_children(timeout: float = 10.0) -> None:
    """Every child process of the test has exited (waits up to *timeout*, then kills)."""
    deadline = time.monotonic() + timeout
    while True:
        left = children()
        if not left:
            return
        if time.monotonic() >= deadline:
            desc = [(p.pid, p.name(), p.cmdline()[:4]) for p in left]
            for p in left:
                p.kill()
            raise AssertionError(f"test left child processes behind: {desc}")
        time.sleep(0.02)


def env_with_root() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


class Serve:
    """``mplog serve`` as its own process, writing JSON lines to *out*."""

    def __init__(self, out: pathlib.Path, port: int = 0, *extra: str) -> None:
        self.out = out
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mplog", "serve", "--port", str(self.port), "--output", str(self.out), *self.extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            preexec_fn=die_with_parent,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), (line, self.proc.stderr.read() if self.proc.stderr else "")
        self.port = int(line.rsplit(":", 1)[1])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(20)
        self._close_pipes()
        return rc

    def stderr(self) -> str:
        return self._stderr

    _stderr = ""

    def _close_pipes(self) -> None:
        assert self.proc is not None
        if self.proc.stdout:
            self.proc.stdout.close()
        if self.proc.stderr:
            self._stderr += self.proc.stderr.read()
            self.proc.stderr.close()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.kill()

    def count(self) -> int:
        """Complete lines in the output so far (cheap: no JSON parsing)."""
        return self.out.read_bytes().count(b"\n") if self.out.exists() else 0

    def lines(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(x) for x in self.out.read_text(encoding="utf-8").splitlines() if x.endswith("}")]


def json_same(a: Any, b: Any) -> bool:
    """JSON-equal, with NaN equal to NaN, key order and exact types included."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(json_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


class IntakePeer:
    """The listener's side of one accepted intake connection, for tests that stand in for
    the listener: takes the record pipe (and ring) the worker's hello hands over
    (SCM_RIGHTS) and reads frames from the socket and the pipe (or ring), each split on
    its own."""

    def __init__(self, conn: socket.socket) -> None:
        from mplog._framing import FrameSplitter

        self.sock = conn
        self.pipe = -1
        self.ring: Any = None  # mplog._ring.Ring
        self.closed = False  # the worker closed its connection
        self.record_bytes = 0  # bytes read from the pipe
        self._socket_split = FrameSplitter()
        self._pipe_split = FrameSplitter()

    def poll(self, timeout: float) -> list[bytes]:
        """The frame bodies that arrive within *timeout* s (maybe none)."""
        watch = [self.sock] if self.pipe < 0 else [self.sock, self.pipe]
        if self.ring is not None:
            self.ring.sleep()  # a write rings the pipe
            if self.ring.pending():
                timeout = 0
        ready = select.select(watch, [], [], timeout)[0]
        bodies: list[bytes] = []
        if self.ring is not None:
            self.ring.wake()
        if self.pipe in ready or self.ring is not None:
            bodies += self._read_pipe()
        if self.sock in ready:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(8))
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i", payload[: len(payload) - len(payload) % 4])
                    self.pipe = fds[0]
                    os.set_blocking(self.pipe, False)
                    if len(fds) > 1:
                        from mplog._ring import Ring

                        self.ring = Ring.open(fds[1])
                        os.close(fds[1])
            if data:
                bodies += self._socket_split.feed(data)
            else:
                self.closed = True
                if self.pipe >= 0:
                    bodies += self._read_pipe()  # what the worker wrote before it closed
        return bodies

    def _read_pipe(self) -> list[bytes]:
        if self.ring is not None:
            with contextlib.suppress(BlockingIOError):
                os.read(self.pipe, 1 << 20)  # wake-ups
            data = self.ring.take(1 << 20)
        else:
            try:
                data = os.read(self.pipe, 1 << 20)
            except BlockingIOError:
                return []
        self.record_bytes += len(data)
        return self._pipe_split.feed(data) if data else []

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1
        self.sock.close()


class MplogWireClient:
    """A raw mplog-wire client on a real socket (any bodies, any seqs), for collector
    tests: *window* records may be unacknowledged."""

    SEQ = struct.Struct(">Q")

    def __init__(self, port: int, sender: str, key: bytes | None = None,
                 window: int = 1024) -> None:
        import socket

        from mplog._wires.mplog import ClientSession

        self.session = ClientSession(sender, key, window, nonce=os.urandom(16))
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.sendall(self.session.handshake())
        while not self.session.ready:
            self.session.receive(self.sock.recv(65536))

    def send(self, seq: int, body: bytes) -> bytes:
        """One record frame; returns the frame's bytes."""
        frame = self.session.frame(self.SEQ.pack(seq) + body)
        self.sock.sendall(frame)
        return frame

    def send_all(self, records: list[tuple[int, bytes]]) -> None:
        """All the frames in one send (the collector reads them in few, big reads)."""
        self.sock.sendall(b"".join(self.session.frame(self.SEQ.pack(s) + b) for s, b in records))

    def acked(self, count: int) -> None:
        """Read until *count* records (of those sent) are acknowledged."""
        got = 0
        while got < count:
            got += self.session.receive(self.sock.recv(65536))

    def refusal(self) -> str:
        """Read until the collector refuses and closes: its words."""
        import mplog

        try:
            while True:
                self.session.receive(self.sock.recv(65536))
        except mplog.ProtocolError as exc:
            return str(exc)

    def close(self) -> None:
        self.sock.close()


def connect_with_fds(address: str, fds: list[int]) -> socket.socket:
    """A connection to the intake whose hello carries *fds* (SCM_RIGHTS), as a worker's
    carries its record pipe."""
    from mplog._intake import HELLO

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(address)
    s.sendmsg([HELLO], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    return s


def read_to_eof(s: socket.socket) -> bytes:
    s.settimeout(10)
    data = b""
    while chunk := s.recv(100):
        data += chunk
    return data
