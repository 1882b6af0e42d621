"""gunicorn, for real: ``mplog.integrations.gunicorn`` under load with worker recycling and
a HUP, TTIN/TTOU, a reload that changes the config, a SIGKILLed listener, Ctrl-C, an app
that configures logging as it is imported (with and without ``--preload``), the shipped
example, and the mistakes a config file can make.

Each test runs ``python -m gunicorn`` as its own process (session leader, so a failing test
kills the arbiter, its workers and the mplog listener with one ``killpg``), with a config
file that uses the documented two lines and an ``mplog.SocketHandler`` to the stdlib-wire
``Receiver`` of ``tests/helpers.py``. The WSGI app is ``examples/gunicorn/app.py`` (one
``example.app`` record per request, carrying the request id); one test runs the example's
own ``gunicorn.conf.py`` unchanged. gunicorn binds a Unix socket in a private directory
(no port to race for under ``pytest -n auto``), and the clients speak HTTP over it.

Nothing sleeps to synchronize: the tests wait for records to arrive at the receiver (or
for the process to exit), each with a deadline.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import psutil
import pytest

from tests.helpers import ROOT, Receiver, die_with_parent, env_with_root, wait_until

EXAMPLE = ROOT / "examples" / "gunicorn"
APP_LOGGER = "example.app"
RID = re.compile(r"rid=([\w-]+)")


# -- helpers ------------------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: pathlib.Path, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def get(sock: pathlib.Path, rid: str) -> tuple[int, str]:
    """One request on a connection of its own: (status, body)."""
    conn = UnixHTTPConnection(sock)
    try:
        conn.request("GET", f"/?rid={rid}", headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def run_requests(sock: pathlib.Path, rids: list[str], *, clients: int = 8,
                 at: dict[int, Callable[[], None]] | None = None) -> dict[str, tuple[int, str]]:
    """GET every rid from *clients* threads; ``at[n]()`` runs once n responses are in."""
    at = dict(at or {})
    results: dict[str, tuple[int, str]] = {}
    with ThreadPoolExecutor(clients) as pool:
        futures = {pool.submit(get, sock, rid): rid for rid in rids}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            action = at.pop(len(results), None)
            if action is not None:
                action()
    return results


CONFIG = """\
import mplog
from mplog.integrations.gunicorn import *

{handlers}

bind = "unix:{sock}"
pythonpath = {example!r}
wsgi_app = "app:app"
control_socket_disable = True
graceful_timeout = 10
{settings}
"""

HANDLER_LIST = """\
handler = mplog.SocketHandler("127.0.0.1", {port})
handler.retryStart, handler.retryMax = 0.05, {retry_max}
configure([handler], level={level!r})
"""

# A factory defined in the config file: gunicorn runs the file as module "__config__",
# which the listener process cannot import, so the integration ships it by value.
HANDLER_FACTORY = """\
def handlers():
    handler = mplog.SocketHandler("127.0.0.1", {port})
    handler.retryStart, handler.retryMax = 0.05, {retry_max}
    return [handler]

configure(handlers, level={level!r})
"""


def write_config(path: pathlib.Path, sock: pathlib.Path, handlers: str, **settings: Any) -> pathlib.Path:
    text = CONFIG.format(
        handlers=handlers, sock=sock, example=str(EXAMPLE),
        settings="\n".join(f"{k} = {v!r}" for k, v in settings.items()),
    )
    path.write_text(text, encoding="utf-8")
    return path


class Gunicorn:
    """``python -m gunicorn`` in a session of its own; output in a file."""

    def __init__(self, rundir: pathlib.Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.sock = rundir / "http.sock"
        self.log = rundir / "gunicorn.out"
        full_env = env_with_root()
        full_env["XDG_RUNTIME_DIR"] = str(rundir)  # gunicorn's control socket, if enabled
        full_env.update(env or {})
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", *args],
                cwd=rundir, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            )
        self.pid = self.proc.pid

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_listening(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.output()}")
            # The file exists from bind() on, a moment before listen(): connect to know.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(self.sock))
                except (FileNotFoundError, ConnectionRefusedError):
                    return False
            return True

        wait_until(ready, timeout, "gunicorn to listen")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"gunicorn did not exit in {timeout} s:\n{self.output()}") from None

    def terminate(self, timeout: float = 30.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def left_behind(self) -> list[psutil.Process]:
        """Live processes of gunicorn's session: workers, the listener, helpers."""
        out = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == self.pid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except (OSError, psutil.Error):
                continue
        return out

    def assert_nothing_left(self) -> None:
        wait_until(lambda: not self.left_behind(), 10, "gunicorn's processes to be gone")

    def kill_group(self) -> None:
        """Whatever is left of the session (arbiter, workers, listener): SIGKILL, reaped."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def rundir() -> Iterator[pathlib.Path]:
    """A short private directory for Unix sockets (tmp_path can be too long for sun_path)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="mplog-gu-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def gunicorn(rundir: pathlib.Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def _start(*args: str, env: dict[str, str] | None = None) -> Gunicorn:
        g = Gunicorn(rundir, *args, env=env)
        started.append(g)
        return g

    yield _start
    for g in started:
        g.kill_group()  # a no-op for a gunicorn that exited: its session is empty by then


