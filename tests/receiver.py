"""A stdlib-wire (SocketHandler) test receiver, run as its own process.

    python -m tests.receiver --port PORT --out FILE

Prints ``listening on 127.0.0.1:PORT`` once ready. Appends one JSON line per event to
FILE: ``{"event": "connect"}`` per accepted connection, ``{"event": "record", ...}`` per
record (the unpickled dict; values JSON cannot hold are repr'd). Each line is flushed
at once so a test can read the file while the receiver runs, and a SIGKILL loses nothing
that was already read from the socket. The unpickler refuses every global.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import selectors
import socket
import struct
import sys


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"global {module}.{name} refused")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", a.port))
    srv.listen(64)
    srv.setblocking(False)
    out = open(a.out, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, None)
    bufs: dict[socket.socket, bytearray] = {}
    print(f"listening on 127.0.0.1:{srv.getsockname()[1]}", flush=True)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                c, _ = srv.accept()
                c.setblocking(False)
                bufs[c] = bytearray()
                sel.register(c, selectors.EVENT_READ, "c")
                out.write('{"event": "connect"}\n')
                continue
            c = key.fileobj
            assert isinstance(c, socket.socket)
            try:
                data = c.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                sel.unregister(c)
                c.close()
                del bufs[c]
                continue
            buf = bufs[c]
            buf += data
            lines = []
            while len(buf) >= 4:
                (n,) = struct.unpack(">L", buf[:4])
                if len(buf) < 4 + n:
                    break
                d = _NoGlobals(io.BytesIO(bytes(buf[4 : 4 + n]))).load()
                del buf[: 4 + n]
                d["event"] = "record"
                lines.append(json.dumps(d, default=repr))
            if lines:
                out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
