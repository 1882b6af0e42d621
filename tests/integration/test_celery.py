"""celery, end to end: ``mplog.integrations.celery.install()`` in a real worker.

Everything is real: a ``redis-server`` per test (broker and result backend), the example app
``examples/celery/tasks.py`` run by ``celery -A examples.celery.tasks worker`` as its own
process group, the example client ``examples/celery/client.py`` (a process that only sends
tasks) and the stdlib-wire receiver of ``tests/receiver.py``. Waits are conditions with
deadlines; a failing test kills the worker's whole process group.

What "no record logged before the kill is lost" means here: a pool process writes each
record to the listener before ``emit()`` returns, so a SIGKILL loses nothing it logged.
The tasks use celery's default early acknowledgement, so a task runs at most once and
each record is logged at most once: every record the receiver gets must be unique. A
``hello`` task whose result is SUCCESS logged its record before returning, so its record
must be there; only a task that was running in the killed process may end as a
``WorkerLostError`` failure, its record present or not (it may have died before logging).
The ``crash`` task logs ten records and SIGKILLs its own process: all ten must arrive.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import mplog
from tests.helpers import ROOT, Receiver, die_with_parent, env_with_root, wait_until
from tests.redis_server import RedisServer

TASKS = "examples.celery.tasks"
HELLO = f"{TASKS}.hello"
CRASH = f"{TASKS}.crash"
BASE_ARGS = ("--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO")


@pytest.fixture
def redis(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def _env(broker: str, receiver_port: int) -> dict[str, str]:
    env = env_with_root()
    env.pop(mplog.ENV_ADDRESS, None)  # the worker must start a pipeline of its own
    env.update(CELERY_BROKER_URL=broker, LOG_RECEIVER=f"127.0.0.1:{receiver_port}")
    return env


class Worker:
    """``celery -A <app> worker`` in its own process group; output in files under *tmp*."""

    def __init__(self, tmp: pathlib.Path, env: dict[str, str], *args: str, app: str = TASKS) -> None:
        self.nodename = f"mplog-{uuid.uuid4().hex[:8]}"
        self.out = tmp / f"{self.nodename}.out"
        self.err = tmp / f"{self.nodename}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", app, "worker", "-n", f"{self.nodename}@%h", *args],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        self.pid = self.proc.pid
        self.seen: dict[int, psutil.Process] = {}  # every descendant ever seen

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in found:
            self.seen.setdefault(p.pid, p)
        return found

    def listeners(self) -> list[psutil.Process]:
        """mplog listeners among the worker's descendants (multiprocess spawn children)."""
        out = []
        for p in self.descendants():
            try:
                # the kernel name mplog gives its listener (the cmdline is retitled
                # when setproctitle is installed)
                if p.name() == "mplog-listener" or "multiprocess.spawn" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (celery's warm shutdown) and wait for the worker to exit."""
        self.descendants()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Cleanup after a failure: SIGKILL the whole process group, and stragglers."""
        if self.proc.poll() is None:
            self.descendants()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(10)
        for p in self.seen.values():
            with contextlib.suppress(psutil.Error):
                p.kill()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _run_client(env: dict[str, str], count: int, *, crash: bool = False, timeout: float = 60.0) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "examples.celery.client", "--count", str(count), "--json",
            "--timeout", str(timeout)]
    if crash:
        args.append("--crash")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)


def _client_result(client: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = client.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        client.kill()
        client.communicate()
        raise
    assert client.returncode == 0, err
    result: dict[str, Any] = json.loads(out)
    # The client imported the app module, so install() ran there too: it started nothing.
    assert result["mplog"] == {"address": None, "queue_handlers": 0}, result["mplog"]
    return result


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _task_id(record: dict[str, Any]) -> str | None:
    data = record.get("data")
    if isinstance(data, dict) and isinstance(data.get("id"), str):
        return data["id"]
    m = re.search(r"\[([0-9a-f-]{36})\]", record["msg"])
    return m.group(1) if m else None


def _count(receiver: Receiver, needle: bytes) -> int:
    """Lines of the receiver's file containing *needle* (cheap: no JSON parsing)."""
    return receiver.out.read_bytes().count(needle) if receiver.out.exists() else 0


def _wait_ready(worker: Worker, receiver: Receiver) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        assert worker.proc.poll() is None, f"the worker exited:\n{worker.stderr()[-3000:]}"
        for r in receiver.records():
            if r["name"] == "celery.apps.worker" and r["msg"].endswith(" ready."):
                return r
        return None

    record: dict[str, Any] = wait_until(ready, 40, "celery's 'ready.' record at the receiver")
    assert record["msg"].startswith(f"{worker.nodename}@"), record
    assert record["process"] == worker.pid
    return record


def _check_run(worker: Worker, receiver: Receiver, result: dict[str, Any],
               killed: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Stop the worker, then check what every run must satisfy; return the facts found.

    *killed*: the pool processes SIGKILLed during the run.
    """
    listeners = worker.listeners()
    assert len(listeners) == 1, f"one pipeline per worker, found {len(listeners)} listeners"
    assert worker.terminate() == 0, worker.stderr()[-3000:]
    # The pipeline stopped with the worker: its listener (and everything else) is gone.
    wait_until(lambda: not any(_alive(p) for p in worker.seen.values()), 10,
               "the worker's processes to be gone")

    tasks = result["tasks"]
    ok = {row[0]: row[2] for row in tasks if row[3] == "SUCCESS"}  # task id -> uid
    ok_uids = set(ok.values())
    hello_ok = [row for row in tasks if row[1] == HELLO and row[3] == "SUCCESS"]
    # The worker's pipeline delivered everything before it stopped; wait for the receiver
    # to have read all of it.
    receiver.wait_records(len(hello_ok), 20, where=lambda r: r["name"] == TASKS and r.get("uid") in ok_uids)
    records = receiver.records()

    hello = [r for r in records if r["name"] == TASKS and r["msg"].startswith("hello ")]
    per_uid = collections.Counter(r["uid"] for r in hello)
    dups = {u: n for u, n in per_uid.items() if n > 1}
    assert not dups, f"records delivered more than once: {dups}"
    missing = ok_uids - set(per_uid) - {row[2] for row in tasks if row[1] == CRASH}
    assert not missing, f"{len(missing)} succeeded tasks have no record, e.g. {sorted(missing)[:5]}"
    assert set(per_uid) <= {row[2] for row in tasks}, "records of tasks nobody sent"
    # Each task's records carry its id and name, as celery's TaskFormatter would show them.
    id_of = {row[2]: row[0] for row in tasks}
    wrong = [r for r in hello if r.get("task_id") != id_of[r["uid"]] or r.get("task_name") != HELLO]
    assert not wrong, f"{len(wrong)} task records without their task id/name, e.g. {wrong[:1]}"
    assert not any("task_id" in r for r in records if r["name"] == "celery.worker.strategy")

    # celery's own records: the main process's "received" and the pool's "succeeded" (the
    # latter from the process that ran the task), once per task.
    received = collections.Counter(_task_id(r) for r in records
                                   if r["name"] == "celery.worker.strategy" and " received" in r["msg"])
    assert received == collections.Counter(row[0] for row in tasks), "'received' records"
    succeeded = collections.Counter(_task_id(r) for r in records
                                    if r["name"] == "celery.app.trace" and " succeeded in " in r["msg"])
    assert max(succeeded.values()) == 1 and set(succeeded) <= set(ok), "'succeeded' records"
    # celery logs "succeeded" after it stored the result: a process SIGKILLed in between
    # never logged it. That may happen to one task per killed process, no other.
    pid_of = {r["uid"]: r["process"] for r in hello}
    unlogged = collections.Counter(pid_of[ok[t]] for t in set(ok) - set(succeeded))
    assert set(unlogged) <= killed and max(unlogged.values(), default=0) <= 1, unlogged
    assert all(r["process"] == worker.pid for r in records if r["name"] == "celery.worker.strategy")
    assert any(r["name"] == "celery.worker.consumer.connection" and r["msg"].startswith("Connected to redis://")
               for r in records)

    assert receiver.connections() == 1, "the worker's pipeline has exactly one connection"
    err = worker.stderr()
    assert "mplog:" not in err, err[-3000:]  # no record fell back to stderr
    assert "Traceback" not in err, err[-3000:]
    return {"hello": hello, "records": records, "pids": {r["process"] for r in hello}}


# -- prefork: 1,000 tasks, a pool process SIGKILLed from outside, one killing itself --------


def test_prefork_1000_tasks_while_pool_processes_are_killed(tmp_path: pathlib.Path, redis: RedisServer,
                                                           receiver: Receiver) -> None:
    env = _env(redis.url, receiver.port)
    with Worker(tmp_path, env, "--pool", "prefork", "--concurrency", "4", *BASE_ARGS) as worker:
        _wait_ready(worker, receiver)
        client = _run_client(env, 1000, crash=True, timeout=90)

        # Mid-run: SIGKILL the pool process that logged the latest task record so far (not
        # the one the crash task may have killed already).
        wait_until(lambda: _count(receiver, b'"msg": "hello ') >= 200, 60, "200 task records")
        before = [r for r in receiver.records() if r["name"] == TASKS]
        crashed = {r["process"] for r in before if r["msg"].startswith("crash ")}
        pool = {p.pid for p in worker.descendants()} - {p.pid for p in worker.listeners()}
        victim = 0
        for pid in dict.fromkeys(r["process"] for r in reversed(before)):
            if pid in pool and pid not in crashed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    victim = pid
                    break
        assert victim, (pool, before[-5:])
        pids_before_kill = {r["process"] for r in before}

        result = _client_result(client, 120)
        crashed = {r["process"] for r in receiver.records() if r["name"] == TASKS and r["msg"].startswith("crash ")}
        facts = _check_run(worker, receiver, result, killed=frozenset({victim, *crashed}))

    tasks = result["tasks"]
    assert len(tasks) == 1001
    states = collections.Counter((row[1], row[3], row[4]) for row in tasks)
    assert states[(CRASH, "FAILURE", "WorkerLostError")] == 1, states
    lost = [row for row in tasks if row[1] == HELLO and row[3] != "SUCCESS"]
    # Only the task running in the killed process (if it was running one) may be lost:
    # celery's default (fair) scheduling gives a pool process one task at a time.
    assert len(lost) <= 1 and all(row[3:] == ["FAILURE", "WorkerLostError"] for row in lost), lost
    assert len(facts["hello"]) >= 999

    # The crash task's ten records, logged right before its process SIGKILLed itself.
    crash = [r for r in facts["records"] if r["name"] == TASKS and r["msg"].startswith("crash ")]
    assert [r["i"] for r in crash] == list(range(10)), crash
    assert len({r["process"] for r in crash}) == 1

    # billiard's report of each killed process reached the pipeline too (celery's own setup
    # would have routed it; install() does the same).
    dead = {int(m.group(1)) for r in facts["records"] if r["name"] == "multiprocessing"
            for m in [re.search(r"pid:(\d+) exited with 'signal 9 \(SIGKILL\)'", r["msg"])] if m}
    assert {victim, crash[0]["process"]} <= dead, dead
    # The processes billiard forked to replace the victim (and the crashed one) were
    # configured: they logged too (test_pools[prefork-recycled] checks this at length).
    loggers = {r["process"] for r in facts["records"] if r["name"] == TASKS}
    assert loggers - pids_before_kill, "no record from a pool process forked after the kill"


# -- other pools: threads, solo, gevent, prefork started by spawn, prefork recycling processes


@pytest.mark.parametrize(
    ("pool", "args"),
    [
        pytest.param(name, args, id=name)
        for name, args in [
            ("threads", ("--pool", "threads", "--concurrency", "4")),
            ("solo", ("--pool", "solo")),
            ("gevent", ("--pool", "gevent", "--concurrency", "4")),
            ("prefork-spawn", ("--pool", "prefork", "--concurrency", "2", "--pool-start-method", "spawn")),
            ("prefork-recycled", ("--pool", "prefork", "--concurrency", "2", "--max-tasks-per-child", "10")),
        ]
    ],
)
def test_pools(pool: str, args: tuple[str, ...], tmp_path: pathlib.Path, redis: RedisServer,
               receiver: Receiver) -> None:
    env = _env(redis.url, receiver.port)
    with Worker(tmp_path, env, *args, *BASE_ARGS) as worker:
        _wait_ready(worker, receiver)
        result = _client_result(_run_client(env, 100, timeout=60), 90)
        facts = _check_run(worker, receiver, result)

    assert [row[3] for row in result["tasks"]] == ["SUCCESS"] * 100
    assert len(facts["hello"]) == 100
    names = {r["processName"] for r in facts["hello"]}
    if pool in ("threads", "solo", "gevent"):
        assert facts["pids"] == {worker.pid}, "tasks run in the worker's main process"
    else:
        assert worker.pid not in facts["pids"]
        assert all(n.startswith("SpawnPoolWorker-" if pool == "prefork-spawn" else "ForkPoolWorker-")
                   for n in names), names
    if pool == "prefork-recycled":
        # Each pool process runs 10 tasks, exits (os._exit) and is replaced by a new fork.
        assert len(facts["pids"]) >= 10, facts["pids"]


@functools.cache
def _nobody_cannot_run_python() -> str:
    """Why a process of user nobody cannot run this interpreter ("" if it can): celery's
    --uid runs the worker as nobody, and mplog's listener is a new interpreter (spawn).
    A pyenv under /root (mode 700), as on the machines this suite was written on, is
    out of nobody's reach."""
    if os.geteuid() != 0:
        return "celery's --uid needs root"

    def drop() -> None:
        os.setgid(65534)
        os.setuid(65534)

    try:
        run = subprocess.run([sys.executable, "-c", "import _posixshmem, ssl"], preexec_fn=drop,
                             capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"user nobody cannot run {sys.executable}: {exc}"
    if run.returncode:
        return f"user nobody cannot run {sys.executable}: {run.stderr.strip()[-200:]}"
    return ""


@pytest.mark.skipif(bool(_nobody_cannot_run_python()), reason=_nobody_cannot_run_python() or "-")
def test_a_worker_started_as_root_with_uid_survives_a_listener_kill(tmp_path: pathlib.Path, redis: RedisServer,
                                                                    receiver: Receiver) -> None:
    """``celery worker --uid nobody`` started as root: celery drops its privileges before
    ``worker_init``, so the listener is nobody's like the pool processes, and one SIGKILLed
    between two batches of tasks is replaced by one the pool processes can reach (no
    ``worker_user=`` needed, unlike gunicorn's ``user``)."""
    env = _env(redis.url, receiver.port)
    nobody = 65534
    args = ("--pool", "prefork", "--concurrency", "2", "--uid", "nobody", "--gid", "nogroup")
    with Worker(tmp_path, env, *args, *BASE_ARGS) as worker:
        _wait_ready(worker, receiver)
        (old,) = worker.listeners()
        pool = [p for p in worker.descendants() if p.pid != old.pid]
        assert old.uids().real == nobody and pool and all(p.uids().real == nobody for p in pool)

        def hello_uids() -> list[str]:
            return [r["uid"] for r in receiver.records() if r["name"] == TASKS and r["msg"].startswith("hello ")]

        first = _client_result(_run_client(env, 30), 90)["tasks"]
        wait_until(lambda: len(hello_uids()) >= 30, 30, "the first batch's records")
        old.kill()
        wait_until(lambda: worker.listeners() not in ([], [old]), 30, "a new listener")
        (new,) = worker.listeners()
        assert new.uids().real == nobody
        second = _client_result(_run_client(env, 30), 90)["tasks"]
        assert [row[3] for row in first + second] == ["SUCCESS"] * 60
        wait_until(lambda: len(hello_uids()) >= 60, 30, "the second batch's records")
        assert worker.terminate() == 0, worker.stderr()[-3000:]
        wait_until(lambda: not any(_alive(p) for p in worker.seen.values()), 10,
                   "the worker's processes to be gone")

    assert sorted(hello_uids()) == sorted(row[2] for row in first + second), "each task's record once"
    assert receiver.connections() == 2, "one connection per listener"
    # The kill is the test's: the supervisor may say what the dead listener held.
    err = "".join(line for line in worker.stderr().splitlines(keepends=True)
                  if not re.match(r"mplog: the listener \(pid \d+\) ended with exit code (-9|None); up to \d+ records", line))
    assert "mplog:" not in err and "Traceback" not in err, err[-3000:]


# -- misconfiguration --------------------------------------------------------------------


BAD_APP = """
import mplog
from celery import Celery
from mplog.integrations.celery import install

app = Celery("bad_app", broker="redis://127.0.0.1:9/0")
install(app, handlers=[mplog.SocketHandler("127.0.0.1", 9)], address={address!r})
"""


def test_a_worker_that_cannot_start_its_pipeline_fails_with_config_error(tmp_path: pathlib.Path) -> None:
    """What only start() can check (here: the address) stops the worker at start-up."""
    (tmp_path / "bad_app.py").write_text(BAD_APP.format(address=str(tmp_path / "no-such-dir" / "s.sock")))
    env = env_with_root()
    env.pop(mplog.ENV_ADDRESS, None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    t0 = time.monotonic()
    with Worker(tmp_path, env, "--pool", "solo", *BASE_ARGS, app="bad_app") as worker:
        rc = worker.proc.wait(60)
        err = worker.stderr()
        assert rc != 0, err
        assert "mplog._errors.ConfigError" in err or "ConfigError" in err, err
        assert "no-such-dir" in err and "does not exist" in err, err
        assert not worker.descendants()
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"app": "not an app"}, "needs a celery.Celery app"),
        ({"handlers": "not handlers"}, "handlers must be"),
        ({"handlers": [object()]}, "handlers must be logging.Handler"),
        ({"install": False}, "install= is not an option"),
        ({"nonsense": 1, "bogus": 2}, "unknown options 'bogus', 'nonsense'"),
        ({"level": "LOUD"}, "unknown level"),
        ({"start_method": "thread"}, "start_method must be one of"),
        ({"handlers": None}, "needs handlers or config=, and not both"),
        ({"config": {"version": 1, "root": {"handlers": ["h"]}}}, "needs handlers or config=, and not both"),
        ({"handlers": None, "config": {"version": 2}}, '"version": 1'),
    ],
    ids=["app", "handlers-type", "handler-item", "install", "unknown", "level", "start-method",
         "neither", "both", "config"],
)
def test_install_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    from celery import Celery

    from mplog.integrations import celery as integration

    args: dict[str, Any] = {"app": Celery("t", set_as_current=False),
                            "handlers": [mplog.SocketHandler("127.0.0.1", 9)], **kwargs}
    with pytest.raises(mplog.ConfigError, match=re.escape(message)):
        integration.install(**args)
    assert integration._settings is None, "a rejected install() must change nothing"
