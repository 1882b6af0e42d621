"""mplog.QueueHandler built by logging.config.dictConfig, on every Python we support.

Python 3.12+ hands every QueueHandler subclass a queue of its own as first argument;
3.12.0 to 3.12.3 also drop the handler's other keys and require "handlers" (CPython
gh-118868), so there the portable spelling is "()": "mplog.QueueHandler"."""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Iterator

import pytest

import mplog

_DROPS_KWARGS = (3, 12) <= sys.version_info[:3] < (3, 12, 4)


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    r = logging.getLogger()
    yield r
    for h in list(r.handlers):
        if isinstance(h, mplog.QueueHandler):
            r.removeHandler(h)
            h.close()


def _config(spec: dict) -> dict:
    return {"version": 1, "disable_existing_loggers": False,
            "handlers": {"mplog": spec}, "root": {"handlers": ["mplog"], "level": "INFO"}}


@pytest.mark.skipif(_DROPS_KWARGS, reason="this Python's dictConfig drops the handler's keys")
def test_class_spelling(root: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mplog.ENV_ADDRESS, "/run/from-env.sock")
    logging.config.dictConfig(_config({"class": "mplog.QueueHandler", "level": "WARNING"}))
    (h,) = root.handlers
    assert isinstance(h, mplog.QueueHandler)
    assert h.address == "/run/from-env.sock" and h.level == logging.WARNING
    logging.config.dictConfig(_config({"class": "mplog.QueueHandler", "address": "/run/explicit.sock"}))
    (h,) = root.handlers
    assert h.address == "/run/explicit.sock"


def test_factory_spelling_works_everywhere(root: logging.Logger) -> None:
    logging.config.dictConfig(_config({"()": "mplog.QueueHandler", "address": "/run/x.sock"}))
    (h,) = root.handlers
    assert isinstance(h, mplog.QueueHandler) and h.address == "/run/x.sock"


def test_no_address_anywhere_is_a_config_error(root: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mplog.ENV_ADDRESS, raising=False)
    with pytest.raises(ValueError, match="Unable to configure handler") as err:
        logging.config.dictConfig(_config({"()": "mplog.QueueHandler"}))
    assert isinstance(err.value.__cause__, mplog.ConfigError)
    assert mplog.ENV_ADDRESS in str(err.value.__cause__)


def test_positional_and_keyword_forms() -> None:
    assert mplog.QueueHandler("/a.sock").address == "/a.sock"
    assert mplog.QueueHandler(address="/b.sock", level=logging.ERROR).level == logging.ERROR
    assert mplog.QueueHandler("/c.sock", logging.INFO).level == logging.INFO
    with pytest.raises(TypeError, match="address twice"):
        mplog.QueueHandler("/a.sock", address="/b.sock")
    with pytest.raises(mplog.ConfigError, match="str path"):
        mplog.QueueHandler(42)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ([], "dictionary"),
        ({"handlers": {}}, "version"),
        ({"version": 1, "handlers": {}}, "root"),
        ({"version": 1, "incremental": True, "root": {"handlers": ["h"]}}, "incremental"),
    ],
)
def test_start_config_checked_before_anything_starts(config: object, match: str) -> None:
    with pytest.raises(mplog.ConfigError, match=match):
        mplog.start(config=config)  # type: ignore[arg-type]


def test_start_needs_exactly_one_of_handlers_and_config() -> None:
    with pytest.raises(mplog.ConfigError, match="handlers or config"):
        mplog.start()
    with pytest.raises(mplog.ConfigError, match="not both"):
        mplog.start([logging.NullHandler()], config={"version": 1})
