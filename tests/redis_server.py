"""A real ``redis-server`` for tests: its own port and directory, no persistence.

    server = RedisServer(tmp_path)      # started; answers PING
    server.url                          # "redis://127.0.0.1:PORT/0"
    server.stop()                       # SIGTERM, waited for (SIGKILL if it hangs)

redis cannot report a port it picked itself, so a free port is found by binding port 0 and
releasing it; if another process takes it first, redis exits with "Address already in use"
and the next free port is tried. The server dies with the test process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import time

from tests.helpers import die_with_parent

#: Debian's package puts it here; PATH is searched too.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0
ATTEMPTS = 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process in *tmp* (its directory and log file)."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.dir = tmp / f"redis-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.log = self.dir / "redis.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(ATTEMPTS):
            if self._try_start(_free_port()):
                return
        raise RuntimeError(f"redis-server did not start in {ATTEMPTS} attempts:\n{self.tail()}")

    def _try_start(self, port: int) -> bool:
        argv = [
            REDIS_SERVER,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--logfile", str(self.log),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
        ]
        proc = subprocess.Popen(
            argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # e.g. the port was taken meanwhile
                return False
            if _pong(port):
                self.port, self.proc = port, proc
                return True
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        raise RuntimeError(f"redis-server did not answer PING in {START_TIMEOUT} s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
