"""The exceptions mplog raises.

Everything mplog raises on purpose derives from :class:`MplogError`:

- :class:`ConfigError` (also a :class:`ValueError`): a bad option, address or handlers
  factory, raised by :func:`mplog.start` or :func:`mplog.worker_init`, never later.
- :class:`ProtocolError`: bytes on a wire that break its framing or codec. Raised by the
  sans-IO decoders; the IO layer turns it into "close that one connection and count it".

All of them pickle (they only carry a message), so they cross process boundaries intact.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MplogError", "ProtocolError"]


class MplogError(Exception):
    """Base class of every exception mplog raises."""


class ConfigError(MplogError, ValueError):
    """A configuration mplog cannot run with; the message names the problem."""


class ProtocolError(MplogError):
    """Malformed, oversized or otherwise invalid data on a wire."""
