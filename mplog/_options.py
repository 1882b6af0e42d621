"""IO (light): checks of the options users pass, each a one-line :class:`ConfigError`
naming the option and what it accepts.

Rules this module keeps:

- A check raises at the call that got the bad value (``start()``, ``worker_init()``,
  ``QueueHandler()``, ``SocketHandler()``), never later from a log call.
- Messages name the option, the value given (``repr``, cut) and the allowed values.
- Nothing here starts anything; :func:`check_intake_address` opens (and closes) one
  connection, the cheapest proof that a listener is there.
- Options that name files or environment variables are read here, once, when the option
  is given (:func:`load_key`): the sans-IO wires take values (a key as bytes).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import stat
import time

from ._errors import ConfigError
from ._text import one_line, safe_repr

__all__ = [
    "ENV_HMAC_KEY",
    "LEVEL_NAMES",
    "check_bool",
    "check_intake_address",
    "check_level",
    "check_seconds",
    "load_key",
    "check_socket_options",
]

LEVEL_NAMES = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: TCP and UDP ports are 16-bit (RFC 793); 0 means "any free port" only when binding.
MAX_PORT = 65535
#: Spool modes of ``mplog.SocketHandler`` (``mplog._spool.SPOOL_MODES``, repeated here so
#: that this module stays import-light; a unit test keeps the two equal).
SPOOL_MODES = ("overflow", "all")
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block")
#: How long one connection attempt of the address check may block (a full backlog).
CONNECT_CHECK_TIMEOUT = 2.0
#: How long a process waits for a listener that refuses connections with its socket file
#: in place: one being restarted (a new process, its imports, its handlers: 7 s and more
#: on a loaded machine). The address check of worker_init() and QueueHandler(), and the
#: exit drain, wait this long.
RESTART_WAIT = 15.0
#: How long it waits when the socket file is missing (a restart replaces it at once).
MISSING_FILE_GRACE = 0.1


def _r(value: object) -> str:
    return one_line(safe_repr(value), 80)


def check_level(level: object, option: str = "level") -> int:
    """A level as an int, from an int >= 0 or a level name (any case; names registered
    with ``logging.addLevelName`` too); :class:`ConfigError` otherwise."""
    given = level
    if isinstance(level, str):
        if level.strip().isdigit():  # as MPLOG_LEVEL carries it
            return int(level)
        named = logging.getLevelName(level.strip().upper())
        if isinstance(named, int):
            return named
    elif isinstance(level, int) and not isinstance(level, bool) and level >= 0:
        return level
    raise ConfigError(
        f"unknown {option} {_r(given)}; use one of {', '.join(LEVEL_NAMES)} or an int"
    )


def check_bool(value: object, option: str) -> bool:
    """*value* if it is a bool; :class:`ConfigError` naming *option* otherwise."""
    if not isinstance(value, bool):
        raise ConfigError(f"{option} must be True or False, got {_r(value)}")
    return value


def check_seconds(value: object, option: str, *, allow_zero: bool = False) -> float:
    """A finite number of seconds, > 0 (or >= 0 with *allow_zero*)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > 0 or (allow_zero and value == 0)):  # type: ignore[operator]
        return float(value)  # type: ignore[arg-type]
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"{option} must be a number of seconds {bound}, got {_r(value)}")


def _check_positive_int(value: object, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{option} must be an int > 0, got {_r(value)}")


def check_socket_options(
    host: object,
    port: object,
    *,
    buffer_records: object = 1,
    buffer_bytes: object = 1,
    overflow: object = "drop_oldest",
    block_timeout: object = 1.0,
    close_timeout: object = 1.0,
    jitter: object = 0.0,
    spool_dir: object = None,
    spool_max_bytes: object = 1,
    spool_mode: object = "overflow",
) -> None:
    """Check the options of ``mplog.SocketHandler(host, port, ...)`` (not the wire's own).

    Raises:
        ConfigError: one line naming the first bad option and what it accepts. Among
            them: ``port`` outside 1..65535 (or not an int or None), ``spool_mode`` not
            ``"overflow"`` or ``"all"``, ``spool_mode="all"`` without ``spool_dir``.
    """
    if port is None:
        if not isinstance(host, str | os.PathLike) or not os.fspath(host):
            raise ConfigError(
                f"host must be a Unix socket path when port is None, got {_r(host)}"
            )
    else:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
            raise ConfigError(
                f"port must be an int from 1 to {MAX_PORT} (or None for a Unix socket "
                f"path in host), got {_r(port)}"
            )
        if not isinstance(host, str) or not host:
            raise ConfigError(f"host must be a host name or IP address (str), got {_r(host)}")
    _check_positive_int(buffer_records, "buffer_records")
    _check_positive_int(buffer_bytes, "buffer_bytes")
    _check_positive_int(spool_max_bytes, "spool_max_bytes")
    if overflow not in OVERFLOW_POLICIES:
        raise ConfigError(
            f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}; got {_r(overflow)}"
        )
    check_seconds(block_timeout, "block_timeout", allow_zero=True)
    check_seconds(close_timeout, "close_timeout", allow_zero=True)
    ok_jitter = isinstance(jitter, int | float) and not isinstance(jitter, bool)
    if not ok_jitter or not 0 <= jitter <= 1:  # type: ignore[operator]
        raise ConfigError(f"jitter must be a number from 0 to 1, got {_r(jitter)}")
    if spool_mode not in SPOOL_MODES:
        raise ConfigError(
            f"spool_mode must be one of {', '.join(map(repr, SPOOL_MODES))}; got {_r(spool_mode)}"
        )
    if spool_dir is None:
        if spool_mode == "all":
            raise ConfigError(
                "spool_mode='all' needs spool_dir= (the directory where records wait)"
            )
    elif not isinstance(spool_dir, str | os.PathLike) or not os.fspath(spool_dir):
        raise ConfigError(f"spool_dir must be a directory path, got {_r(spool_dir)}")


