"""TLS on every TCP wire, against real TLS receivers: ``mplog serve --tls-*`` (mplog and
pickle wires, mutual TLS), rsyslog imtcp with its OpenSSL stream driver (syslog wire),
rsyslog imrelp with TLS (relp wire), syslog-ng's TLS source (syslog wire), and servers that do not speak TLS at all.

Where a test needs a handler's ``last_error`` it uses a handler of its own in the test
process (the sender thread and the sockets are the real ones), since that is where the
error string lives; everything about delivery goes through a real pipeline too.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mplog
from mplog._collector import READ_SIZE
from tests.certs import Certs, make_certs
from tests.helpers import Serve, wait_until
from tests.receivers import Rsyslog, SyslogNg


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _fast(h: mplog.SocketHandler) -> mplog.SocketHandler:
    h.retryStart, h.retryMax = 0.05, 0.3
    return h


def _client(certs: Certs, *, ca: str | None = None, cert: bool = True) -> dict[str, str]:
    kw = {"tls_ca_file": ca or certs.ca}
    if cert:
        kw.update(tls_cert_file=certs.client, tls_key_file=certs.client_key)
    return kw


def _serve_tls(certs: Certs, out: pathlib.Path, *, mutual: bool = False) -> Serve:
    extra = ["--tls-cert", certs.server, "--tls-key", certs.server_key]
    if mutual:
        extra += ["--tls-client-ca", certs.ca]
    return Serve(out, 0, *extra)


class _Standalone:
    """A SocketHandler used on its own in this process, on a logger of its own."""

    def __init__(self, name: str, h: mplog.SocketHandler) -> None:
        self.h = _fast(h)
        self.log = logging.getLogger(name)
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.log.addHandler(self.h)

    def last_error(self) -> str | None:
        return self.h._sender.last_error

    def close(self) -> None:
        self.log.removeHandler(self.h)
        self.h.close_timeout = min(self.h.close_timeout, 0.5)  # refused ones: do not wait
        self.h.close()


@pytest.fixture
def standalone() -> Iterator[Any]:
    made: list[_Standalone] = []

    def make(name: str, h: mplog.SocketHandler) -> _Standalone:
        s = _Standalone(name, h)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def _msgs(lines: list[dict[str, Any]], name: str) -> list[str]:
    return [rec["msg"] for rec in lines if rec.get("name") == name]


# -- mplog serve ---------------------------------------------------------------------------


def test_serve_tls_mplog_and_pickle_wires_deliver_exactly(
    tmp_path: pathlib.Path, certs: Certs, start_pipeline: Any
) -> None:
    n = 3000
    srv = _serve_tls(certs, tmp_path / "out.jsonl")
    try:
        handlers = [
            _fast(mplog.SocketHandler("127.0.0.1", srv.port, wire=wire, tls_ca_file=certs.ca))
            for wire in ("mplog", "pickle")
        ]
        p = start_pipeline(handlers)
        log = logging.getLogger("tls.both")
        for i in range(n):
            log.info("rec %d", i)
        assert p.flush(30)
        st = p.stats()
        # Both handlers got every record; the mplog wire's count is acknowledgements.
        assert st["received"] == n and st["sent"] == 2 * n
        assert st["buffered"] == 0 and st["dropped"] == 0
        wait_until(lambda: srv.count() >= 2 * n, 30, f"{2 * n} lines")
        lines = srv.lines()
        ours = _msgs(lines, "tls.both")
        assert sorted(ours) == sorted([f"rec {i}" for i in range(n)] * 2)
        by_wire = [r for r in lines if r.get("name") == "tls.both" and "mplog_seq" in r]
        assert [r["msg"] for r in by_wire] == [f"rec {i}" for i in range(n)]  # mplog: in order
        assert srv.terminate() == 0
        assert "TLS handshake" not in srv.stderr()
    finally:
        srv.stop()


@pytest.mark.parametrize("wire", ["mplog", "pickle"])
def test_mutual_tls_no_client_cert_refused_then_fixed(
    tmp_path: pathlib.Path, certs: Certs, wire: str, standalone: Any, start_pipeline: Any
) -> None:
    """A TLS 1.3 server refuses a missing client certificate only after the client's
    handshake returned: the pickle wire never reads, so without mplog's wait for the
    server's answer these records would count as sent, and be lost."""
    n = 200
    collector = mplog.Collector(
        port=0, output=str(tmp_path / "out.jsonl"), tls_cert=certs.server,
        tls_key=certs.server_key, tls_client_ca=certs.ca,
    )
    collector.start()
    try:
        bad = standalone(f"tls.nocert.{wire}", mplog.SocketHandler(
            "127.0.0.1", collector.port, wire=wire, **_client(certs, cert=False)))
        for i in range(n):
            bad.log.info("nocert %d", i)
        wait_until(lambda: collector.stats["tls_failures"] >= 2, 20, "two refused handshakes")
        err = bad.last_error()
        assert err is not None and "requires a client certificate" in err, err
        assert f"TLS handshake with 127.0.0.1:{collector.port} failed" in err
        st = bad.h.stats()
        assert st["sent"] == 0 and st["buffered"] == n and st["connected"] == 0
        assert collector.stats["records"] == 0

        # The right certificate, through a pipeline: everything arrives.
        p = start_pipeline([_fast(mplog.SocketHandler(
            "127.0.0.1", collector.port, wire=wire, **_client(certs)))])
        for i in range(n):
            logging.getLogger("tls.good").info("good %d", i)
        assert p.flush(30)
        assert p.stats()["sent"] == n
        wait_until(lambda: collector.stats["records"] >= n, 20, f"{n} records")
        assert collector.stats["records"] == n  # and still none of the refused sender's
    finally:
        collector.stop()


