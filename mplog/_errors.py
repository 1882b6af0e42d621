"""The exceptions mplog raises.

Everything mplog raises on purpose derives from :class:`MplogError`:

- :class:`ConfigError` (also a :class:`ValueError`): a bad option, address or handlers
  factory, raised by :func:`mplog.start` or :func:`mplog.worker_init`, never later.
- :class:`ProtocolError`: bytes on a wire that break its framing or codec. It has a
  direction, as in h11: :class:`RemoteProtocolError` when the *peer* broke the protocol
  (what the sans-IO decoders raise for received bytes; the IO layer closes that one
  connection, counts it, and, on the sending side, backs off and reports), and
  :class:`LocalProtocolError` when *we* tried something the protocol forbids (a bug in
  mplog: reported loudly, never silently retried). :class:`RefusedError` is the remote
  case where the receiver said no, with its reason.

The IO layer acts on these types, never on message text. All of them pickle (they carry
only a message), so they cross process boundaries intact.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "LocalProtocolError",
    "MplogError",
    "ProtocolError",
    "RefusedError",
    "RemoteProtocolError",
]


class MplogError(Exception):
    """Base class of every exception mplog raises."""


class ConfigError(MplogError, ValueError):
    """A configuration mplog cannot run with; the message names the problem."""


class ProtocolError(MplogError):
    """Malformed, oversized or otherwise invalid data on a wire."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (malformed, oversized or unexpected bytes)."""


class RefusedError(RemoteProtocolError):
    """The receiver refused us (wrong key, a frame it will not take, ...): ``str(exc)``
    is its reason. A refusal is a delivery failure like a refused connection: the next
    try waits for the back-off timer."""


class LocalProtocolError(ProtocolError):
    """mplog itself tried to do something the protocol forbids: a bug, reported loudly."""