def check_intake_address(address: str, who: str, *, timeout: float = RESTART_WAIT) -> None:
    """Connect once to the listener's intake socket at *address* and close the connection.

    A listener that is being restarted (its socket file there, refusing) gets up to
    *timeout* seconds: a pool's spawned worker meeting a restart must not fail its
    initializer (a ``ProcessPoolExecutor`` is then broken for good). A missing socket
    file gets MISSING_FILE_GRACE; a directory that does not exist fails at once.

    Raises:
        ConfigError: nothing listens there (no such file, not a socket, refused), named
            with *who* (``"worker_init()"``, ``"QueueHandler"``), the address, and why.
    """
    start = time.monotonic()
    while True:
        why = _try_connect(address)
        if why is None:
            return
        parent = os.path.dirname(os.path.abspath(address)) or "."
        if not os.path.isdir(parent):
            why = f"directory {parent!r} does not exist"
            break
        # A restarting listener leaves its old socket file (refused) until the new one
        # renames its own over it: only "refused" is worth the whole timeout.
        budget = timeout if why.startswith("connection refused") else MISSING_FILE_GRACE
        if time.monotonic() - start >= budget or why == "not a socket":
            break
        time.sleep(0.02)
    if why == denied_reason():
        raise ConfigError(f"{who}: may not connect to the mplog listener at {_r(address)} ({why})")
    raise ConfigError(
        f"{who}: no mplog listener at {_r(address)} ({why}); pass the address of a running "
        "pipeline (Pipeline.address, or MPLOG_ADDRESS as start() exports it)"
    )


def denied_reason() -> str:
    """Why this process may not connect to an intake socket it can see."""
    return (f"permission denied: this process runs as uid {os.geteuid()}, and the pipeline "
            "was not started with worker_user= for it")


def _try_connect(address: str) -> str | None:
    """None if a listener accepted a connection at *address*, else why not."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(CONNECT_CHECK_TIMEOUT)
        s.connect(address)
    except FileNotFoundError:
        return "no such socket file"
    except PermissionError:
        return denied_reason()
    except ConnectionRefusedError:
        if os.path.exists(address) and not stat.S_ISSOCK(os.stat(address).st_mode):
            return "not a socket"
        return ("connection refused: a stale socket file (its listener is gone), or a "
                "listener restart that keeps failing")
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        s.close()
    return None


#: Environment variable holding the HMAC key itself (when no option gives one).
ENV_HMAC_KEY = "MPLOG_HMAC_KEY"


def load_key(hmac_key: bytes | str | None, hmac_key_file: str | None) -> bytes | None:
    """The HMAC key from *hmac_key*, else *hmac_key_file*, else ``$MPLOG_HMAC_KEY``."""
    if hmac_key is not None and hmac_key_file is not None:
        raise ConfigError("give hmac_key or hmac_key_file, not both")
    if hmac_key_file is not None:
        try:
            with open(hmac_key_file, "rb") as f:
                key = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read hmac_key_file {hmac_key_file!r}: {exc}") from exc
        if not key:
            raise ConfigError(f"hmac_key_file {hmac_key_file!r} is empty")
        return key
    if hmac_key is None:
        env = os.environ.get(ENV_HMAC_KEY)
        return env.encode() if env else None
    if isinstance(hmac_key, str):
        hmac_key = hmac_key.encode()
    if not isinstance(hmac_key, bytes) or not hmac_key:
        raise ConfigError("hmac_key must be non-empty bytes")
    return hmac_key
