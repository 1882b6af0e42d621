"""Sans-IO wire encoders for :class:`mplog.SocketHandler`, chosen with ``wire=``.

A wire turns one record dict into the bytes of one frame. The dict is what the listener
decodes (see ``mplog._record.decode_record``): ``msg`` holds the merged message, ``args``
and ``exc_info`` are None, ``exc_text`` holds the formatted traceback, ``stack_info`` its
text, and every extra is a top-level key whose value JSON can represent.

``"pickle"`` (the stdlib format) is built into the handler. The others live in their own
modules and register here by name with the options they accept; unknown options are a
:class:`ConfigError` at construction.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol

from .._errors import ConfigError

__all__ = ["WIRE_MODULES", "AckedWire", "Session", "Wire", "make_wire", "wire_names"]


class Wire(Protocol):
    """What a non-pickle wire provides."""

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """One framed message for *record* (never raises for odd values)."""
        ...


class Session(Protocol):
    """One connection's protocol state for a wire with acknowledgements."""

    ready: bool

    def handshake(self) -> bytes:
        """Bytes to send right after connecting; then feed replies until ``ready``."""
        ...

    def frame(self, payload: bytes) -> bytes:
        """Frame one buffered payload for sending on this connection, now."""
        ...

    def frames(self, payloads: list[bytes]) -> bytes:
        """Frame several payloads, in order, for one write (a wire may batch them: the
        mplog wire's sealed sessions MAC them together)."""
        ...

    def receive(self, data: bytes) -> int:
        """Feed received bytes (``b""``: EOF); return how many frames were newly
        acknowledged, in send order. Raises ProtocolError when the session is over."""
        ...

    def close_frame(self) -> bytes:
        """Bytes that end the session politely."""
        ...


class AckedWire(Protocol):
    """A wire whose receiver acknowledges each frame: payloads stay buffered until then."""

    window: int

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """The payload for *record*; it is framed per connection by its Session."""
        ...

    def new_session(self) -> Session: ...


#: wire name -> (module implementing it, class name). "pickle" is handled by the handler.
WIRE_MODULES: dict[str, tuple[str, str]] = {
    "syslog": ("mplog._wires.syslog", "SyslogWire"),
    "jsonl": ("mplog._wires.jsonl", "JsonlWire"),
    "relp": ("mplog._wires.relp", "RelpWire"),
    "mplog": ("mplog._wires.mplog", "MplogWire"),
}
#: Wires named by the contract that this version does not implement yet.
PLANNED: tuple[str, ...] = ()


def wire_names() -> list[str]:
    return ["pickle", *WIRE_MODULES]


def make_wire(name: str, options: dict[str, Any]) -> Wire | AckedWire | None:
    """Build the encoder for wire *name* (None for ``"pickle"``); ConfigError if unknown."""
    if name == "pickle":
        if options:
            raise ConfigError(
                f"option{'s' if len(options) > 1 else ''} {', '.join(sorted(options))} "
                "not accepted by wire='pickle'"
            )
        return None
    if name in PLANNED:
        raise ConfigError(
            f"wire={name!r} is not implemented yet; available: {', '.join(wire_names())}"
        )
    if name not in WIRE_MODULES:
        raise ConfigError(f"unknown wire {name!r}; available: {', '.join(wire_names())}")
    module, cls = WIRE_MODULES[name]
    try:
        factory = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"wire={name!r} is not available: {exc}") from exc
    try:
        return factory(**options)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ConfigError(f"bad options for wire={name!r}: {exc}") from exc
