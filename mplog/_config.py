"""IO side of configuration: options that name files or environment variables.

The sans-IO wires take values (a key as bytes); reading a key file or ``$MPLOG_HMAC_KEY``
happens here, once, when the option is given, so that a bad path is a
:class:`~mplog.ConfigError` at construction and never later.
"""

from __future__ import annotations

import os

from ._errors import ConfigError

__all__ = ["ENV_HMAC_KEY", "load_key"]

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
