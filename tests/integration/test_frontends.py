"""Front ends users already log with, through a real pipeline to a real receiver:
structlog (both of its usual stdlib setups), loguru, and python-json-logger at the listener."""

from __future__ import annotations

import json
import logging
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import pytest

import mplog
from tests.helpers import Receiver, wait_until

structlog = pytest.importorskip("structlog")


@pytest.fixture
def structlog_reset() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def _configure(last: Any) -> None:
    structlog.configure(
        processors=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso"),
            last,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


class Thing:
    def __repr__(self) -> str:
        return "<Thing 7>"


@pytest.mark.parametrize("setup", ["wrap_for_formatter", "render_to_log_kwargs"])
def test_structlog_fields_arrive_as_record_fields(
    start_pipeline: Any, receiver: Receiver, structlog_reset: None, setup: str
) -> None:
    last = (
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter
        if setup == "wrap_for_formatter" else structlog.stdlib.render_to_log_kwargs
    )
    _configure(last)
    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)], level="DEBUG")
    log = structlog.get_logger("app.auth").bind(request_id="r-42")
    log.info("user logged in", user="bob", attempts=3, roles=["admin", "ops"], thing=Thing())
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("login failed", user="eve")
    assert p.flush(20)
    first, second = receiver.wait_records(2)

    assert first["msg"] == "user logged in"
    assert first["name"] == "app.auth" and first["levelname"] == "INFO"
    assert (first["user"], first["attempts"], first["roles"]) == ("bob", 3, ["admin", "ops"])
    assert first["request_id"] == "r-42"
    assert first["thing"] == "<Thing 7>"  # not JSON: its repr, the field kept
    assert first["level"] == "info" and first["logger"] == "app.auth"
    assert first["timestamp"].startswith("20")
    assert "_logger" not in first and "_name" not in first
    assert "{" not in first["msg"]  # no dict repr

    assert second["msg"] == "login failed" and second["levelname"] == "ERROR"
    assert second["user"] == "eve"
    assert "ZeroDivisionError: division by zero" in second["exc_text"]
    assert "exc_info_" not in second


def test_structlog_rendered_at_the_listener(
    start_pipeline: Any, tmp_path: pathlib.Path, structlog_reset: None
) -> None:
    from mplog.integrations.structlog import listener_formatter

    _configure(structlog.stdlib.ProcessorFormatter.wrap_for_formatter)
    out = tmp_path / "events.jsonl"

    def handlers() -> list[logging.Handler]:
        h = logging.FileHandler(out)
        h.setFormatter(listener_formatter())
        return [h]

    p = start_pipeline(handlers, level="INFO")
    log = structlog.get_logger("app.jobs")
    log.info("job done", job_id=17, took=0.25)
    logging.getLogger("plain.stdlib").warning("disk at %d%%", 91, extra={"mount": "/var"})
    try:
        raise ValueError("bad input")
    except ValueError:
        log.exception("job failed", job_id=18)
    assert p.flush(20)
    lines = wait_until(lambda: [json.loads(x) for x in out.read_text().splitlines()]
                       if out.exists() and out.read_text().count("\n") >= 3 else None,
                       20, "three lines in the listener's file")
    done, disk, failed = lines
    assert done["event"] == "job done" and done["job_id"] == 17 and done["took"] == 0.25
    assert done["level"] == "info" and done["logger"] == "app.jobs"
    assert done["timestamp"].startswith("20")
    assert disk == {"event": "disk at 91%", "mount": "/var", "level": "warning",
                    "logger": "plain.stdlib", "timestamp": disk["timestamp"]}
    assert failed["job_id"] == 18 and "ValueError: bad input" in failed["exception"]
    assert not any(k.startswith("_") or k in ("message", "taskName") for k in done)


