"""mplog._options: every bad option is one ConfigError line naming it and what it accepts."""

from __future__ import annotations

import logging
import pathlib
import socket
import time

import pytest

import mplog
from mplog import _options, _spool


@pytest.mark.parametrize(
    ("level", "want"),
    [("DEBUG", 10), ("info", 20), (" Warning ", 30), (40, 40), (0, 0), ("25", 25)],
)
def test_levels(level: object, want: int) -> None:
    assert _options.check_level(level) == want


@pytest.mark.parametrize("level", ["VERBOSE", "Level 5", -1, True, 1.5, None, ""])
def test_bad_levels(level: object) -> None:
    with pytest.raises(mplog.ConfigError) as info:
        _options.check_level(level)
    msg = str(info.value)
    assert msg == (
        f"unknown level {level!r}; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL or an int"
    )
    assert "Level VERBOSE" not in msg


def test_a_registered_level_name_is_a_level() -> None:
    logging.addLevelName(5, "TRACE5")
    assert _options.check_level("trace5") == 5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"port": 99999}, r"^port must be an int from 1 to 65535 .*got 99999$"),
        ({"port": 0}, r"^port must be an int from 1 to 65535"),
        ({"port": "9020"}, r"^port must be an int .*got '9020'$"),
        ({"port": True}, r"^port must be an int"),
        ({"host": "", "port": None}, r"^host must be a Unix socket path"),
        ({"host": 5, "port": 9020}, r"^host must be a host name"),
        ({"spool_mode": "disk"}, r"^spool_mode must be one of 'overflow', 'all'; got 'disk'$"),
        ({"spool_mode": "all"}, r"^spool_mode='all' needs spool_dir="),
        ({"spool_dir": 3}, r"^spool_dir must be a directory path, got 3$"),
        ({"overflow": "drop"}, r"^overflow must be one of drop_oldest, drop_newest, block; got 'drop'$"),
        ({"buffer_records": 0}, r"^buffer_records must be an int > 0, got 0$"),
        ({"buffer_bytes": -5}, r"^buffer_bytes must be an int > 0"),
        ({"spool_max_bytes": 1.5}, r"^spool_max_bytes must be an int > 0"),
        ({"block_timeout": -1}, r"^block_timeout must be a number of seconds >= 0"),
        ({"close_timeout": float("nan")}, r"^close_timeout must be a number of seconds"),
        ({"jitter": 2}, r"^jitter must be a number from 0 to 1, got 2$"),
    ],
)
def test_bad_socket_options(kwargs: dict[str, object], match: str) -> None:
    args = {"host": "127.0.0.1", "port": 9020}
    args.update(kwargs)
    host, port = args.pop("host"), args.pop("port")
    with pytest.raises(mplog.ConfigError, match=match) as info:
        _options.check_socket_options(host, port, **args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"port": 1},
        {"port": 65535},
        {"host": "/run/x.sock", "port": None},
        {"spool_dir": "/tmp/spool", "spool_mode": "all"},
        {"overflow": "block", "block_timeout": 0, "jitter": 0.5},
    ],
)
def test_good_socket_options(kwargs: dict[str, object]) -> None:
    args = {"host": "127.0.0.1", "port": 9020}
    args.update(kwargs)
    host, port = args.pop("host"), args.pop("port")
    _options.check_socket_options(host, port, **args)  # type: ignore[arg-type]


def test_spool_modes_match_the_spool() -> None:
    assert _options.SPOOL_MODES == _spool.SPOOL_MODES


def test_intake_address_missing_fails_at_once(tmp_path: pathlib.Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(mplog.ConfigError, match=r"^mplog.worker_init\(\): no mplog listener at '/typo.sock' "
                       r"\(no such socket file\)"):
        _options.check_intake_address("/typo.sock", "mplog.worker_init()")
    with pytest.raises(mplog.ConfigError, match=r"directory .*does not exist"):
        _options.check_intake_address(str(tmp_path / "no" / "x.sock"), "QueueHandler")
    assert time.monotonic() - t0 < 1.0


def test_intake_address_stale_socket_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens: a dead listener's socket
    with pytest.raises(mplog.ConfigError, match=r"connection refused"):
        _options.check_intake_address(path, "QueueHandler", timeout=0.2)
    (tmp_path / "plain").write_text("")
    with pytest.raises(mplog.ConfigError, match=r"not a socket"):
        _options.check_intake_address(str(tmp_path / "plain"), "QueueHandler", timeout=5)


def test_intake_address_with_a_listener(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "ok.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        s.listen(1)
        _options.check_intake_address(path, "QueueHandler")


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), (0.5, True), (0, False), (-1, False), ("5", False), (True, False)]
)
def test_seconds(value: object, ok: bool) -> None:
    if ok:
        assert _options.check_seconds(value, "start_timeout") == float(value)  # type: ignore[arg-type]
    else:
        with pytest.raises(mplog.ConfigError, match=r"^start_timeout must be a number of seconds > 0"):
            _options.check_seconds(value, "start_timeout")
