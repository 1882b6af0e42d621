from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterator

import pytest

from tests.helpers import Receiver, assert_no_children


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