def test_mutual_tls_wrong_ca_refused_then_right_ca_delivers_everything(
    tmp_path: pathlib.Path, certs: Certs, standalone: Any
) -> None:
    """The client trusts the wrong CA: nothing is sent, the records wait in the spool,
    last_error says why; a handler with the right CA on the same spool delivers them all."""
    n = 500
    spool = tmp_path / "spool"
    srv = _serve_tls(certs, tmp_path / "out.jsonl", mutual=True)
    try:
        wrong = standalone("tls.spooled", mplog.SocketHandler(
            "127.0.0.1", srv.port, wire="mplog", spool_dir=spool, spool_mode="all",
            **_client(certs, ca=certs.wrong_ca)))
        for i in range(n):
            wrong.log.info("spooled %d", i)
        wait_until(wrong.last_error, 20, "a failed handshake")
        err = wrong.last_error()
        # The collector sends its CA along (OpenSSL completes the chain from the client
        # CA store), so OpenSSL's words are about that CA rather than a missing issuer.
        assert err in (
            f"TLS handshake with 127.0.0.1:{srv.port} failed: certificate verify "
            f"failed: {why}" for why in ("self-signed certificate in certificate chain",
                                         "unable to get local issuer certificate")
        ), err
        assert wrong.h.stats()["buffered"] == n and wrong.h.stats()["sent"] == 0
        wrong.close()  # what it could not send stays in the spool

        right = standalone("tls.spooled2", mplog.SocketHandler(
            "127.0.0.1", srv.port, wire="mplog", spool_dir=spool, spool_mode="all",
            **_client(certs)))
        right.log.info("after the fix")
        right.h.flush(30)
        assert right.h.stats()["buffered"] == 0 and right.last_error() is None, (right.h.stats(), right.last_error(), srv.count())
        wait_until(lambda: srv.count() >= n + 1, 30, f"{n + 1} lines")
        assert [r["msg"] for r in srv.lines()] == [f"spooled {i}" for i in range(n)] + ["after the fix"]
        assert srv.terminate() == 0
        # The collector said why it closed the connections, one line each.
        refused = [ln for ln in srv.stderr().splitlines() if "TLS handshake with" in ln]
        assert refused and all(ln.startswith("mplog serve: TLS handshake with 127.0.0.1:") for ln in refused)
    finally:
        srv.stop()


