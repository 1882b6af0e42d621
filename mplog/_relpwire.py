"""``wire="relp"``: RFC 5424 messages over RELP, acknowledged by the receiver.

The payload kept in the buffer is the syslog message (formatted as for ``wire="syslog"``,
without octet-counting framing); each connection frames it as a RELP ``syslog`` command
with that session's next TXNR, so a payload resent after a reconnect gets a new TXNR, as
RELP requires. A record counts as sent once its ``rsp`` (``200 OK``) came back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError
from ._relp import RelpSession

__all__ = ["RelpWire"]

#: librelp's default window (``RELP_DFLT_WINDOW_SIZE``).
DEFAULT_WINDOW = 128


class _Session:
    def __init__(self) -> None:
        self._relp = RelpSession()

    @property
    def ready(self) -> bool:
        return self._relp.ready

    def handshake(self) -> bytes:
        return self._relp.open_frame()

    def frame(self, payload: bytes) -> bytes:
        return self._relp.syslog_frame(payload)

    def receive(self, data: bytes) -> int:
        return self._relp.receive(data)

    def close_frame(self) -> bytes:
        return self._relp.close_frame()


class RelpWire:
    """Options: ``window`` (unacknowledged messages in flight, default 128) and every
    option of ``wire="syslog"`` except ``framing`` (RELP frames the messages itself)."""

    def __init__(self, *, window: int = DEFAULT_WINDOW, **syslog_options: Any) -> None:
        from ._syslog import SyslogWire

        if not isinstance(window, int) or not 1 <= window <= 1_000_000:
            raise ConfigError(f"window must be an int between 1 and 1000000, got {window!r}")
        if "framing" in syslog_options:
            raise ConfigError("wire='relp' frames messages itself: drop the framing option")
        self.window = window
        self._syslog = SyslogWire(**syslog_options)

    def encode(self, record: Mapping[str, Any]) -> bytes:
        return self._syslog.message(record)

    def new_session(self) -> _Session:
        return _Session()
