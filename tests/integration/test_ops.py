"""Operators see a running pipeline: ``mplog stats``, ``mplog top`` (in a real terminal,
tmux), ``GET /metrics`` from the listener, and the listener's process name."""

from __future__ import annotations

import itertools
import json
import logging
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import mplog
from tests.helpers import ROOT, Receiver, env_with_root, wait_until

log = logging.getLogger("ops.test")


def _mplog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mplog", *args], cwd=ROOT, env=env or env_with_root(),
        capture_output=True, text=True, timeout=60,
    )


def _parse_human(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        assert sep, line
        out[key] = value.strip()
    return out


@pytest.fixture
def pipeline(start_pipeline: Any, receiver: Receiver) -> mplog.Pipeline:
    p: mplog.Pipeline = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)])
    return p


def test_stats_human_and_json(pipeline: mplog.Pipeline, receiver: Receiver) -> None:
    for i in range(57):
        log.warning("record %d", i)
    assert pipeline.flush(20)
    receiver.wait_records(57)

    human = _mplog("stats", pipeline.address)
    assert human.returncode == 0, human.stderr
    stats = _parse_human(human.stdout)
    assert list(stats)[:8] == ["received", "handled", "sent", "buffered", "dropped",
                               "reconnects", "connected", "restarts"]
    assert stats["received"] == stats["handled"] == stats["sent"] == "57"
    assert stats["buffered"] == stats["dropped"] == "0"
    assert stats["connected"] == "1"
    assert stats["pid"] == str(pipeline.pid)
    # aligned: every value starts in the same column
    columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in human.stdout.splitlines()}
    assert len(columns) == 1

    as_json = _mplog("stats", "--json", pipeline.address)
    assert as_json.returncode == 0, as_json.stderr
    (line,) = as_json.stdout.splitlines()
    sample = json.loads(line)
    assert sample["sent"] == sample["received"] == 57  # the stats, at the top level
    assert sample["listener_rss"] > 1_000_000
    assert abs(sample["time"] - time.time()) < 60

    # ADDRESS defaults to $MPLOG_ADDRESS (start() exported it)
    from_env = _mplog("stats", "--json", env=env_with_root())
    assert from_env.returncode == 0, from_env.stderr
    assert json.loads(from_env.stdout)["pid"] == pipeline.pid


