"""TLS options: every bad combination is a one-line ConfigError; the defaults verify the
server; what ships to the listener; the TLS socket the sender gets (over a socketpair)."""

from __future__ import annotations

import pathlib
import pickle
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

import mplog
from mplog import _cli
from mplog._collector import Collector
from mplog._pipeline import ship_handlers
from mplog._tls import TLSError, client_tls, reason, server_context
from tests.certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _one_line_config_error(
    excinfo: pytest.ExceptionInfo[mplog.ConfigError], *words: str, limit: int = 300
) -> None:
    text = str(excinfo.value)
    assert "\n" not in text and len(text) < limit, text
    for w in words:
        assert w in text, (w, text)


def _bad(certs: Certs, tmp: pathlib.Path) -> list[tuple[dict[str, object], tuple[str, ...]]]:
    garbage = tmp / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return [
        ({"tls_ca_file": str(tmp / "missing.pem")}, ("tls_ca_file", "missing.pem", "cannot be read")),
        ({"tls_ca_file": str(tmp)}, ("tls_ca_file", "is a directory")),
        ({"tls_ca_file": str(garbage)}, ("tls_ca_file", "garbage.pem", "no usable CA")),
        ({"tls_ca_file": 42}, ("tls_ca_file", "must be a file path")),
        ({"tls_key_file": certs.client_key}, ("tls_key_file needs tls_cert_file",)),
        ({"tls_cert_file": certs.client, "tls_key_file": certs.server_key},
         ("tls_key_file", "is not the key of", "client.pem")),
        ({"tls_cert_file": certs.client}, ("tls_cert_file", "no usable certificate and key",
                                            "no tls_key_file")),
        ({"tls_cert_file": str(garbage), "tls_key_file": certs.client_key},
         ("tls_cert_file", "garbage.pem", "no usable certificate")),
        ({"tls_cert_file": certs.client, "tls_key_file": str(tmp / "nokey")},
         ("tls_key_file", "nokey", "cannot be read")),
        ({"ssl_context": "not a context"}, ("ssl_context must be an ssl.SSLContext",)),
        ({"ssl_context": ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)}, ("server context",)),
        ({"ssl_context": ssl.create_default_context(), "tls_ca_file": certs.ca},
         ("exclusive", "tls_ca_file")),
        ({"tls_server_name": 7}, ("tls_server_name must be a str",)),
        ({"tls_server_name": ""}, ("tls_server_name must not be empty",)),
    ]


def test_each_bad_combination_is_a_one_line_config_error(certs: Certs, tmp_path: pathlib.Path) -> None:
    for options, words in _bad(certs, tmp_path):
        with pytest.raises(mplog.ConfigError) as excinfo:
            mplog.SocketHandler("127.0.0.1", 6514, wire="syslog", **options)  # type: ignore[arg-type]
        _one_line_config_error(excinfo, *words)


@pytest.mark.parametrize("option", ["tls_ca_file", "tls_server_name", "ssl_context"])
def test_tls_on_a_unix_socket_handler_is_refused(certs: Certs, option: str) -> None:
    value: object = ssl.create_default_context() if option == "ssl_context" else certs.ca
    with pytest.raises(mplog.ConfigError) as excinfo:
        mplog.SocketHandler("/tmp/x.sock", None, **{option: value})  # type: ignore[arg-type]
    _one_line_config_error(excinfo, "TCP", "Unix socket")


def test_no_tls_option_no_tls() -> None:
    h = mplog.SocketHandler("127.0.0.1", 9020)
    assert h._tls is None
    assert client_tls("h", 1, {}) is None


def test_server_certificate_and_name_verified_by_default(certs: Certs) -> None:
    h = mplog.SocketHandler("logs.example", 6514, wire="syslog", tls_ca_file=certs.ca)
    assert h._tls is not None
    ctx = h._tls.context
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert h._tls.server_name == "logs.example"
    assert len(ctx.get_ca_certs()) == 1  # our CA, not the system's, when tls_ca_file is given
    named = mplog.SocketHandler("10.0.0.5", 6514, wire="syslog", tls_ca_file=certs.ca,
                                tls_server_name="logs.example")
    assert named._tls is not None and named._tls.server_name == "logs.example"
    # Any single TLS option turns TLS on; without tls_ca_file the system's CAs verify.
    only_name = mplog.SocketHandler("10.0.0.5", 6514, tls_server_name="logs.example")
    assert only_name._tls is not None
    assert only_name._tls.context.verify_mode == ssl.CERT_REQUIRED


def test_file_options_ship_to_the_listener_and_come_back_with_tls(certs: Certs) -> None:
    h = mplog.SocketHandler("127.0.0.1", 6514, wire="relp", tls_ca_file=certs.ca,
                            tls_cert_file=certs.client, tls_key_file=certs.client_key,
                            tls_server_name="localhost")
    back = pickle.loads(pickle.dumps(h))
    assert back._tls is not None and back._tls.server_name == "localhost"
    assert back._tls.context.verify_mode == ssl.CERT_REQUIRED
    ship_handlers([h])  # no error