def by_name(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r["name"] == name]


def error_msgs(records: list[dict[str, Any]]) -> list[str]:
    return [r["msg"] for r in by_name(records, "gunicorn.error")]


def wait_shutdown_record(receiver: Receiver) -> list[dict[str, Any]]:
    """All records, once the arbiter's last one ("Shutting down: Master") arrived; records
    come in order over the one connection, so nothing logged before it is still on the way."""
    receiver.wait_records(1, 20, where=lambda r: r.get("msg") == "Shutting down: Master")
    return receiver.records()


def assert_clean_output(g: Gunicorn) -> None:
    """Nothing on the console: gunicorn's records went to the pipeline, and no process
    complained (no traceback, no warning of mplog's or multiprocess's at exit)."""
    assert g.output() == "", g.output()


# -- 1. load, recycling, HUP: every record once, one connection ------------------------------


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_every_request_logged_once_through_recycling_and_hup(
    tmp_path: pathlib.Path, rundir: pathlib.Path, receiver: Receiver, gunicorn, worker_class: str
) -> None:
    n = 2000
    cfg = write_config(
        tmp_path / "gunicorn.conf.py", rundir / "http.sock",
        HANDLER_LIST.format(port=receiver.port, retry_max=0.3, level="INFO"),
        workers=4, worker_class=worker_class, max_requests=100, max_requests_jitter=20,
        # gunicorn runs "sync" with threads > 1 as gthread: give threads to gthread only.
        **({"threads": 4} if worker_class == "gthread" else {}),
    )
    g = gunicorn("-c", str(cfg))
    g.wait_listening()
    rids = [f"{worker_class}-{i:05d}" for i in range(n)]
    results = run_requests(g.sock, rids, at={n // 3: lambda: g.signal(signal.SIGHUP)})
    assert g.terminate() == 0, g.output()
    g.assert_nothing_left()

    bad = {rid: res for rid, res in results.items() if res[0] != 200 or not res[1].startswith(rid + " ")}
    assert not bad, list(bad.items())[:5]
    records = wait_shutdown_record(receiver)

    # The app's record of every request, exactly once.
    app = by_name(records, APP_LOGGER)
    counts = collections.Counter(r["request_id"] for r in app)
    assert set(counts) == set(rids) and len(app) == n, (len(app), [k for k, c in counts.items() if c != 1][:5])
    # gunicorn's access record of every request, exactly once.
    access = collections.Counter(m.group(1) for r in by_name(records, "gunicorn.access") if (m := RID.search(r["msg"])))
    assert set(access) == set(rids) and sum(access.values()) == n, sum(access.values())

    # gunicorn's own records: startup, the HUP, recycling, shutdown, from arbiter and workers.
    msgs = error_msgs(records)
    for expected in ("Starting gunicorn", "Listening at: unix:", f"Using worker: {worker_class}",
                     "Handling signal: hup", "Hang up: Master", "Handling signal: term"):
        assert any(m.startswith(expected) for m in msgs), (expected, msgs[:20])
    booted = [m for m in msgs if m.startswith("Booting worker with pid")]
    served_by = {r["process"] for r in app}
    # A worker serves at most max_requests + jitter requests before it is replaced (a
    # gevent worker finishes the requests it has in flight when it reaches that count).
    least = n // 120 if worker_class != "gevent" else n // 240
    assert len(served_by) >= least and len(booted) >= len(served_by), (len(served_by), len(booted))
    assert any("Autorestarting worker" in m for m in msgs), "no worker was recycled"
    # The HUP came mid-run: requests were served before and after it.
    hup = next(r["created"] for r in by_name(records, "gunicorn.error") if r["msg"] == "Hang up: Master")
    assert min(r["created"] for r in app) < hup < max(r["created"] for r in app)
    # The HUP re-ran configure() with the same handlers: nothing to report, no second pipeline.
    assert not by_name(records, "mplog.integrations.gunicorn"), by_name(records, "mplog.integrations.gunicorn")
    assert receiver.connections() == 1
    assert_clean_output(g)


# -- 2. TTIN/TTOU, and a HUP that changes the handlers and the level ------------------------


def test_ttin_ttou_and_a_reload_that_changes_the_config(
    tmp_path: pathlib.Path, rundir: pathlib.Path, receiver: Receiver, gunicorn
) -> None:
    path = tmp_path / "gunicorn.conf.py"
    sock = rundir / "http.sock"
    write_config(path, sock, HANDLER_FACTORY.format(port=receiver.port, retry_max=0.3, level="INFO"), workers=2)
    g = gunicorn("-c", str(path))
    g.wait_listening()

    def msgs() -> list[str]:
        return error_msgs(receiver.records())

    def pids(prefix: str) -> set[int]:
        return {int(re.findall(r"\d+", m)[-1]) for m in msgs() if m.startswith(prefix)}

    def alive() -> set[int]:
        return pids("Booting worker with pid") - pids("Worker exiting")

    wait_until(lambda: len(alive()) == 2, 30, "2 workers booted")
    g.signal(signal.SIGTTIN)
    wait_until(lambda: len(alive()) == 3, 30, "TTIN: a third worker")
    g.signal(signal.SIGTTIN)
    wait_until(lambda: len(alive()) == 4, 30, "TTIN: a fourth worker")
    g.signal(signal.SIGTTOU)
    wait_until(lambda: len(alive()) == 3 and len(pids("Worker exiting")) == 1, 30, "TTOU: one worker less")
    before = run_requests(sock, [f"before-{i}" for i in range(60)], clients=4)
    assert {s for s, _ in before.values()} == {200}
    receiver.wait_records(60, 20, where=lambda r: r["name"] == APP_LOGGER)

    # Changed handlers and level, then HUP: the pipeline keeps running (same connection),
    # says the handlers need a restart, and the new workers log at the new level.
    old = alive()
    write_config(path, sock, HANDLER_FACTORY.format(port=receiver.port, retry_max=0.5, level="WARNING"), workers=2)
    g.signal(signal.SIGHUP)
    warning = receiver.wait_records(1, 30, where=lambda r: r["name"] == "mplog.integrations.gunicorn")[0]
    assert warning["levelname"] == "WARNING" and "handlers" in warning["msg"] and "restart gunicorn" in warning["msg"], warning
    assert "level" not in warning["msg"]
    wait_until(lambda: not (old & alive()) and len(alive()) == 2, 30, "the reload to replace every worker")
    after = run_requests(sock, [f"after-{i}" for i in range(20)], clients=4)
    assert {s for s, _ in after.values()} == {200}

    # A reload with a broken configure(): an ERROR record, and the pipeline runs on.
    write_config(path, sock, "configure('stderr')", workers=2)
    g.signal(signal.SIGHUP)
    error = receiver.wait_records(1, 30, where=lambda r: r["name"] == "mplog.integrations.gunicorn" and r["levelname"] == "ERROR")[0]
    assert "the running pipeline is kept: handlers must be a list" in error["msg"], error
    last = run_requests(sock, [f"last-{i}" for i in range(5)], clients=2)
    assert {s for s, _ in last.values()} == {200}
    assert g.terminate() == 0, g.output()
    g.assert_nothing_left()

    records = wait_shutdown_record(receiver)
    app = by_name(records, APP_LOGGER)
    assert sorted(r["request_id"] for r in app) == sorted(before), "INFO records after the reload to WARNING"
    access = [m.group(1) for r in by_name(records, "gunicorn.access") if (m := RID.search(r["msg"]))]
    assert sorted(access) == sorted([*before, *after, *last])  # gunicorn.access has its own level
    assert receiver.connections() == 1
    assert_clean_output(g)


# -- 3. the listener dies under gunicorn; Ctrl-C reaches every process ---------------------


def listener_pids(g: Gunicorn) -> list[int]:
    found = []
    for p in psutil.Process(g.pid).children():
        with contextlib.suppress(psutil.Error):  # a process that is just ending
            is_listener = p.name() == "mplog-listener" or "spawn_main" in " ".join(p.cmdline())
            if is_listener and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
    return found


def kill_the_listener_then_finish(g: Gunicorn, receiver: Receiver, first: list[str], more: int) -> None:
    """SIGKILL the listener (records for *first* delivered), wait for the new one, make
    *more* requests, stop gunicorn: every request's record arrived once, nothing else was
    said on the console."""
    (old,) = listener_pids(g)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: listener_pids(g) not in ([], [old]), 30, "a new listener")
    wait_until(lambda: receiver.connections() == 2, 30, "the new listener's connection")
    second = [f"second-{i}" for i in range(more)]
    assert {s for s, _ in run_requests(g.sock, second, clients=4).values()} == {200}
    assert g.terminate() == 0, g.output()
    g.assert_nothing_left()
    records = wait_shutdown_record(receiver)
    assert sorted(r["request_id"] for r in by_name(records, APP_LOGGER)) == sorted(first + second)
    # The kill is the test's: the supervisor may say what the dead listener held (its
    # counters can be 20 ms old, so records delivered in that moment are included).
    out = "".join(line for line in g.output().splitlines(keepends=True)
                  if not re.match(r"mplog: the listener \(pid \d+\) ended with exit code (-9|None); up to \d+ records", line))
    assert out == "", out


def test_listener_sigkilled_under_gunicorn_is_restarted(
    tmp_path: pathlib.Path, rundir: pathlib.Path, receiver: Receiver, gunicorn
) -> None:
    """The listener is the arbiter's child, and the arbiter reaps with waitpid(-1): the
    supervisor must still notice the death and start a new listener."""
    cfg = write_config(tmp_path / "gunicorn.conf.py", rundir / "http.sock",
                       HANDLER_LIST.format(port=receiver.port, retry_max=0.3, level="INFO"), workers=2)
    g = gunicorn("-c", str(cfg))
    g.wait_listening()
    first = [f"first-{i}" for i in range(20)]
    run_requests(g.sock, first, clients=4)
    receiver.wait_records(len(first), 20, where=lambda r: r["name"] == APP_LOGGER)

    kill_the_listener_then_finish(g, receiver, first, 20)


@pytest.mark.skipif(os.geteuid() != 0, reason="gunicorn's user setting needs root")
def test_workers_run_as_another_user_reconnect_to_a_restarted_listener(
    tmp_path: pathlib.Path, rundir: pathlib.Path, receiver: Receiver, gunicorn
) -> None:
    """gunicorn started as root with ``user = "nobody"``: each worker connected as root (it
    logs before gunicorn drops its privileges) and kept working, until the listener was
    restarted: the new intake socket was root's alone, and every worker record went to
    stderr as "listener unreachable". The integration now hands the intake to gunicorn's
    user (``worker_user=``)."""
    cfg = write_config(tmp_path / "gunicorn.conf.py", rundir / "http.sock",
                       HANDLER_LIST.format(port=receiver.port, retry_max=0.3, level="INFO"),
                       workers=2, user="nobody", group="nogroup")
    g = gunicorn("-c", str(cfg))
    g.wait_listening()

    def workers() -> list[psutil.Process]:
        return [p for p in psutil.Process(g.pid).children() if p.uids().real == 65534]

    wait_until(lambda: len(workers()) == 2, 30, "two workers running as nobody")
    first = [f"first-{i}" for i in range(10)]
    run_requests(g.sock, first, clients=4)
    receiver.wait_records(len(first), 20, where=lambda r: r["name"] == APP_LOGGER)
    kill_the_listener_then_finish(g, receiver, first, 10)


def test_ctrl_c_to_the_whole_process_group(
    tmp_path: pathlib.Path, rundir: pathlib.Path, receiver: Receiver, gunicorn
) -> None:
    """A terminal's Ctrl-C: SIGINT to the arbiter, the workers and mplog's processes at once."""
    cfg = write_config(tmp_path / "gunicorn.conf.py", rundir / "http.sock",
                       HANDLER_LIST.format(port=receiver.port, retry_max=0.3, level="INFO"), workers=2)
    g = gunicorn("-c", str(cfg))
    g.wait_listening()
    rids = [f"int-{i}" for i in range(20)]
    run_requests(g.sock, rids, clients=4)
    os.killpg(g.pid, signal.SIGINT)
    assert g.wait() == 0, g.output()
    g.assert_nothing_left()
    records = wait_shutdown_record(receiver)
    assert sorted(r["request_id"] for r in by_name(records, APP_LOGGER)) == sorted(rids)
    assert "Handling signal: int" in error_msgs(records)
    assert receiver.connections() == 1
    assert_clean_output(g)


# -- 4. the example, as shipped ---------------------------------------------------------------


def test_the_example_config_runs_as_documented(rundir: pathlib.Path, receiver: Receiver, gunicorn) -> None:
    sock = rundir / "http.sock"
    g = gunicorn("-c", str(EXAMPLE / "gunicorn.conf.py"), "--bind", f"unix:{sock}", "--pid", str(rundir / "pid"),
                 env={"MPLOG_RECEIVER": f"127.0.0.1:{receiver.port}"})
    g.wait_listening()
    rids = [f"example-{i}" for i in range(20)]
    results = run_requests(sock, rids, clients=4)
    assert {s for s, _ in results.values()} == {200}
    assert g.terminate() == 0, g.output()
    g.assert_nothing_left()
    records = wait_shutdown_record(receiver)
    assert sorted(r["request_id"] for r in by_name(records, APP_LOGGER)) == sorted(rids)
    assert len(by_name(records, "gunicorn.access")) == len(rids)
    assert receiver.connections() == 1
    assert_clean_output(g)


# -- 5. an app that configures logging as it is imported ------------------------------------


SELF_CONFIGURING_APP = """\
import logging.config

# What many apps do at import: a root handler of their own (here: stderr).
logging.config.dictConfig({
    "version": 1,
    "formatters": {"plain": {"format": "app-console %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"level": "INFO", "handlers": ["console"]},
})
log = logging.getLogger("selfconf.app")


def app(environ, start_response):
    log.info("request %s", environ["QUERY_STRING"])
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""


@pytest.mark.parametrize("preload", [False, True], ids=["per-worker-import", "preload"])
def test_an_app_that_configures_logging_at_import_keeps_its_handler_and_the_pipeline(
    tmp_path: pathlib.Path, rundir: pathlib.Path, receiver: Receiver, gunicorn, preload: bool
) -> None:
    (tmp_path / "selfconf_app.py").write_text(SELF_CONFIGURING_APP, encoding="utf-8")
    cfg = write_config(
        tmp_path / "gunicorn.conf.py", rundir / "http.sock",
        HANDLER_LIST.format(port=receiver.port, retry_max=0.3, level="INFO"),
        workers=2, pythonpath=str(tmp_path), wsgi_app="selfconf_app:app", preload_app=preload,
    )
    g = gunicorn("-c", str(cfg))
    g.wait_listening()
    rids = [f"self-{i}" for i in range(20)]
    assert {s for s, _ in run_requests(g.sock, rids, clients=4).values()} == {200}
    assert g.terminate() == 0, g.output()
    g.assert_nothing_left()
    records = wait_shutdown_record(receiver)
    got = [m.group(1) for r in by_name(records, "selfconf.app") if (m := RID.search(r["msg"]))]
    assert sorted(got) == sorted(rids)
    assert len(by_name(records, "gunicorn.access")) == len(rids)
    # The app's own handler still has its records too: nothing was taken away.
    lines = g.output().splitlines()
    assert all(line.startswith("app-console ") for line in lines), g.output()  # and nothing else
    assert len([line for line in lines if line.startswith("app-console selfconf.app")]) == len(rids)
    assert receiver.connections() == 1


# -- 6. misconfiguration: a clear error and an exit, not a hang ------------------------------


MISCONFIGURED = {
    "no-configure": (
        "",
        "Error: mplog's gunicorn hooks are in use but configure() was not called: "
        "add `configure(handlers)` to the gunicorn config file",
    ),
    "bad-handlers": (
        "configure('stderr')",
        "handlers must be a list of logging.Handler or a callable returning one",
    ),
    "unknown-option": (
        "configure([mplog.SocketHandler('127.0.0.1', 9)], spool='/tmp')",
        "unknown option 'spool' for configure()",
    ),
    "factory-raises": (
        "configure(lambda: [1 / 0])",
        "Error: mplog could not start its pipeline: building the handlers failed: ZeroDivisionError",
    ),
    "own-hooks-not-chained": (
        textwrap.dedent("""\
            configure([mplog.SocketHandler('127.0.0.1', 9)])
            logger_class = "gunicorn.glogging.Logger"

            def on_starting(server):
                pass
        """),
        "call mplog.integrations.gunicorn.on_starting(server) from your on_starting hook",
    ),
}


@pytest.mark.parametrize("case", sorted(MISCONFIGURED))
def test_misconfiguration_fails_fast_with_the_fix(tmp_path: pathlib.Path, rundir: pathlib.Path, gunicorn, case: str) -> None:
    handlers, message = MISCONFIGURED[case]
    cfg = write_config(tmp_path / "gunicorn.conf.py", rundir / "http.sock", handlers, workers=1)
    g = gunicorn("-c", str(cfg))
    rc = g.wait(30)
    assert rc != 0
    assert message in g.output(), g.output()
    g.assert_nothing_left()