def test_stats_watch_rates(pipeline: mplog.Pipeline) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mplog", "stats", "--json", "--watch", "0.5", pipeline.address],
        cwd=ROOT, env=env_with_root(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert "rates" not in first
        for i in range(300):
            log.warning("burst %d", i)
        assert pipeline.flush(20)
        # the samples after the burst: their received counts add up to 300 more, and
        # each sample's rate is its increase over the time between samples
        samples = [first]
        while samples[-1]["received"] < first["received"] + 300:
            samples.append(json.loads(proc.stdout.readline()))
        for a, b in itertools.pairwise(samples):
            dt = b["time"] - a["time"]
            expected = (b["received"] - a["received"]) / dt
            assert b["rates"]["received"] == pytest.approx(expected, rel=0.2, abs=1)
        assert any(s["rates"]["received"] > 0 for s in samples[1:])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def test_stats_human_watch_shows_rates(pipeline: mplog.Pipeline) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mplog", "stats", "--watch", "0.3", pipeline.address],
        cwd=ROOT, env=env_with_root(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        while sum(1 for line in seen if line.startswith("-- ")) < 3:  # two whole samples
            seen.append(proc.stdout.readline())
        assert any(line.startswith("received:") and "/s)" in line for line in seen), seen
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_stats_errors(tmp_path: pathlib.Path) -> None:
    gone = _mplog("stats", str(tmp_path / "nobody.sock"))
    assert gone.returncode == 1
    assert gone.stdout == ""
    assert len(gone.stderr.splitlines()) == 1
    assert gone.stderr.startswith("mplog stats: listener at ") and "unreachable" in gone.stderr

    env = env_with_root()
    env.pop(mplog.ENV_ADDRESS, None)
    none = _mplog("stats", env=env)
    assert none.returncode == 2
    assert none.stderr == "mplog stats: no address: give ADDRESS or set MPLOG_ADDRESS\n"

    bad = _mplog("stats", "--watch", "-1", "x")
    assert bad.returncode == 2
    assert "must be a positive number of seconds" in bad.stderr
    assert "Traceback" not in bad.stderr

    top = _mplog("top", str(tmp_path / "nobody.sock"))
    assert top.returncode == 1 and len(top.stderr.splitlines()) == 1


# -- Prometheus ---------------------------------------------------------------------------


def _scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = sample.value
    return out


def test_metrics_port_serves_pipeline_stats(start_pipeline: Any, receiver: Receiver) -> None:
    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)], metrics_port=0)
    port = p.stats()["metrics_port"]
    for i in range(41):
        log.warning("m %d", i)
    assert p.flush(20)
    metrics = _scrape(port)
    stats = p.stats()
    assert metrics["mplog_received_total"] == stats["received"] == 41
    assert metrics["mplog_handled_total"] == 41
    assert metrics["mplog_sent_total"] == 41
    assert metrics["mplog_dropped_total"] == 0
    assert metrics["mplog_buffered"] == 0
    assert metrics["mplog_connected"] == 1
    assert metrics["mplog_restarts_total"] == 0
    assert metrics["mplog_listener_resident_memory_bytes"] > 1_000_000
    # a scrape is a snapshot taken then, not a cached value
    log.warning("one more")
    assert p.flush(20)
    assert _scrape(port)["mplog_received_total"] == 42
    p.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_metrics_port_in_use_is_a_config_error(start_pipeline: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(mplog.ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_pipeline([logging.NullHandler()], metrics_port=port, install=False)


@pytest.mark.parametrize("bad", [-1, 70000, "9100", True])
def test_metrics_port_must_be_a_port(start_pipeline: Any, bad: object) -> None:
    with pytest.raises(mplog.ConfigError, match="metrics_port must be a TCP port number"):
        start_pipeline([logging.NullHandler()], metrics_port=bad, install=False)


def test_metrics_without_prometheus_client(
    start_pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(mplog.ConfigError) as err:
        start_pipeline([logging.NullHandler()], metrics_port=0, install=False)
    assert str(err.value) == "metrics_port needs prometheus_client: pip install 'mplog[metrics]'"


def test_collector_metrics_families() -> None:
    from mplog._metrics import serve_collector_metrics

    counts = {"records": 3, "duplicates": 1, "connections_open": 2,
              "refusals": {"hmac": 4, "frame_too_large": 1}, "note": "not a number"}
    server = serve_collector_metrics(0, lambda: counts)
    try:
        metrics = _scrape(server.port)
        counts["records"] = 5
        again = _scrape(server.port)
    finally:
        server.close()
    assert metrics["mplog_collector_records_total"] == 3
    assert again["mplog_collector_records_total"] == 5
    assert metrics["mplog_collector_duplicates_total"] == 1
    assert metrics["mplog_collector_connections_open"] == 2
    assert "mplog_collector_note" not in metrics

    from prometheus_client.parser import text_string_to_metric_families

    server = serve_collector_metrics(0, lambda: counts)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as resp:
            text = resp.read().decode()
    finally:
        server.close()
    (refusals,) = [f for f in text_string_to_metric_families(text) if f.name == "mplog_collector_refusals"]
    assert {s.labels["reason"]: s.value for s in refusals.samples} == {"hmac": 4, "frame_too_large": 1}


# -- process title --------------------------------------------------------------------------


def test_listener_names_itself(start_pipeline: Any) -> None:
    p = start_pipeline([logging.NullHandler()], install=False)
    proc = psutil.Process(p.pid)
    assert proc.name() == "mplog-listener"
    assert pathlib.Path(f"/proc/{p.pid}/comm").read_text() == "mplog-listener\n"
    from mplog._proctitle import listener_title  # its naming rules: test_listener_title

    expected = listener_title(sys.argv[0], os.getpid())
    assert expected.startswith("mplog: listener for ") and f"(pid {os.getpid()})" in expected
    pytest.importorskip("setproctitle")
    assert proc.cmdline()[0] == expected


# -- top ------------------------------------------------------------------------------------


@pytest.fixture
def tmux(tmp_path: pathlib.Path) -> Iterator[list[str]]:
    exe = shutil.which("tmux")
    if exe is None:
        pytest.fail("tmux is not installed (scripts/ci-deps.sh installs it)")
    cmd = [exe, "-S", str(tmp_path / "tmux.sock")]
    yield cmd
    subprocess.run([*cmd, "kill-server"], capture_output=True)


def test_top_in_a_terminal(
    start_pipeline: Any, receiver: Receiver, tmux: list[str], tmp_path: pathlib.Path
) -> None:
    with socket.socket() as s:  # a port with nobody listening: that handler backs off
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    p = start_pipeline([
        mplog.SocketHandler("127.0.0.1", receiver.port),
        mplog.SocketHandler("127.0.0.1", dead_port),
    ])
    for i in range(123):
        log.warning("top %d", i)
    receiver.wait_records(123)
    rc_file = tmp_path / "rc"
    command = (
        f"cd {shlex.quote(str(ROOT))} && PYTHONPATH={shlex.quote(str(ROOT))} "
        f"{shlex.quote(sys.executable)} -m mplog top --interval 0.2 {shlex.quote(p.address)}; "
        f"echo $? > {shlex.quote(str(rc_file))}"
    )
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "40", command], check=True)

    def screen() -> str:
        out = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True)
        return out.stdout

    def shows_counters() -> str | None:
        text = screen()
        return text if "received 123" in text and "back-off" in text else None

    text = wait_until(shows_counters, 30, "mplog top to show the counters")
    lines = text.splitlines()
    assert any(f"127.0.0.1:{receiver.port}" in line and "connected" in line and " 123 " in line
               for line in lines), text
    (dead,) = [line for line in lines if f"127.0.0.1:{dead_port}" in line]
    assert "back-off" in dead and "123/100000" in dead and "refused" in dead, dead
    assert re.search(r"back-off \d+\.\ds", dead), dead  # when the next try is due
    (me,) = [line for line in lines if line.split()[:1] == [str(os.getpid())]]
    assert me.split()[-2] == "123"  # records this process wrote (then its rate)

    subprocess.run([*tmux, "send-keys", "q"], check=True)
    wait_until(rc_file.exists, 20, "mplog top to exit")
    assert rc_file.read_text().strip() == "0"