def _log_numbered(n: int) -> int:
    log = logging.getLogger("tls.worker")
    for i in range(n):
        log.info("record %d", i, extra={"i": i})
    return os.getpid()


def test_serve_killed_and_restarted_over_tls_exactly_once(
    tmp_path: pathlib.Path, certs: Certs, start_pipeline: Any
) -> None:
    workers, per_worker = 4, 20_000 // 4
    srv = _serve_tls(certs, tmp_path / "out.jsonl", mutual=True)
    try:
        p = start_pipeline([_fast(mplog.SocketHandler(
            "127.0.0.1", srv.port, wire="mplog", **_client(certs)))])
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers, initializer=mplog.worker_init, initargs=(p.address,)) as pool:
            result = pool.map_async(_log_numbered, [per_worker] * workers)
            for _ in range(3):
                target = srv.count() + 2500
                wait_until(lambda t=target: srv.count() >= t, 60, f"{target} lines")
                srv.kill()
                srv.start()
            result.get(120)
        assert p.flush(60)
        st = p.stats()
        assert st["received"] == st["handled"] == st["sent"] == workers * per_worker
        assert st["dropped"] == 0 and st["buffered"] == 0 and st["reconnects"] >= 3
        by_pid: dict[int, list[int]] = {}
        for rec in srv.lines():
            if rec.get("name") == "tls.worker":
                by_pid.setdefault(rec["process"], []).append(rec["i"])
        assert len(by_pid) == workers
        for pid, seq in by_pid.items():
            assert seq == list(range(per_worker)), f"process {pid}: {len(seq)} records"
        assert srv.terminate() == 0
    finally:
        srv.stop()


# -- rsyslog ---------------------------------------------------------------------------------


def _syslog_tls_delivers_in_order(daemon: Any, certs: Certs, start_pipeline: Any, app: str) -> None:
    """2,000 records over TLS on the syslog wire into *daemon* (anyone may connect; mplog
    verifies the server): every one lands, in order, a multi-line message whole."""
    n = 2000
    p = start_pipeline([_fast(mplog.SocketHandler(
        "127.0.0.1", daemon.port, wire="syslog", app_name=app, tls_ca_file=certs.ca))])
    log = logging.getLogger(f"tls.{app}")
    log.info("multi\nline %s", "über")
    for i in range(n - 1):
        log.info("m %d", i)
    assert p.flush(30)
    assert p.stats()["sent"] == n
    daemon.wait_count(n)
    lines = daemon.lines()
    msgs = [x["msg"].lstrip("\ufeff") for x in lines]  # rsyslog's $msg keeps the BOM
    assert msgs[0] == "multi\nline über"  # octet counting kept it whole
    assert lines[0]["app"] == app and lines[0]["msgid"] == f"tls.{app}"
    assert msgs[1:] == [f"m {i}" for i in range(n - 1)]


def test_rsyslog_imtcp_tls_anon_syslog_wire(
    tmp_path: pathlib.Path, certs: Certs, start_pipeline: Any
) -> None:
    rs = Rsyslog(tmp_path, "imtcp", tls=certs, tls_auth="anon")
    try:
        _syslog_tls_delivers_in_order(rs, certs, start_pipeline, "imtcp")
    finally:
        rs.stop()


def _refused_without_our_client_cert(daemon: Any, certs: Certs, standalone: Any, n: int) -> None:
    """A handler without a client certificate is refused by *daemon*, says why, sends
    nothing and keeps its *n* records."""
    nocert = standalone(f"tls.{daemon.name}.nocert", mplog.SocketHandler(
        "127.0.0.1", daemon.port, wire="syslog", **_client(certs, cert=False)))
    for i in range(n):
        nocert.log.info("nocert %d", i)
    wait_until(nocert.last_error, 20, "a refused connection")
    assert (f"TLS handshake with 127.0.0.1:{daemon.port} failed: the server requires a client "
            "certificate") in (nocert.last_error() or ""), nocert.last_error()
    st = nocert.h.stats()
    assert st["sent"] == 0 and st["buffered"] == n  # kept, not dropped


