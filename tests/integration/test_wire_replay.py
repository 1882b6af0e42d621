"""Replay and splicing against a real ``mplog serve --hmac-key-file`` (issue 11.3).

Real senders (``mplog.SocketHandler(wire="mplog", hmac_key=...)`` in pipelines started by
``mplog.start``) talk to a real collector through a small TCP relay in this test that
records every byte. Those captured bytes are then replayed, or spliced (one sender's
records after another's hello), into new connections, and into the collector restarted on
a new output file: nothing may be written, and every honest record still arrives exactly
once. Without a key, a forged record number may cost at most the epoch it names.
"""

from __future__ import annotations

import json
import logging
import pathlib
import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import mplog
from mplog._wires.mplog import ClientSession, record_payload
from tests.helpers import Serve, wait_until
from tests.unit import mplog_wire_v1 as v1

KEY = b"replay-test-key-0123456789abcdef"
_LEN = struct.Struct(">L")


class Relay:
    """TCP relay 127.0.0.1:port -> upstream port, one thread, recording each connection's
    client->server (``up``) and server->client (``down``) bytes."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self._lsock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._lsock, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stop = False
        self.lock = threading.Lock()
        self.sessions: list[dict[str, bytearray]] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="test-relay")
        self._thread.start()

    def _run(self) -> None:
        peers: dict[socket.socket, tuple[socket.socket, bytearray]] = {}
        try:
            while not self._stop:
                for key, _ in self._sel.select():
                    if key.data == "wake":
                        continue
                    if key.data == "accept":
                        client, _ = self._lsock.accept()
                        try:
                            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
                        except OSError as exc:  # collector down: the sender retries later
                            self.errors.append(f"upstream: {exc}")
                            client.close()
                            continue
                        client.settimeout(10)
                        rec = {"up": bytearray(), "down": bytearray()}
                        with self.lock:
                            self.sessions.append(rec)
                        peers[client] = (server, rec["up"])
                        peers[server] = (client, rec["down"])
                        self._sel.register(client, selectors.EVENT_READ, "data")
                        self._sel.register(server, selectors.EVENT_READ, "data")
                        continue
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock not in peers:
                        continue
                    other, log = peers[sock]
                    try:
                        data = sock.recv(65536)
                        if data:
                            with self.lock:
                                log += data
                            other.sendall(data)
                    except OSError as exc:
                        self.errors.append(f"relay: {exc}")
                        data = b""
                    if not data:
                        for s in (sock, other):
                            if s in peers:
                                self._sel.unregister(s)
                                del peers[s]
                            s.close()
        finally:
            for s in peers:
                s.close()

    def session_of(self, sender: str) -> bytes:
        """The client->server bytes of the first connection whose hello names *sender*."""
        with self.lock:
            for rec in self.sessions:
                up = bytes(rec["up"])
                if len(up) > 12 and _hello(up)["sender"] == sender:
                    return up
        raise AssertionError(f"no captured session of {sender}")

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(10)
        assert not self._thread.is_alive()
        self._sel.close()
        self._lsock.close()
        self._wake_r.close()
        self._wake_w.close()


def _hello(session: bytes) -> dict[str, Any]:
    (n,) = _LEN.unpack_from(session, 8)
    return json.loads(session[13 : 12 + n])  # type: ignore[no-any-return]


def _split_head(session: bytes) -> tuple[bytes, bytes]:
    """(preamble + hello frame, everything after it)."""
    (n,) = _LEN.unpack_from(session, 8)
    return session[: 12 + n], session[12 + n :]


def _refused_moved(reply: bytes) -> bool:
    return b"wrong HMAC" in reply or b"seal that covers no record" in reply


def _kinds(frames: bytes) -> list[str]:
    """The type of every whole frame in *frames*, in order."""
    kinds, at = [], 0
    while at + 4 < len(frames):
        (n,) = _LEN.unpack_from(frames, at)
        kinds.append(chr(frames[at + 4]))
        at += 4 + n
    return kinds


def _inject(port: int, head: bytes, rest: bytes) -> bytes:
    """Send *head* (preamble + a hello) on a fresh connection, wait for the collector's
    welcome as a real client would, then send *rest*; return all the collector answered
    until it closed the connection (it must close it: that is how it refuses)."""
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head)
        while len(got) < 4 or len(got) < 4 + _LEN.unpack_from(got)[0]:
            chunk = s.recv(65536)
            assert chunk, f"closed before the welcome: {bytes(got)!r}"
            got += chunk
        assert got[4:5] == b"W", bytes(got)
        try:
            s.sendall(rest)
        except (BrokenPipeError, ConnectionResetError) as exc:  # closed while we sent: refused
            got += f"[{type(exc).__name__}]".encode()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return bytes(got)


@pytest.fixture
def keyfile(tmp_path: pathlib.Path) -> pathlib.Path:
    p = tmp_path / "key"
    p.write_bytes(KEY)
    return p


@pytest.fixture
def relay_factory() -> Iterator[Any]:
    made: list[Relay] = []

    def make(port: int) -> Relay:
        r = Relay(port)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _counts(srv: Serve) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in srv.lines():
        if r.get("name", "").startswith("replay."):
            out.setdefault(f"{r['who']}@{r['mplog_sender']}", []).append(r["i"])
    return out


class _Sender:
    """One pipeline whose only handler is an mplog-wire SocketHandler, and a logger of this
    process writing into it (install=False: two of them can run side by side)."""

    def __init__(self, start_pipeline: Any, port: int, who: str) -> None:
        h = mplog.SocketHandler("127.0.0.1", port, wire="mplog", hmac_key=KEY, sender_id=f"sender-{who}")
        h.retryStart, h.retryMax = 0.05, 0.3
        self.who = who
        self.pipeline = start_pipeline([h], install=False)
        self.log = logging.getLogger(f"replay.{who}")
        self.log.propagate = False
        self.handler = mplog.QueueHandler(self.pipeline.address)
        self.log.addHandler(self.handler)
        self.log.setLevel(logging.INFO)
        self.n = 0

    def send(self, n: int) -> None:
        for _ in range(n):
            self.log.info("%s %d", self.who, self.n, extra={"who": self.who, "i": self.n})
            self.n += 1

    def close(self) -> None:
        self.log.removeHandler(self.handler)
        self.handler.close()


def test_replay_and_splice_write_nothing_and_cost_no_honest_record(
    tmp_path: pathlib.Path, keyfile: pathlib.Path, start_pipeline: Any, relay_factory: Any,
) -> None:
    srv = Serve(tmp_path / "out1.jsonl", 0, "--hmac-key-file", str(keyfile))
    senders: list[_Sender] = []
    try:
        relay = relay_factory(srv.port)
        a = _Sender(start_pipeline, relay.port, "a")
        b = _Sender(start_pipeline, relay.port, "b")
        senders += [a, b]
        a.send(200)
        b.send(50)
        want = {"a@sender-a": list(range(200)), "b@sender-b": list(range(50))}
        wait_until(lambda: _counts(srv) == want, 60, "the first honest records")
        session_a = relay.session_of("sender-a")
        session_b = relay.session_of("sender-b")
        head_a, records_a = _split_head(session_a)
        head_b, _ = _split_head(session_b)
        assert records_a.count(b"replay.a") == 200  # the capture holds A's 200 signed records
        kinds = _kinds(records_a)
        # A sealed session: 200 records under fewer seals (one MAC per batch).
        assert kinds.count("R") == 200 and 1 <= kinds.count("S") < 200, kinds

        def refuse_all() -> None:
            lines = srv.count()
            # the whole of A's session again, on a new connection: a new server nonce
            assert b"wrong HMAC" in _inject(srv.port, head_a, records_a)
            # A's signed records after B's hello (the splice of issue 11.3)
            assert b"wrong HMAC" in _inject(srv.port, head_b, records_a)
            # A's own hello, then A's records moved one frame on (position). When the
            # first batch was one record, what is left starts with its seal, refused as
            # covering nothing; else the seal's MAC is wrong.
            (n0,) = _LEN.unpack_from(records_a)
            assert _refused_moved(_inject(srv.port, head_a, records_a[4 + n0 :]))
            assert srv.count() == lines  # the collector closed each: it has read them

        refuse_all()
        # Honest senders lose nothing: their next records all arrive, each once.
        a.send(100)
        b.send(100)
        want = {"a@sender-a": list(range(300)), "b@sender-b": list(range(150))}
        wait_until(lambda: _counts(srv) == want, 60, "the honest records after the attacks")

        # The collector restarted on a new output file: no memory of the session at all.
        # (Every honest record acknowledged first: one resent now would land in the new
        # file, which remembers nothing.)
        for s in senders:
            assert s.pipeline.flush(15)
        srv.kill()
        srv.out = tmp_path / "out2.jsonl"
        srv.start()
        refuse_all()
        assert not srv.out.exists() or _counts(srv) == {}
        a.send(100)
        b.send(50)
        want = {"a@sender-a": list(range(300, 400)), "b@sender-b": list(range(150, 200))}
        wait_until(lambda: _counts(srv) == want, 60, "the honest records after the restart")
        for s in senders:
            assert s.pipeline.flush(15)
            st = s.pipeline.stats()
            assert st["dropped"] == 0 and st["buffered"] == 0, st
        assert srv.terminate() == 0
        err = srv.stderr()
        assert err.count("wrong HMAC") + err.count("covers no record") >= 6, err
        assert _counts(srv) == want  # exactly: nothing replayed, nothing spliced
        first = [json.loads(x) for x in (tmp_path / "out1.jsonl").read_text().splitlines()]
        assert len(first) == 450 and len({(r["mplog_sender"], r["mplog_seq"]) for r in first}) == 450
    finally:
        for s in senders:
            s.close()
        srv.stop()


def _raw(port: int, sender: str, seqs: list[int], tag: str) -> tuple[int, bytes]:
    """An unsigned raw client: send *seqs* as *sender*; (records acknowledged, error text)."""
    session = ClientSession(sender, None, 4096)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(session.handshake())
        while not session.ready:
            session.receive(s.recv(65536))
        s.sendall(b"".join(session.frame(record_payload(q, {"name": "raw", "tag": tag, "q": q})) for q in seqs))
        acked = 0
        try:
            while acked < len(seqs):
                acked += session.receive(s.recv(65536))
        except mplog.ProtocolError as exc:
            return acked, str(exc).encode()
    return acked, b""


def _tags(srv: Serve, sender: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in srv.lines():
        if r.get("mplog_sender") == sender:
            out.setdefault(r["tag"], []).append(r["q"])
    return out


def test_without_a_key_a_forged_seq_costs_at_most_its_epoch(tmp_path: pathlib.Path) -> None:
    """The unauthenticated collector trusts its senders, but a forged record number is
    bounded: 2**63 and above is refused, and one number silences only the epoch it names
    (records of that epoch: acknowledged as duplicates, counted); later epochs are
    written, also after the collector restarts and rebuilds its marks from the file."""
    srv = Serve(tmp_path / "out.jsonl")
    e1, e2, e3 = 1 << 40, 2 << 40, 3 << 40
    try:
        assert _raw(srv.port, "victim", [e1 + q for q in range(1, 51)], "honest") == (50, b"")
        # the forgery of issue 11.3: the victim's id and seq 2**64-1: refused, not written
        acked, err = _raw(srv.port, "victim", [2**64 - 1], "forged")
        assert acked == 0 and b"outside 1 .. 2**63-1" in err
        # the largest legal number: accepted (no key: trusted), and it costs epoch 2**23-1 only
        assert _raw(srv.port, "victim", [2**63 - 1], "forged")[0] == 1
        assert _raw(srv.port, "victim", [e1 + q for q in range(51, 101)], "honest") == (50, b"")
        # a forger who knows the victim's epoch silences that epoch (the documented bound) ...
        assert _raw(srv.port, "victim", [e2 + (1 << 40) - 1], "forged")[0] == 1
        assert _raw(srv.port, "victim", [e2 + q for q in range(1, 11)], "honest")[0] == 10
        # ... and no further: the next epoch (the next open of the victim's spool) is written
        srv.kill()
        srv.start()
        assert _raw(srv.port, "victim", [e3 + q for q in range(1, 31)], "honest") == (30, b"")
        # replays of what is in the file stay duplicates after the restart
        assert _raw(srv.port, "victim", [e1 + q for q in range(1, 101)], "honest")[0] == 100
        tags = _tags(srv, "victim")
        assert tags["honest"] == [e1 + q for q in range(1, 101)] + [e3 + q for q in range(1, 31)]
        assert tags["forged"] == [2**63 - 1, e2 + (1 << 40) - 1]
        assert srv.terminate() == 0
        assert "outside 1 .. 2**63-1" in srv.stderr()
    finally:
        srv.stop()


@pytest.mark.parametrize("signed", [False, True])
def test_a_v1_sender_is_told_to_upgrade(tmp_path: pathlib.Path, keyfile: pathlib.Path, signed: bool) -> None:
    extra = ("--hmac-key-file", str(keyfile)) if signed else ()
    srv = Serve(tmp_path / "out.jsonl", 0, *extra)
    try:
        old = v1.ClientSession("old-sender", KEY if signed else None, 8)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
            s.sendall(old.handshake())
            with pytest.raises(mplog.ProtocolError, match="speaks mplog wire version 2; upgrade the sender"):
                while True:
                    old.receive(s.recv(65536))
        assert srv.terminate() == 0
        assert "upgrade the sender" in srv.stderr()
    finally:
        srv.stop()
