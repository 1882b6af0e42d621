from __future__ import annotations

import logging
import os
import pathlib
import signal
from collections.abc import Iterator

import pytest

from tests.helpers import Receiver, assert_no_children

# A run started with SIGINT ignored (a background job of a non-interactive shell) passes
# SIG_IGN on to every program the tests start, and Python then installs no
# KeyboardInterrupt handler: the tests that press Ctrl-C in a child (``start()``
# interrupted, ``mplog stats --watch`` ended) waited for ever. A Python handler here
# becomes SIG_DFL in a child at exec, as in a program run from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _restore_logging_and_check_children() -> Iterator[None]:
    """Each test leaves the root logger as it found it and no child process behind."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    env = {k: os.environ.get(k) for k in ("MPLOG_ADDRESS", "MPLOG_LEVEL", "MPLOG_AUTOJOIN")}
    yield
    for k, v in env.items():  # worker_init() in a test's own process exports these
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    for h in list(root.handlers):
        if h not in saved[0]:
            root.removeHandler(h)
            h.close()
    for h in saved[0]:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(saved[1])
    assert_no_children()


@pytest.fixture
def receiver(tmp_path: pathlib.Path) -> Iterator[Receiver]:
    r = Receiver(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def start_pipeline() -> Iterator[object]:
    """``start_pipeline(handlers, **kw)``: mplog.start, stopped at teardown."""
    import mplog

    started: list[mplog.Pipeline] = []

    def _start(*args: object, **kwargs: object) -> mplog.Pipeline:
        p = mplog.start(*args, **kwargs)  # type: ignore[arg-type]
        started.append(p)
        return p

    yield _start
    for p in started:
        p.stop()


#: The suite's longest tests (a 30 s outage, 100k records through real daemons, bench runs,
#: five kills...), by name prefix: they start first, so that none of them is still running
#: alone on one xdist worker at the end while the other worker has nothing left to do.
_LONG_FIRST = (
    "test_receiver_down_30_s",
    "test_fork_while_8_threads_log",
    "test_quick_run_reports_every_setup",
    "test_100k_records_from_8_workers",
    "test_prefork_1000_tasks_while_pool_processes_are_killed",
    "test_partial_frames_capped_by_max_connections",
    "test_bench_collector_only",
    "test_every_request_logged_once_through_recycling_and_hup",
    "test_collector_killed_5_times_exactly_once",
    "test_receiver_starts_3_s_after_logging_began",
    "test_pools",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: the long ones first, everything else in its usual order. Every xdist
    # worker collects the same list, so they all agree on it.
    items.sort(key=lambda item: not item.name.startswith(_LONG_FIRST))