def _delivered_with_our_client_cert(daemon: Any, certs: Certs, standalone: Any, n: int) -> None:
    good = standalone(f"tls.{daemon.name}.good", mplog.SocketHandler(
        "127.0.0.1", daemon.port, wire="syslog", **_client(certs)))
    for i in range(n):
        good.log.info("good %d", i)
    good.h.flush(30)
    assert good.h.stats()["sent"] == n and good.last_error() is None
    daemon.wait_count(n)
    assert [x["msg"].lstrip("\ufeff") for x in daemon.lines()] == [f"good {i}" for i in range(n)]


def test_rsyslog_imtcp_tls_x509_name_needs_our_client_cert(
    tmp_path: pathlib.Path, certs: Certs, standalone: Any
) -> None:
    rs = Rsyslog(tmp_path, "imtcp", tls=certs, tls_auth="x509/name")
    try:
        _refused_without_our_client_cert(rs, certs, standalone, 300)
        _delivered_with_our_client_cert(rs, certs, standalone, 300)
    finally:
        rs.stop()


@pytest.mark.parametrize("auth", ["anon", "name"])
def test_rsyslog_imrelp_tls_relp_wire_acknowledged(
    tmp_path: pathlib.Path, certs: Certs, auth: str, start_pipeline: Any
) -> None:
    n = 2000
    rs = Rsyslog(tmp_path, "imrelp", tls=certs, tls_auth=auth)
    try:
        p = start_pipeline([_fast(mplog.SocketHandler(
            "127.0.0.1", rs.port, wire="relp", app_name="tlsrelp", **_client(certs)))])
        log = logging.getLogger("tls.relp")
        for i in range(n):
            log.info("r %d", i)
        assert p.flush(30)
        st = p.stats()
        assert st["sent"] == st["received"] == n and st["buffered"] == 0  # acknowledged
        rs.wait_count(n)
        assert [x["msg"].lstrip("\ufeff") for x in rs.lines()] == [f"r {i}" for i in range(n)]
    finally:
        rs.stop()


# -- syslog-ng --------------------------------------------------------------------------------


def test_syslog_ng_tls_source_syslog_wire(
    tmp_path: pathlib.Path, certs: Certs, start_pipeline: Any
) -> None:
    sng = SyslogNg(tmp_path, tls=certs)  # peer-verify(optional-untrusted): no client cert
    try:
        _syslog_tls_delivers_in_order(sng, certs, start_pipeline, "sng")
    finally:
        sng.stop()


def test_syslog_ng_tls_required_trusted_needs_our_client_cert_and_our_ca(
    tmp_path: pathlib.Path, certs: Certs, standalone: Any
) -> None:
    sng = SyslogNg(tmp_path, tls=certs, tls_verify="required-trusted")
    try:
        _refused_without_our_client_cert(sng, certs, standalone, 300)
        wrong = standalone("tls.sng.wrongca", mplog.SocketHandler(
            "127.0.0.1", sng.port, wire="syslog", **_client(certs, ca=certs.wrong_ca)))
        wrong.log.info("never")
        wait_until(wrong.last_error, 20, "an untrusted server")
        assert "certificate verify failed" in (wrong.last_error() or ""), wrong.last_error()
        _delivered_with_our_client_cert(sng, certs, standalone, 300)
    finally:
        sng.stop()


# -- servers that do not speak TLS ----------------------------------------------------------


