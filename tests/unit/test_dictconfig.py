"""mplog.QueueHandler built by logging.config.dictConfig, on every Python we support.

Python 3.12+ hands every QueueHandler subclass a queue of its own as first argument;
3.12.0 to 3.12.3 also drop the handler's other keys and require "handlers" (CPython
gh-118868), so there the portable spelling is "()": "mplog.QueueHandler"."""

from __future__ import annotations

import logging
import logging.config
import pathlib
import socket
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


@pytest.fixture
def socks(tmp_path: pathlib.Path) -> Iterator[dict[str, str]]:
    """Listening Unix sockets named a, b, c: a QueueHandler checks its address at once."""
    out, held = {}, []
    for name in ("a", "b", "c", "env", "explicit", "x"):
        path = str(tmp_path / f"{name}.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(16)
        held.append(s)
        out[name] = path
    yield out
    for s in held:
        s.close()


def test_an_address_with_no_listener_is_a_config_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(mplog.ConfigError, match=r"mplog\.QueueHandler: no mplog listener at .*\(no such socket file\)"):
        mplog.QueueHandler(str(tmp_path / "typo.sock"))


def _config(spec: dict) -> dict:
    return {"version": 1, "disable_existing_loggers": False,
            "handlers": {"mplog": spec}, "root": {"handlers": ["mplog"], "level": "INFO"}}


@pytest.mark.skipif(_DROPS_KWARGS, reason="this Python's dictConfig drops the handler's keys")
def test_class_spelling(root: logging.Logger, monkeypatch: pytest.MonkeyPatch, socks: dict[str, str]) -> None:
    monkeypatch.setenv(mplog.ENV_ADDRESS, socks["env"])
    logging.config.dictConfig(_config({"class": "mplog.QueueHandler", "level": "WARNING"}))
    (h,) = root.handlers
    assert isinstance(h, mplog.QueueHandler)
    assert h.address == socks["env"] and h.level == logging.WARNING
    logging.config.dictConfig(_config({"class": "mplog.QueueHandler", "address": socks["explicit"]}))
    (h,) = root.handlers
    assert h.address == socks["explicit"]


def test_factory_spelling_works_everywhere(root: logging.Logger, socks: dict[str, str]) -> None:
    logging.config.dictConfig(_config({"()": "mplog.QueueHandler", "address": socks["x"]}))
    (h,) = root.handlers
    assert isinstance(h, mplog.QueueHandler) and h.address == socks["x"]


def test_no_address_anywhere_is_a_config_error(root: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(mplog.ENV_ADDRESS, raising=False)
    with pytest.raises(ValueError, match="Unable to configure handler") as err:
        logging.config.dictConfig(_config({"()": "mplog.QueueHandler"}))
    assert isinstance(err.value.__cause__, mplog.ConfigError)
    assert mplog.ENV_ADDRESS in str(err.value.__cause__)


def test_positional_and_keyword_forms(socks: dict[str, str]) -> None:
    handlers = [
        mplog.QueueHandler(socks["a"]),
        mplog.QueueHandler(address=socks["b"], level=logging.ERROR),
        mplog.QueueHandler(socks["c"], logging.INFO),
    ]
    assert handlers[0].address == socks["a"]
    assert handlers[1].level == logging.ERROR
    assert handlers[2].level == logging.INFO
    for h in handlers:
        h.close()
    with pytest.raises(TypeError, match="address twice"):
        mplog.QueueHandler(socks["a"], address=socks["b"])
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
