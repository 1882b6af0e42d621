"""mplog.start(config=...): a dictConfig the listener cannot build is a clear ConfigError
at start(), with dictConfig's reason, and nothing is left running."""

from __future__ import annotations

import pathlib

import pytest

import mplog


def test_unknown_handler_class(tmp_path: pathlib.Path) -> None:
    config = {"version": 1, "handlers": {"h": {"class": "no_such_module.Handler"}},
              "root": {"handlers": ["h"]}}
    with pytest.raises(mplog.ConfigError, match=r"Unable to configure handler 'h'.*no_such_module"):
        mplog.start(config=config, address=str(tmp_path / "intake.sock"))
    assert not (tmp_path / "intake.sock").exists()


def test_listener_builds_the_declared_handlers(tmp_path: pathlib.Path, receiver, start_pipeline) -> None:
    log_file = tmp_path / "listener.log"
    start_pipeline(config={
        "version": 1,
        "formatters": {"f": {"format": "[%(levelname)s] %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "f",
                     "level": "WARNING"},
            "net": {"class": "mplog.SocketHandler", "host": "127.0.0.1", "port": receiver.port},
        },
        "root": {"handlers": ["file", "net"]},
    })
    import logging

    log = logging.getLogger("dc")
    log.info("one")
    log.warning("two")
    recs = receiver.wait_records(2, 20, where=lambda r: r["name"] == "dc")
    assert [r["msg"] for r in recs] == ["one", "two"]
    assert log_file.read_text() == "[WARNING] two\n"