def test_ssl_context_handler_cannot_be_shipped_but_a_factory_can(certs: Certs) -> None:
    ctx = ssl.create_default_context(cafile=certs.ca)
    h = mplog.SocketHandler("127.0.0.1", 6514, ssl_context=ctx)
    assert h._tls is not None and h._tls.context is ctx  # used as given
    with pytest.raises(mplog.ConfigError) as excinfo:
        ship_handlers([h])
    _one_line_config_error(excinfo, "ssl_context", "does not pickle", "handlers factory", limit=400)
    ship_handlers(_factory_with_context)  # built in the listener: fine


def _factory_with_context() -> list[mplog.SocketHandler]:
    return [mplog.SocketHandler("127.0.0.1", 6514, ssl_context=ssl.create_default_context())]


def test_collector_tls_options(certs: Certs, tmp_path: pathlib.Path) -> None:
    out = str(tmp_path / "out.jsonl")
    cases: list[tuple[dict[str, object], tuple[str, ...]]] = [
        ({"tls_key": certs.server_key}, ("need --tls-cert",)),
        ({"tls_client_ca": certs.ca}, ("need --tls-cert",)),
        ({"tls_cert": str(tmp_path / "nope.pem")}, ("--tls-cert", "nope.pem", "cannot be read")),
        ({"tls_cert": certs.server, "tls_key": certs.client_key}, ("is not the key of",)),
        ({"tls_cert": certs.server, "tls_key": certs.server_key,
          "tls_client_ca": str(tmp_path / "ca?")}, ("--tls-client-ca", "cannot be read")),
    ]
    for options, words in cases:
        with pytest.raises(mplog.ConfigError) as excinfo:
            Collector(port=0, output=out, **options)  # type: ignore[arg-type]
        _one_line_config_error(excinfo, *words)
    with pytest.raises(mplog.ConfigError) as excinfo:
        Collector(unix=str(tmp_path / "s"), output=out, tls_cert=certs.server, tls_key=certs.server_key)
    _one_line_config_error(excinfo, "TLS needs a TCP port")
    mutual = server_context(certs.server, certs.server_key, certs.ca)
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
    plain = server_context(certs.server, certs.server_key)
    assert plain is not None and plain.verify_mode == ssl.CERT_NONE
    assert server_context(None, None) is None


def test_serve_bad_tls_flags_exit_2_with_one_line(
    certs: Certs, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = _cli.main(["serve", "--port", "0", "--output", str(tmp_path / "o"),
                    "--tls-key", certs.server_key])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("mplog serve: "), err
    assert "--tls-cert" in err


def test_reason_strips_openssl_decoration() -> None:
    e = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    assert reason(e) == "wrong version number"
    assert reason(ssl.SSLEOFError(8, "EOF occurred")) == \
        "the server closed the connection (is it a TLS port?)"
    assert reason(TimeoutError("_ssl.c:980: The handshake operation timed out")) == "timed out"
    wrapped = TLSError("TLS: x")
    wrapped.__cause__ = ssl.SSLZeroReturnError(6, "closed")
    assert reason(wrapped, "server") == "the client closed the connection"
    assert "\n" not in reason(ssl.SSLError(1, "two\nlines"))


@pytest.fixture
def tls_pair(certs: Certs) -> Iterator[tuple[socket.socket, ssl.SSLSocket]]:
    """(client socket as the sender gets it, server SSLSocket), over a socketpair."""
    a, b = socket.socketpair()
    sctx = server_context(certs.server, certs.server_key)
    assert sctx is not None
    server: list[ssl.SSLSocket] = []
    t = threading.Thread(target=lambda: server.append(sctx.wrap_socket(b, server_side=True)))
    t.start()
    tls = client_tls("localhost", 1, {"tls_ca_file": certs.ca})
    assert tls is not None
    client = tls.wrap(a, "localhost:1")
    t.join(10)
    assert server
    yield client, server[0]
    client.close()
    server[0].close()


def test_sender_socket_peek_and_dontwait(tls_pair: tuple[socket.socket, ssl.SSLSocket]) -> None:
    client, server = tls_pair
    client.settimeout(0.5)
    with pytest.raises(BlockingIOError):  # tickets were read at connect; nothing else yet
        client.recv(1, socket.MSG_PEEK)
    payload = bytes(range(256)) * 160  # 40960 bytes: three TLS records
    server.sendall(payload)
    import select

    select.select([client], [], [], 5)
    assert client.recv(1, socket.MSG_PEEK) == payload[:1]
    assert client.recv(1, socket.MSG_PEEK) == payload[:1]  # a peek consumes nothing
    got = b""
    while len(got) < len(payload):
        select.select([client], [], [], 5)
        try:
            got += client.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
    assert got == payload
    # Nothing was left inside OpenSSL, where select() could not have seen it.
    assert ssl.SSLSocket.pending(client) == 0  # type: ignore[arg-type]
    server.sendall(b"abc")
    select.select([client], [], [], 5)
    assert client.recv(2) == b"ab" and client.pending() == 1 and client.recv(10) == b"c"
    with pytest.raises(ValueError, match="unsupported recv flags"):
        client.recv(1, socket.MSG_WAITALL)
    server.close()
    select.select([client], [], [], 5)
    assert client.recv(1, socket.MSG_PEEK) == b""  # EOF: the sender's "peer closed"