def test_stats_watch_ends_when_the_listener_goes(start_pipeline: Any) -> None:
    p = start_pipeline([logging.NullHandler()], install=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mplog", "stats", "--watch", "0.2", "--json", p.address],
        cwd=ROOT, env=env_with_root(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        json.loads(proc.stdout.readline())
        p.stop()
        assert proc.wait(30) == 1
        err = proc.stderr.read()
        assert len(err.splitlines()) == 1 and err.startswith("mplog stats: listener at "), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def test_metrics_survive_a_listener_restart(start_pipeline: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = start_pipeline([logging.NullHandler()], metrics_port=port)
    assert _scrape(port)["mplog_restarts_total"] == 0
    old = p.pid
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: p.pid != old, 30, "the supervisor to restart the listener")
    # the new listener serves the same port (the old one's socket died with it)
    metrics = wait_until(lambda: _try_scrape(port), 30, "metrics from the new listener")
    assert metrics["mplog_restarts_total"] == 1 == p.stats()["restarts"]
    log.warning("after the restart")
    assert p.flush(20)
    assert _scrape(port)["mplog_received_total"] == 1


def _try_scrape(port: int) -> dict[str, float] | None:
    try:
        return _scrape(port)
    except OSError:
        return None


def test_levels_by_name(start_pipeline: Any) -> None:
    p = start_pipeline([logging.NullHandler()], level="warning")
    assert logging.getLogger().level == logging.WARNING
    mplog.worker_init(p.address, level="debug")
    assert logging.getLogger().level == logging.DEBUG
    with pytest.raises(mplog.ConfigError, match="unknown level 'loud'"):
        mplog.worker_init(p.address, level="loud")


def test_serve_metrics_port(start_pipeline: Any, tmp_path: pathlib.Path) -> None:
    from tests.helpers import Serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = Serve(tmp_path / "out.jsonl", 0, "--metrics-port", str(port))
    try:
        p = start_pipeline([mplog.SocketHandler("127.0.0.1", serve.port, wire="mplog")])
        for i in range(33):
            log.warning("to serve %d", i)
        assert p.flush(20)
        wait_until(lambda: serve.count() >= 33, 20, "33 lines from mplog serve")
        metrics = _scrape(port)
        assert metrics["mplog_collector_records_total"] == 33
        assert metrics["mplog_collector_duplicates_total"] == 0
        assert metrics["mplog_collector_connections_total"] == 1
        assert serve.terminate() == 0
    finally:
        serve.stop()


def test_serve_metrics_port_in_use(tmp_path: pathlib.Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = _mplog("serve", "--port", "0", "--output", str(tmp_path / "o.jsonl"),
                     "--metrics-port", str(port))
    assert out.returncode == 2
    assert out.stderr.startswith(f"mplog serve: cannot serve metrics on 127.0.0.1:{port}")
    assert len(out.stderr.splitlines()) == 1


@pytest.mark.parametrize(("argv0", "program"), [
    ("/usr/bin/gunicorn", "gunicorn"), ("-c", "python -c"), ("/srv/app/__main__.py", "app"),
    ("", "python"), ("worker.py", "worker.py"),
])
def test_listener_title(argv0: str, program: str) -> None:
    from mplog._proctitle import listener_title

    assert listener_title(argv0, 42) == f"mplog: listener for {program} (pid 42)"
