"""IO: TLS for socket handlers (every wire over TCP) and for the collector.

Rules this module keeps:

- One place turns the user's TLS options into one ``ssl.SSLContext``
  (:func:`client_tls`, :func:`server_context`); every mistake in them is a one-line
  :class:`ConfigError` at construction, never a surprise at the first connection.
- The server's certificate is verified by default: the context is
  ``ssl.create_default_context(cafile=tls_ca_file)`` (``CERT_REQUIRED``, hostname checked
  against ``tls_server_name``, default: the handler's host).
- A connection counts as made only once the TLS handshake is complete *and*, with TLS
  1.3, the server has accepted it: in TLS 1.3 a server checks the client's certificate
  after the client's handshake has returned, and refuses it with an alert that the client
  only reads later. A wire that never reads (pickle, syslog, jsonl) would count records
  as sent into a refused connection; so :meth:`ClientTLS.wrap` waits (bounded) for the
  server's first post-handshake message (a session ticket, or that alert).
- SSL errors become one line saying what failed (:func:`reason`), raised as
  :class:`TLSError`, an ``OSError``, so the sender treats them as any failed connection:
  records wait, the back-off timer decides the next try.
- The sockets handed to the sender support what it does with plain sockets:
  ``recv(n, MSG_PEEK)`` (is the peer gone?) and ``recv(n, MSG_DONTWAIT)``, which
  ``ssl.SSLSocket`` refuses (:class:`_TLSSocket`).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from typing import Any

from . import _poll
from ._errors import ConfigError
from ._text import one_line

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "TLS_OPTIONS",
    "ClientTLS",
    "TLSError",
    "client_tls",
    "reason",
    "server_context",
]

#: Seconds a TLS handshake may take (client and collector side), the TLS 1.3 acceptance
#: wait included: long enough for a loaded receiver, short enough that a peer that is not
#: speaking TLS (a plain-TCP port that only reads) costs one bounded wait per try.
HANDSHAKE_TIMEOUT = 5.0
#: Longest wait, within HANDSHAKE_TIMEOUT, for a TLS 1.3 server's first message after the
#: handshake. OpenSSL, GnuTLS and Python servers send session tickets at once; a server
#: that sends none costs this much per connection, and is then trusted to have accepted.
TLS13_ACCEPT_WAIT = 1.0
#: The SocketHandler keyword arguments this module owns.
TLS_OPTIONS = ("ssl_context", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")
#: Longest reason text kept from an SSL error.
_REASON_LIMIT = 300
#: OpenSSL reason codes that deserve a plain word before OpenSSL's own text, as seen by
#: a client (an alert names what the server objected to) and by the collector.
_HINTS = {
    "client": (
        ("CERTIFICATE_REQUIRED", "the server requires a client certificate (tls_cert_file=)"),
        ("ALERT_UNKNOWN_CA", "the server does not trust our client certificate"),
        ("ALERT_BAD_CERTIFICATE", "the server refused our client certificate"),
        ("ALERT_CERTIFICATE_UNKNOWN", "the server refused our client certificate"),
        ("WRONG_VERSION_NUMBER", "the server does not speak TLS here"),
        ("RECORD_LAYER_FAILURE", "the server does not speak TLS here"),
    ),
    "server": (
        ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no client certificate, and one is required"),
        ("ALERT_UNKNOWN_CA", "the client does not trust our certificate"),
        ("ALERT_BAD_CERTIFICATE", "the client refused our certificate"),
        ("ALERT_CERTIFICATE_UNKNOWN", "the client refused our certificate"),
        ("WRONG_VERSION_NUMBER", "the client does not speak TLS"),
        ("HTTP_REQUEST", "the client does not speak TLS"),
    ),
}


class TLSError(OSError):
    """A TLS connection could not be made or was refused; ``str()`` is one line."""


def _read_file(option: str, path: object) -> str:
    """*path* as a str once it is known to be a readable file; ConfigError otherwise."""
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"{option} must be a file path, got {one_line(path, 80)}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise ConfigError(f"{option} must be a str path, got {one_line(text, 80)}")
    try:
        with open(text, "rb"):
            pass
    except IsADirectoryError:
        raise ConfigError(f"{option} {text!r} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{option} {text!r} cannot be read: {exc.strerror or exc}") from None
    return text


def reason(exc: BaseException, side: str = "client") -> str:
    """One line saying why a TLS operation failed, without OpenSSL's decoration
    (``[SSL: CODE]`` prefixes, ``(_ssl.c:1006)`` suffixes), as seen from *side*
    (``"client"`` or ``"server"``)."""
    closed = ("the server closed the connection (is it a TLS port?)" if side == "client"
              else "the client closed the connection")
    if isinstance(exc, TLSError) and exc.__cause__ is not None:
        return reason(exc.__cause__, side)  # already mapped once: say it from the source
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"certificate verify failed: {exc.verify_message}"
    elif isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        text = closed
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif isinstance(exc, ssl.SSLError):
        text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        text = re.sub(r"^\[[A-Z0-9_]+: [A-Z0-9_]+\] ", "", text)
        text = re.sub(r" \(_ssl\.c:\d+\)$", "", text)
        for code, hint in _HINTS[side]:
            if code in (getattr(exc, "reason", None) or ""):
                text = f"{hint}: {text}"
                break
    elif isinstance(exc, ConnectionError):
        text = closed
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return one_line(text, _REASON_LIMIT)


class _TLSSocket(ssl.SSLSocket):
    """An ``ssl.SSLSocket`` that also takes the ``recv`` flags the sender uses on plain
    sockets: ``MSG_PEEK`` (the decrypted bytes are kept for the next ``recv``) and
    ``MSG_DONTWAIT`` (no wait; ``BlockingIOError`` when nothing is decrypted yet).
    A record that carries no data (a session ticket, a key update) is not "readable".

    ``select()`` sees the kernel's buffer, not OpenSSL's: so every read takes all that
    OpenSSL has decrypted, and what the caller did not ask for is kept here and returned
    first next time. A caller that reads until it gets less than it asked for (as the
    sender does) therefore never leaves bytes behind where ``select()`` cannot see them.
    """

    _peeked: bytes = b""

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if flags & ~(socket.MSG_PEEK | socket.MSG_DONTWAIT):
            raise ValueError(f"unsupported recv flags on a TLS socket: {flags:#x}")
        try:
            return self._recv(buflen, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:  # an alert from the peer, a corrupt record: one line
            raise TLSError(f"TLS: {reason(exc)}") from exc

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            raise TLSError(f"TLS: {reason(exc)}") from exc

    def _recv(self, buflen: int, flags: int) -> bytes:
        if not self._peeked:
            # At least a whole record's worth, so a small peek does not split one.
            want = max(buflen, 65536)
            data = self._recv_now(want) if flags else super().recv(want)
            while data and super().pending():
                data += super().recv(super().pending())
            if not data:
                return b""
            self._peeked = data
        data = self._peeked[:buflen]
        if not flags & socket.MSG_PEEK:
            self._peeked = self._peeked[len(data):]
        return data

    def _recv_now(self, buflen: int) -> bytes:
        timeout = self.gettimeout()
        self.settimeout(0.0)
        try:
            return super().recv(buflen)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError("no TLS data yet") from None
        finally:
            self.settimeout(timeout)

    def pending(self) -> int:
        return len(self._peeked) + super().pending()


class ClientTLS:
    """How a handler makes its TLS connections: the context and the name to verify."""

    def __init__(self, context: ssl.SSLContext, server_name: str, built: bool) -> None:
        self.context = context
        self.server_name = server_name
        #: True if mplog built the context from file options (it can be rebuilt in the
        #: listener process); False for a user's ``ssl_context`` (it cannot be shipped).
        self.built = built

    def wrap(
        self, sock: socket.socket, where: str, timeout: float = HANDSHAKE_TIMEOUT
    ) -> socket.socket:
        """Do the client handshake on the connected *sock* within *timeout*; return the
        TLS socket. *where* (``host:port``) names the peer in the error.

        Raises:
            TLSError: the handshake failed, timed out, or the server refused us (one line).
        """
        deadline = time.monotonic() + timeout
        previous = sock.gettimeout()
        try:
            create: Any = _TLSSocket._create  # type: ignore[attr-defined]
            tls: _TLSSocket = create(
                sock=sock, server_side=False, do_handshake_on_connect=False,
                suppress_ragged_eofs=True, server_hostname=self.server_name,
                context=self.context, session=None,
            )
        except (ssl.SSLError, ValueError) as exc:
            sock.close()
            raise TLSError(f"TLS setup for {where} failed: {reason(exc)}") from exc
        try:
            tls.settimeout(timeout)
            tls.do_handshake()
            if tls.version() == "TLSv1.3":
                _await_acceptance(tls, deadline)
            tls.settimeout(previous)
        except (OSError, ValueError) as exc:
            tls.close()
            why = reason(exc)
            if isinstance(exc, TimeoutError):
                why += f" after {timeout:g} s"
            raise TLSError(f"TLS handshake with {where} failed: {why}") from exc
        return tls


def _await_acceptance(tls: _TLSSocket, deadline: float) -> None:
    """Wait until a TLS 1.3 server shows it accepted the connection (its first session
    ticket arrived) or refuses it (its alert raises ``ssl.SSLError`` here), at most
    :data:`TLS13_ACCEPT_WAIT`. Application data read meanwhile is kept for ``recv``."""
    until = min(deadline, time.monotonic() + TLS13_ACCEPT_WAIT)
    while True:
        session = tls.session
        if session is not None and session.has_ticket:
            return
        remaining = until - time.monotonic()
        if remaining <= 0:
            return  # a server that sends no tickets: accepted, as far as we can tell
        readable = _poll.readable([tls], remaining)
        if not readable:
            continue
        try:
            data = tls.recv(65536, socket.MSG_PEEK)
        except BlockingIOError:
            continue  # a record without data (a ticket): look again
        if not data:
            raise ssl.SSLEOFError("closed")
        return  # the server spoke first: it accepted us


def _check_type(option: str, value: object, kind: type, what: str) -> None:
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{option} must be {what}, got {one_line(value, 80)}")


def client_tls(host: str, port: int | None, options: dict[str, Any]) -> ClientTLS | None:
    """The TLS setup that *options* (the :data:`TLS_OPTIONS` a handler was given) ask
    for, or None when they ask for none.

    Any of them turns TLS on. ``ssl_context`` is used as given; otherwise a context is
    built with ``ssl.create_default_context(cafile=tls_ca_file)`` (the system's trust store
    when there is no ``tls_ca_file``) plus ``tls_cert_file``/``tls_key_file`` as the
    client certificate. The server name checked is ``tls_server_name``, default *host*.

    Raises:
        ConfigError: a file that cannot be read or holds no certificate/key, a key
            without a certificate, a certificate and key that do not match, an
            ``ssl_context`` that is not a client ``ssl.SSLContext`` or comes with file
            options, or TLS asked for a Unix-socket handler (*port* None).
    """
    ctx = options.get("ssl_context")
    ca, cert, key = (options.get(k) for k in ("tls_ca_file", "tls_cert_file", "tls_key_file"))
    name = options.get("tls_server_name")
    if ctx is None and ca is None and cert is None and key is None and name is None:
        return None
    if port is None:
        raise ConfigError(
            f"TLS options need a TCP destination; {host!r} with port=None is a Unix socket"
        )
    _check_type("tls_server_name", name, str, "a str")
    if name == "":
        raise ConfigError("tls_server_name must not be empty")
    if ctx is not None:
        if not isinstance(ctx, ssl.SSLContext):
            raise ConfigError(f"ssl_context must be an ssl.SSLContext, got {one_line(ctx, 80)}")
        if ctx.protocol == ssl.PROTOCOL_TLS_SERVER:
            raise ConfigError("ssl_context is a server context (PROTOCOL_TLS_SERVER); "
                              "a handler needs a client one, e.g. ssl.create_default_context()")
        given = [k for k, v in (("tls_ca_file", ca), ("tls_cert_file", cert),
                                ("tls_key_file", key)) if v is not None]
        if given:
            raise ConfigError(f"ssl_context= and {', '.join(given)}= are exclusive: "
                              "load the files into the context, or pass only the files")
        return ClientTLS(ctx, name or host, built=False)
    return ClientTLS(_client_context(ca, cert, key), name or host, built=True)


def _client_context(ca: object, cert: object, key: object) -> ssl.SSLContext:
    if key is not None and cert is None:
        raise ConfigError("tls_key_file needs tls_cert_file (the client certificate it belongs to)")
    ca_path = None if ca is None else _read_file("tls_ca_file", ca)
    try:
        ctx = ssl.create_default_context(cafile=ca_path)
    except ssl.SSLError as exc:
        raise ConfigError(f"tls_ca_file {ca_path!r} holds no usable CA certificate: "
                          f"{reason(exc)}") from None
    if cert is not None:
        _load_chain(ctx, "tls_cert_file", cert, "tls_key_file", key)
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert_option: str, cert: object, key_option: str,
                key: object) -> None:
    cert_path = _read_file(cert_option, cert)
    key_path = None if key is None else _read_file(key_option, key)
    try:
        ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise ConfigError(f"{key_option} {key_path!r} is not the key of {cert_option} "
                              f"{cert_path!r}") from None
        where = f"{cert_option} {cert_path!r}"
        if key_path:
            where += f" / {key_option} {key_path!r}"
        hint = "" if key_path else f" (no {key_option}: the key must then be in the same file)"
        raise ConfigError(f"{where}: no usable certificate and key: {reason(exc)}{hint}") from None


def server_context(cert: object, key: object, client_ca: object = None) -> ssl.SSLContext | None:
    """The collector's TLS context, or None when *cert*, *key* and *client_ca* are all None.

    *cert* (and *key*, unless the key is in the certificate file) is the server's
    certificate; *client_ca*, if given, makes client certificates required and verified
    against it (mutual TLS).

    Raises:
        ConfigError: as :func:`client_tls`, and a *client_ca* or *key* without *cert*.
    """
    if cert is None and key is None and client_ca is None:
        return None
    if cert is None:
        raise ConfigError("--tls-key and --tls-client-ca need --tls-cert (the server certificate)")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(ctx, "--tls-cert", cert, "--tls-key", key)
    if client_ca is not None:
        path = _read_file("--tls-client-ca", client_ca)
        try:
            ctx.load_verify_locations(cafile=path)
        except ssl.SSLError as exc:
            raise ConfigError(f"--tls-client-ca {path!r} holds no usable CA certificate: "
                              f"{reason(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
