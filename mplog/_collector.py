"""IO: :class:`Collector`, the receiver behind ``mplog serve``.

Rules this module keeps:

- One selector loop. Each connection says which wire it speaks with its first bytes: the
  mplog preamble (``b"MPLG"``) or a stdlib ``SocketHandler`` length prefix (its first byte
  is 0 for any sane frame).
- mplog wire: a record is acknowledged only after its line was written to the output
  (``os.write``: it survives a crash of this process; with ``fsync=True`` also a crash of
  the machine), and written at most once per (sender, seq), also across restarts: the
  de-duplication state is rebuilt from the output file(s) at start.
- stdlib wire: decoded by an unpickler that refuses every global, so nothing a client
  sends can run code here.
- A malformed, oversized or wrongly signed frame closes that one connection, with a
  reason on stderr and a counter; everyone else is served on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import pickle
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

from ._config import load_key
from ._errors import ConfigError, ProtocolError
from ._framing import FrameSplitter
from ._text import one_line
from ._tls import HANDSHAKE_TIMEOUT, reason, server_context
from ._wires.mplog import DEFAULT_WINDOW, MAGIC, Close, Hello, Record, ServerConnection

__all__ = ["Collector"]

READ_SIZE = 256 * 1024
#: Largest stdlib-wire frame accepted (a pickled record is a few hundred bytes).
MAX_PICKLE_FRAME = 1024 * 1024
_DROP = ("args", "exc_info", "message")


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")


def safe_unpickle(data: bytes) -> Any:
    """Unpickle *data* with every global refused (no code can run)."""
    try:
        return _NoGlobals(io.BytesIO(data)).load()
    except Exception as exc:  # any malformed pickle: one ProtocolError
        raise ProtocolError(f"refused pickle frame: {type(exc).__name__}: {exc}") from None


def _text_line(rec: Mapping[str, Any]) -> str:
    created = rec.get("created")
    try:
        t = float(created)  # type: ignore[arg-type]
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f",{int(t % 1 * 1000):03d}"
    except (TypeError, ValueError, OverflowError):
        stamp = "-"
    line = (
        f"{stamp} {rec.get('levelname', '-')} {rec.get('name', '-')} "
        f"[{rec.get('processName', '-')}:{rec.get('process', '-')}] {rec.get('msg', '')}"
    )
    for key in ("exc_text", "stack_info"):
        if rec.get(key):
            line += "\n" + str(rec[key])
    return line


class _Output:
    """Append-only output: JSON lines (or text), size-based rotation, torn-line repair."""

    def __init__(
        self, path: str | None, stream: IO[bytes] | None, *, text: bool, max_bytes: int,
        backup_count: int, fsync: bool,
    ) -> None:
        self.path = path
        self.text = text
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.fsync = fsync
        self.last_seq: dict[str, int] = {}
        self.torn_repaired = 0
        self._stream = stream
        self._fd = -1
        if path is not None:
            self._repair_and_load()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size

    def _files(self) -> list[pathlib.Path]:
        assert self.path is not None
        base = pathlib.Path(self.path)
        olds = [base.with_name(f"{base.name}.{i}") for i in range(self.backup_count, 0, -1)]
        return [p for p in [*olds, base] if p.exists()]

    def _repair_and_load(self) -> None:
        assert self.path is not None
        p = pathlib.Path(self.path)
        if p.exists():
            with open(p, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)  # a line cut by a crash
                    self.torn_repaired = 1
        for path in self._files():
            with open(path, "rb") as f:
                for line in f:
                    if b'"mplog_seq"' not in line:
                        continue
                    try:
                        rec = json.loads(line)
                        sender, seq = rec["mplog_sender"], int(rec["mplog_seq"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a line we did not write: not ours to de-duplicate
                    if seq > self.last_seq.get(sender, 0):
                        self.last_seq[sender] = seq

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        if self.text:
            lines = [(_text_line(r) + "\n").encode("utf-8", "replace") for r in records]
        else:
            lines = [(json.dumps(r, default=repr) + "\n").encode() for r in records]
        if self._fd < 0:
            assert self._stream is not None
            self._stream.write(b"".join(lines))
            self._stream.flush()
            return
        if not self.max_bytes:
            self._write_fd(b"".join(lines))
            return
        # Rotate at line boundaries so that no file grows past max_bytes (a single line
        # longer than that gets a file of its own).
        chunk: list[bytes] = []
        size = self._size
        for line in lines:
            if size and size + len(line) > self.max_bytes:
                self._write_fd(b"".join(chunk))
                chunk = []
                self._rotate()
                size = 0
            chunk.append(line)
            size += len(line)
        self._write_fd(b"".join(chunk))
        if self._size >= self.max_bytes:
            self._rotate()

    def _write_fd(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self.fsync and data:
            os.fsync(self._fd)
        self._size += len(data)

    def _rotate(self) -> None:
        assert self.path is not None
        os.close(self._fd)
        base = pathlib.Path(self.path)
        if self.backup_count > 0:
            for i in range(self.backup_count - 1, 0, -1):
                src = base.with_name(f"{base.name}.{i}")
                if src.exists():
                    src.replace(base.with_name(f"{base.name}.{i + 1}"))
            base.replace(base.with_name(f"{base.name}.1"))
        else:
            base.unlink()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        elif self._stream is not None:
            self._stream.flush()


class _Conn:
    __slots__ = ("head", "mplog", "pickle", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.head = b""
        self.mplog: ServerConnection | None = None
        self.pickle: FrameSplitter | None = None


class Collector:
    """Receive records over the mplog and stdlib wires and write them to *output*.

    Args:
        host, port: TCP address to listen on (``port=0``: any free port); or
        unix: a Unix socket path instead.
        output: a file path (appended to), ``"-"`` for stdout, or a binary stream.
        hmac_key / hmac_key_file: require HMAC-signed mplog frames with this key.
        text: write human-readable lines instead of JSON.
        max_bytes, backup_count: rotate the output file at *max_bytes* (0: never).
        fsync: fsync the output before each acknowledgement.
        tls_cert, tls_key: serve TLS with this certificate (and key, unless it is in the
            certificate file); tls_client_ca: also require client certificates signed by
            this CA (mutual TLS). A failed handshake closes that connection, with one line
            on stderr, and counts in ``stats["tls_failures"]``.

    The socket is bound by the constructor (``address`` is known at once); serve with
    :meth:`serve_forever` (blocking) or :meth:`start` (a thread); :meth:`stop` ends it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = 0,
        *,
        unix: str | None = None,
        output: str | IO[bytes] = "-",
        hmac_key: bytes | str | None = None,
        hmac_key_file: str | None = None,
        text: bool = False,
        max_bytes: int = 0,
        backup_count: int = 5,
        fsync: bool = False,
        window: int = DEFAULT_WINDOW,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
    ) -> None:
        self.key = load_key(hmac_key, hmac_key_file)
        self._tls = server_context(tls_cert, tls_key, tls_client_ca)
        if self._tls is not None and unix is not None:
            raise ConfigError("TLS needs a TCP port; --unix sockets are served in the clear")
        #: Connections whose TLS handshake is under way: when each must be done, and
        #: the client's address (for the error line; the peer may be gone by then).
        self._handshakes: dict[socket.socket, tuple[float, str]] = {}
        if max_bytes < 0 or backup_count < 0:
            raise ConfigError("max_bytes and backup_count must be >= 0")
        self.window = window
        if isinstance(output, str):
            path = None if output == "-" else output
            stream = sys.stdout.buffer if output == "-" else None
        else:
            path, stream = None, output
        try:
            self._out = _Output(path, stream, text=text, max_bytes=max_bytes,
                                backup_count=backup_count, fsync=fsync)
        except OSError as exc:
            raise ConfigError(f"cannot open output {output!r}: {exc}") from exc
        try:
            if unix is not None:
                if os.path.exists(unix):
                    os.unlink(unix)
                self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._lsock.bind(unix)
                self.address = unix
            else:
                self._lsock = socket.create_server((host, port or 0), reuse_port=False)
                self.address = f"{host}:{self._lsock.getsockname()[1]}"
            self._lsock.listen(128)
        except OSError as exc:
            self._out.close()
            raise ConfigError(f"cannot listen on {unix or f'{host}:{port}'}: {exc}") from exc
        self.unix = unix
        self._lsock.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._lsock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._conns: dict[socket.socket, _Conn] = {}
        self.stats: dict[str, int] = {
            "connections": 0, "records": 0, "duplicates": 0, "bad_frames": 0, "torn_frames": 0,
            "torn_repaired": self._out.torn_repaired, "tls_failures": 0,
        }

    @property
    def port(self) -> int:
        if self.unix is not None:
            raise AttributeError("a Unix-socket collector has no port")
        return int(self._lsock.getsockname()[1])

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.serve_forever, name="mplog-collector",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Stop accepting, flush the output, close; safe from any thread or signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):  # already woken, or closed: the loop is ending
            self._wake_w.send(b"x", socket.MSG_DONTWAIT)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)

    def serve_forever(self) -> None:
        try:
            while not self._stopping:
                for key, _ in self._sel.select(1.0):
                    if key.data is None:
                        self._accept()
                    elif key.data == "wake":
                        continue
                    else:
                        self._read(key.data)
                if self._handshakes:
                    self._expire_handshakes()
        finally:
            self._close()

    def _close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._sel.close()
        self._lsock.close()
        if self.unix is not None:
            pathlib.Path(self.unix).unlink(missing_ok=True)
        self._out.close()
        self._wake_r.close()
        self._wake_w.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                sys.stderr.write(f"mplog serve: accept failed: {exc}\n")
                return
            sock.setblocking(False)
            if self._tls is not None:
                # No handshake here: it needs the client's bytes, and the loop must not
                # wait for one client. _read() drives it as data arrives.
                sock = self._tls.wrap_socket(sock, server_side=True,
                                             do_handshake_on_connect=False)
                where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "a client"
                self._handshakes[sock] = (time.monotonic() + HANDSHAKE_TIMEOUT, where)
            conn = _Conn(sock)
            self._conns[sock] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.stats["connections"] += 1

    def _handshake(self, conn: _Conn) -> bool:
        """Drive *conn*'s TLS handshake one step; True once it is complete."""
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._sel.modify(sock, selectors.EVENT_READ, conn)
            return False
        except ssl.SSLWantWriteError:
            self._sel.modify(sock, selectors.EVENT_WRITE, conn)
            return False
        except OSError as exc:
            self._tls_failed(conn, reason(exc, "server"))
            return False
        del self._handshakes[sock]
        self._sel.modify(sock, selectors.EVENT_READ, conn)
        return True

    def _tls_failed(self, conn: _Conn, why: str) -> None:
        _, peer = self._handshakes.pop(conn.sock, (0.0, "a client"))
        self.stats["tls_failures"] += 1
        sys.stderr.write(f"mplog serve: TLS handshake with {peer} failed: {one_line(why, 300)}\n")
        self._drop(conn)

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        for sock, (deadline, _) in list(self._handshakes.items()):
            conn = self._conns.get(sock)
            if conn is None:
                self._handshakes.pop(sock, None)
            elif now >= deadline:
                self._tls_failed(conn, f"timed out after {HANDSHAKE_TIMEOUT:g} s")

    def _recv(self, conn: _Conn) -> bytes | None:
        """What *conn* has for us now (b"": EOF or a broken connection; None: nothing
        yet). Over TLS: the handshake first, then up to READ_SIZE of decrypted data,
        drained from the TLS layer too (select() does not see bytes it holds)."""
        sock = conn.sock
        if not isinstance(sock, ssl.SSLSocket):
            try:
                return sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError:
                return b""
        if sock in self._handshakes and not self._handshake(conn):
            return None
        chunks: list[bytes] = []
        size = 0
        while size < READ_SIZE:
            try:
                chunk = sock.recv(READ_SIZE - size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, InterruptedError):
                break
            except OSError:
                chunk = b""
            if not chunk:
                if not chunks:
                    return b""
                break  # the EOF shows again on the next read
            chunks.append(chunk)
            size += len(chunk)
        # A record cut by the size limit leaves its rest inside OpenSSL, where select()
        # cannot see it: take it now.
        while chunks and sock.pending():
            chunks.append(sock.recv(sock.pending()))
        return b"".join(chunks) if chunks else None

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is not None:
            self._sel.unregister(conn.sock)
        conn.sock.close()

    def _bad(self, conn: _Conn, exc: Exception) -> None:
        self.stats["bad_frames"] += 1
        sys.stderr.write(f"mplog serve: closing a connection: {exc}\n")
        if conn.mplog is not None:
            self._send(conn, conn.mplog.error(str(exc)))
        self._drop(conn)

    def _send(self, conn: _Conn, data: bytes) -> bool:
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(5.0)
            conn.sock.sendall(data)
            conn.sock.setblocking(False)
        except OSError:
            self._drop(conn)
            return False
        return True

    def _read(self, conn: _Conn) -> None:
        data = self._recv(conn)
        if data is None:
            return
        if conn.mplog is None and conn.pickle is None:
            if not data:
                self._drop(conn)
                return
            conn.head += data
            if len(conn.head) < 4:
                return
            data, conn.head = conn.head, b""
            if data.startswith(MAGIC[:4]):
                conn.mplog = ServerConnection(self.key, self.window)
            elif self.key is not None:
                # The stdlib wire cannot be signed: with a key, only signed senders get in.
                self._bad(conn, ProtocolError(
                    "a stdlib-wire (pickle) connection, refused: this collector requires "
                    "HMAC-signed mplog frames"
                ))
                return
            else:
                conn.pickle = FrameSplitter(MAX_PICKLE_FRAME)
        try:
            if conn.mplog is not None:
                self._mplog(conn, conn.mplog, data)
            else:
                self._pickle(conn, data)
        except ProtocolError as exc:
            self._bad(conn, exc)

    def _pickle(self, conn: _Conn, data: bytes) -> None:
        assert conn.pickle is not None
        if not data:
            try:
                conn.pickle.feed(b"")
            except ProtocolError:
                self.stats["torn_frames"] += 1  # the client died mid-frame
            self._drop(conn)
            return
        records = []
        error: ProtocolError | None = None
        bodies = conn.pickle.feed(data)
        for body in bodies:
            try:
                d = safe_unpickle(body)
                if not isinstance(d, dict):
                    raise ProtocolError("stdlib-wire frame is not a record dict")
            except ProtocolError as exc:
                error = exc
                break
            records.append(self._row(d))
        self._out.write(records)
        self.stats["records"] += len(records)
        if error is not None:
            raise error

    def _mplog(self, conn: _Conn, session: ServerConnection, data: bytes) -> None:
        records = []
        last = self._out.last_seq
        top = 0
        close = False
        error: ProtocolError | None = None
        try:
            events = session.receive(data)
        except ProtocolError as exc:
            events, error = [], exc
        for ev in events:
            if isinstance(ev, Record):
                sender = session.sender
                assert sender is not None
                top = ev.seq
                if ev.seq <= last.get(sender, 0):
                    self.stats["duplicates"] += 1
                    continue
                last[sender] = ev.seq
                row = self._row(ev.record)
                row["mplog_sender"] = sender
                row["mplog_seq"] = ev.seq
                records.append(row)
            elif isinstance(ev, Hello):
                if not self._send(conn, session.welcome(last.get(ev.sender, 0), ev.window)):
                    return
            elif isinstance(ev, Close):
                close = True
        self._out.write(records)  # durably written before it is acknowledged
        self.stats["records"] += len(records)
        if top and not self._send(conn, session.ack(top)):
            return
        if error is not None:
            raise error
        if close:
            self._drop(conn)

    @staticmethod
    def _row(d: Mapping[str, Any]) -> dict[str, Any]:
        row = {str(k): v for k, v in d.items() if k not in _DROP}
        if "msg" in row and not isinstance(row["msg"], str):
            row["msg"] = str(row["msg"])
        return row
