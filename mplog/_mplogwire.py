"""``wire="mplog"``: mplog's own protocol (``docs/protocol.md``), acknowledged.

Each record gets the next sequence number of this handler's sender id when it is
buffered; the receiver writes a record once per (sender, seq) and acknowledges
cumulatively, so a record counts as sent only once it is in the receiver's output, and a
resend after a reconnect creates no duplicate there.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError
from ._protocol import DEFAULT_WINDOW, ClientSession, record_payload

__all__ = ["ENV_HMAC_KEY", "MplogWire", "load_key"]

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


class MplogWire:
    """Options: ``hmac_key`` (bytes) or ``hmac_key_file`` (path), ``window`` (records in
    flight unacknowledged, default 1024), ``sender_id`` (default: a fresh random id)."""

    def __init__(
        self,
        *,
        hmac_key: bytes | str | None = None,
        hmac_key_file: str | None = None,
        window: int = DEFAULT_WINDOW,
        sender_id: str | None = None,
    ) -> None:
        if not isinstance(window, int) or not 1 <= window <= 1_000_000:
            raise ConfigError(f"window must be an int between 1 and 1000000, got {window!r}")
        self.key = load_key(hmac_key, hmac_key_file)
        self.window = window
        self.sender_id = sender_id or uuid.uuid4().hex
        try:
            ClientSession(self.sender_id, None, window)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self._seq = itertools.count(1)

    def resume(self, sender_id: str, epoch: int) -> None:
        """Continue a spool's numbering: its persistent *sender_id*, and sequence numbers
        ``epoch << 40 | n`` (*epoch* grows at every open of the spool), so numbers keep
        growing across restarts and the receiver's de-duplication holds."""
        if not 1 <= epoch < 1 << 23:
            raise ConfigError(f"spool epoch {epoch} out of range; remove the spool's epoch file")
        self.sender_id = sender_id
        self._seq = itertools.count((epoch << 40) + 1)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        return record_payload(next(self._seq), record)

    def new_session(self) -> ClientSession:
        return ClientSession(self.sender_id, self.key, self.window)