def test_loguru_sink(start_pipeline: Any, receiver: Receiver) -> None:
    loguru = pytest.importorskip("loguru")
    from mplog.integrations.loguru import install

    p = start_pipeline([mplog.SocketHandler("127.0.0.1", receiver.port)])
    handler_id = install(level="TRACE")
    try:
        logger = loguru.logger
        logger.bind(user="bob", request_id="r-1").info("hello {}", "world")
        logger.success("it worked")
        logger.bind(name="clash").warning("a field named like a record attribute")
        try:
            {}["missing"]
        except KeyError:
            logger.opt(exception=True).error("lookup failed")
    finally:
        logger.remove(handler_id)
    assert p.flush(20)
    hello, ok, clash, failed = receiver.wait_records(4)
    assert hello["msg"] == "hello world" and hello["levelname"] == "INFO" and hello["levelno"] == 20
    assert (hello["user"], hello["request_id"]) == ("bob", "r-1")
    assert hello["name"] == __name__ and hello["funcName"] == "test_loguru_sink"
    assert hello["filename"] == "test_frontends.py" and hello["module"] == "test_frontends"
    assert ok["levelname"] == "SUCCESS" and ok["levelno"] == 25
    assert clash["name"] == __name__ and clash["name_"] == "clash"
    assert failed["levelname"] == "ERROR" and "KeyError: 'missing'" in failed["exc_text"]
    assert hello["process"] == os.getpid()
    assert abs(hello["created"] - ok["created"]) < 60


def test_python_json_logger_at_the_listener(start_pipeline: Any, tmp_path: pathlib.Path) -> None:
    """The recipe in docs/operations.md: python-json-logger keeps mplog's fields."""
    pytest.importorskip("pythonjsonlogger")
    out = tmp_path / "app.jsonl"

    def handlers() -> list[logging.Handler]:
        from pythonjsonlogger.core import RESERVED_ATTRS
        from pythonjsonlogger.json import JsonFormatter

        h = logging.FileHandler(out)
        h.setFormatter(JsonFormatter(
            "{asctime}{levelname}{name}{message}", style="{",
            # records that crossed the pipeline carry taskName on every Python
            reserved_attrs=[*RESERVED_ATTRS, "taskName"],
        ))
        return [h]

    p = start_pipeline(handlers, level="INFO")
    log = logging.getLogger("app.orders")
    log.info("order %s placed", "A-1", extra={"order_id": "A-1", "amount": 12.5, "items": [1, 2]})
    try:
        raise RuntimeError("card declined")
    except RuntimeError:
        log.exception("payment failed", extra={"order_id": "A-2"})
    assert p.flush(20)
    text = wait_until(lambda: out.read_text() if out.exists() and out.read_text().count("\n") >= 2 else None,
                      20, "two lines")
    placed, failed = (json.loads(x) for x in text.splitlines())
    assert placed["message"] == "order A-1 placed"
    assert (placed["order_id"], placed["amount"], placed["items"]) == ("A-1", 12.5, [1, 2])
    assert placed["levelname"] == "INFO" and placed["name"] == "app.orders"
    assert set(placed) == {"asctime", "levelname", "name", "message", "order_id", "amount", "items"}
    assert failed["order_id"] == "A-2" and "RuntimeError: card declined" in failed["exc_info"]


def test_json_file_handler_shipped_as_a_list(start_pipeline: Any, tmp_path: pathlib.Path) -> None:
    """The same recipe with the handler built here and shipped as a list. Its lock must
    arrive free: dill rebuilt an unheld RLock as held, and the listener hung on the first
    record (no stats, no stop)."""
    pytest.importorskip("pythonjsonlogger")
    from pythonjsonlogger.json import JsonFormatter

    out = tmp_path / "shipped.jsonl"
    h = logging.FileHandler(out)
    h.setFormatter(JsonFormatter("{levelname}{message}", style="{"))
    try:
        p = start_pipeline([h], level="INFO")
        for i in range(5):
            logging.getLogger("app").info("shipped %d", i, extra={"i": i})
        assert p.flush(10)
        assert p.stats()["handled"] == 5
    finally:
        h.close()  # this process's copy (the listener has its own)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(d["message"], d["i"]) for d in lines] == [(f"shipped {i}", i) for i in range(5)]