class _PlainServer:
    """A plain TCP server in a thread that accepts and then either closes at once or
    holds the connection without a word (``mode``)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            if self.mode == "close":
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.mark.parametrize("wire", ["pickle", "relp"])
def test_handshake_with_a_server_that_closes_is_a_delivery_error(
    certs: Certs, wire: str, standalone: Any
) -> None:
    srv = _PlainServer("close")
    try:
        s = standalone(f"tls.closes.{wire}", mplog.SocketHandler(
            "127.0.0.1", srv.port, wire=wire, tls_ca_file=certs.ca))
        for i in range(50):
            s.log.info("x %d", i)
        wait_until(lambda: srv.accepted >= 3, 20, "three tries, on the back-off timer")
        assert s.last_error() == (f"TLS handshake with 127.0.0.1:{srv.port} failed: "
                                  "the server closed the connection (is it a TLS port?)")
        st = s.h.stats()
        assert st["buffered"] == 50 and st["sent"] == 0 and st["connected"] == 0
        assert s.h._sender._thread is not None and s.h._sender._thread.is_alive()
    finally:
        srv.close()


def test_handshake_with_a_silent_server_times_out(certs: Certs, standalone: Any) -> None:
    srv = _PlainServer("hold")
    try:
        s = standalone("tls.silent", mplog.SocketHandler(
            "127.0.0.1", srv.port, wire="syslog", tls_ca_file=certs.ca))
        t0 = time.monotonic()
        s.log.info("waits")
        wait_until(s.last_error, 20, "the handshake to time out")
        took = time.monotonic() - t0
        assert s.last_error() == (f"TLS handshake with 127.0.0.1:{srv.port} failed: "
                                  "timed out after 5 s")
        assert 4.5 <= took < 15, took
        assert s.h.stats()["buffered"] == 1 and s.h.stats()["sent"] == 0
    finally:
        srv.close()


def test_plain_mplog_serve_refuses_a_tls_client(
    tmp_path: pathlib.Path, certs: Certs, standalone: Any
) -> None:
    srv = Serve(tmp_path / "out.jsonl")  # no TLS: the ClientHello is a bad frame to it
    try:
        s = standalone("tls.toplain", mplog.SocketHandler(
            "127.0.0.1", srv.port, wire="mplog", tls_ca_file=certs.ca))
        s.log.info("never in the clear")
        wait_until(s.last_error, 20, "a failed handshake")
        assert s.last_error() == (f"TLS handshake with 127.0.0.1:{srv.port} failed: "
                                  "the server closed the connection (is it a TLS port?)")
        assert s.h.stats()["buffered"] == 1
        assert srv.count() == 0
    finally:
        srv.stop()


def test_tls_client_to_plain_client_port_of_a_tls_collector(
    tmp_path: pathlib.Path, certs: Certs, standalone: Any
) -> None:
    """The other way round: a plain client at a TLS collector is closed, counted, and
    named on stderr; the collector serves others on."""
    collector = mplog.Collector(port=0, output=str(tmp_path / "out.jsonl"),
                                tls_cert=certs.server, tls_key=certs.server_key)
    collector.start()
    try:
        plain = standalone("tls.plainclient", mplog.SocketHandler(
            "127.0.0.1", collector.port, wire="mplog"))
        plain.log.info("in the clear")
        wait_until(lambda: collector.stats["tls_failures"] >= 1, 20, "a refused plain client")
        assert plain.h.stats()["sent"] == 0 and plain.h.stats()["buffered"] == 1
        good = standalone("tls.tlsclient", mplog.SocketHandler(
            "127.0.0.1", collector.port, wire="mplog", tls_ca_file=certs.ca))
        good.log.info("encrypted")
        good.h.flush(20)
        assert good.h.stats()["sent"] == 1
        assert collector.stats["records"] == 1
    finally:
        collector.stop()


def _pickle_frame(i: int, pad: int) -> bytes:
    import pickle
    import struct

    body = pickle.dumps({"name": "tls.burst", "msg": f"b {i}", "levelno": 20, "pad": "x" * pad}, 1)
    return struct.pack(">L", len(body)) + body


def test_serve_reads_what_openssl_holds_after_a_long_read(tmp_path: pathlib.Path, certs: Certs) -> None:
    """The collector reads at most READ_SIZE at a time; a TLS record cut by that limit
    leaves its rest decrypted inside OpenSSL, where select() does not see it. Stopped
    while a client writes a small record and then more than READ_SIZE, the collector
    must still write every record, with the client's connection left open (a close
    would wake select and hide the bug)."""
    import signal
    import ssl

    srv = _serve_tls(certs, tmp_path / "out.jsonl")
    try:
        assert srv.proc is not None
        ctx = ssl.create_default_context(cafile=certs.ca)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            # Exactly READ_SIZE (16 full TLS records) after one small record: the read
            # that ends at READ_SIZE cuts the last record, and the kernel has nothing left
            # to wake select() with.
            frames = [_pickle_frame(i, 900) for i in range(259)]
            used = sum(map(len, frames))
            last = _pickle_frame(259, 0)
            frames.append(_pickle_frame(259, READ_SIZE - used - len(last)))
            assert sum(map(len, frames)) == READ_SIZE
            os.kill(srv.proc.pid, signal.SIGSTOP)
            try:
                tls.sendall(_pickle_frame(-1, 0))
                tls.sendall(b"".join(frames))
            finally:
                os.kill(srv.proc.pid, signal.SIGCONT)
            wait_until(lambda: srv.count() >= 261, 20, "261 lines, the connection still open")
        assert [r["msg"] for r in srv.lines()] == ["b -1"] + [f"b {i}" for i in range(260)]
    finally:
        srv.stop()


def test_a_stalled_handshake_blocks_no_one_and_is_closed_at_its_deadline(
    tmp_path: pathlib.Path, certs: Certs, standalone: Any
) -> None:
    """A client that opens a connection to the TLS collector and sends half a ClientHello
    (or nothing) must not hold up anyone else, and is closed after HANDSHAKE_TIMEOUT."""
    from mplog._tls import HANDSHAKE_TIMEOUT

    collector = mplog.Collector(port=0, output=str(tmp_path / "out.jsonl"),
                                tls_cert=certs.server, tls_key=certs.server_key)
    collector.start()
    try:
        silent = socket.create_connection(("127.0.0.1", collector.port))
        half = socket.create_connection(("127.0.0.1", collector.port))
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
        t0 = time.monotonic()
        good = standalone("tls.notblocked", mplog.SocketHandler(
            "127.0.0.1", collector.port, wire="mplog", tls_ca_file=certs.ca))
        for i in range(100):
            good.log.info("served %d", i)
        good.h.flush(20)
        assert good.h.stats()["sent"] == 100
        assert time.monotonic() - t0 < HANDSHAKE_TIMEOUT  # served while the two stall
        assert collector.stats["tls_failures"] == 0
        wait_until(lambda: collector.stats["tls_failures"] == 2, HANDSHAKE_TIMEOUT + 5,
                   "both stalled handshakes closed")
        assert time.monotonic() - t0 >= HANDSHAKE_TIMEOUT - 0.5
        for s in (silent, half):
            s.settimeout(5)
            assert s.recv(100) == b""  # closed by the collector
            s.close()
        assert collector.stats["records"] == 100
    finally:
        collector.stop()


def test_serve_tls_with_hmac_key(tmp_path: pathlib.Path, certs: Certs, start_pipeline: Any) -> None:
    """TLS and the mplog wire's HMAC together: signed frames inside the TLS session."""
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    srv = Serve(tmp_path / "out.jsonl", 0, "--tls-cert", certs.server, "--tls-key",
                certs.server_key, "--hmac-key-file", str(key))
    try:
        p = start_pipeline([_fast(mplog.SocketHandler(
            "127.0.0.1", srv.port, wire="mplog", hmac_key_file=str(key), tls_ca_file=certs.ca))])
        for i in range(500):
            logging.getLogger("tls.hmac").info("signed %d", i)
        assert p.flush(30) and p.stats()["sent"] == 500
        wait_until(lambda: srv.count() >= 500, 20, "500 lines")
        assert _msgs(srv.lines(), "tls.hmac") == [f"signed {i}" for i in range(500)]
    finally:
        srv.stop()
