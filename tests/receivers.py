"""Real log receivers as test fixtures: rsyslog (imtcp, imrelp, each also over TLS),
syslog-ng (``syslog()`` source) and a plain JSON-lines TCP reader, each in its own process.

The configurations and the harness follow ``shared/recipes/real-receivers.md``:

- each instance has its own temp dir (absolute paths: rsyslogd does ``chdir("/")``) and
  listens on port 0; the port it got is read back (rsyslog imtcp: ``listenPortFileName``;
  the others: the instance's LISTEN sockets in ``/proc``), so xdist workers never race
  for a port; a restart reuses that port;
- daemons start in their own session with ``PR_SET_PDEATHSIG`` (a crashed test run
  leaks none), and are ready once they listen on the port (polled, with the process
  checked for a config error on every poll);
- every output line is one JSON object, so a line count is a message count. SIGTERM does
  not drain what a daemon has not read yet: wait for the expected count
  (:meth:`Daemon.wait_count`) before :meth:`Daemon.stop`.

``python -m tests.receivers lines --port P --out FILE`` is the JSON-lines reader (what
Logstash ``json_lines``, Vector's ``socket`` source or Fluent Bit's ``tcp`` input read):
it prints ``listening on 127.0.0.1:PORT``, then appends every byte it receives, from any
number of connections, to FILE, each connection's data cut at line ends so lines from
two connections never interleave.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

from tests.helpers import ROOT, die_with_parent, wait_until

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
SNG_ROOT = pathlib.Path(os.environ.get("MPLOG_SYSLOG_NG_ROOT", "/opt/syslog-ng-root"))
_INSTALL_HINT = "run scripts/ci-deps-syslog.sh (rsyslog from apt, syslog-ng unpacked)"


def listening_ports(pid: int) -> set[int]:
    """TCP ports *pid* listens on (from /proc; no ss or netstat needed)."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # the process is gone
        return set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


class Daemon:
    """One receiver process writing JSON lines to ``self.out``; subclasses say how."""

    name = "daemon"

    def __init__(self, tmp: pathlib.Path, port: int = 0) -> None:
        self.dir = tmp / f"{self.name}-{time.monotonic_ns()}"
        (self.dir / "work").mkdir(parents=True)
        self.port = port
        self.out = self.dir / "out.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what subclasses provide ----------------------------------------------------------

    def argv(self) -> list[str]:
        raise NotImplementedError

    def config(self) -> tuple[str, str] | None:
        """(file name, text) of the configuration to write before each start, if any."""
        return None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # both daemons are built with sd_notify
        return env

    def found_port(self, proc: subprocess.Popen[bytes]) -> int | None:
        ports = listening_ports(proc.pid)
        return min(ports) if ports else None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start (again, on the same port once one was found) and wait until it listens."""
        assert self.proc is None, "already running"
        conf = self.config()
        if conf is not None:
            (self.dir / conf[0]).write_text(conf[1])
        for stale in ("pid", "port"):
            (self.dir / stale).unlink(missing_ok=True)
        with open(self.dir / "stderr.log", "ab") as log:
            proc = subprocess.Popen(
                self.argv(), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=self.env(), start_new_session=True, preexec_fn=die_with_parent,
            )
        self.proc = proc
        self.starts += 1

        def ready() -> bool:
            if proc.poll() is not None:
                self.proc = None
                raise AssertionError(f"{self.name} exited {proc.returncode}:\n{self.diagnostics()}")
            if self.port == 0:
                self.port = self.found_port(proc) or 0
                if self.port == 0:
                    return False
            return self.port in listening_ports(proc.pid)

        wait_until(ready, 30, f"{self.name} to listen")

    def kill(self) -> None:
        """SIGKILL: what the daemon holds and has not written is lost."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 20 s). Idempotent."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    # -- output ---------------------------------------------------------------------------

    def count(self) -> int:
        """Complete lines in the output so far (cheap: no parsing)."""
        try:
            return self.out.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def wait_count(self, n: int, timeout: float = 60.0) -> None:
        """Wait until the output holds at least *n* lines."""
        try:
            wait_until(lambda: self.count() >= n, timeout, f"{n} lines from {self.name}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (have {self.count()})\n{self.diagnostics()}") from None

    def lines(self) -> list[dict[str, Any]]:
        """Every complete output line, parsed.

        A daemon SIGKILLed in the middle of writing a line leaves that line torn, and the
        first line written after its restart is glued to the fragment: the fragment is
        skipped (its record counts as lost) and the line after it kept.
        """
        try:
            data = self.out.read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for line in data.split(b"\n")[:-1]:
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append(_after_torn_fragment(line))
        return out

    def diagnostics(self) -> str:
        out = []
        for name in ("stderr.log", "internal.log"):
            path = self.dir / name
            if path.exists():
                text = path.read_text(errors="replace")
                out.append(f"--- {name} (last 3000 characters)\n{text[-3000:]}")
        return "\n".join(out)


def _after_torn_fragment(line: bytes) -> dict[str, Any]:
    start = line.find(b'{"', 1)
    while start > 0:
        try:
            return json.loads(line[start:])  # type: ignore[no-any-return]
        except ValueError:
            start = line.find(b'{"', start + 1)
    raise AssertionError(f"not a JSON line, nor a torn one followed by one: {line[:300]!r}")


# -- rsyslog ----------------------------------------------------------------------------

#: rsyslog: everything the tests compare, one JSON object per message. ``sdp`` is the
#: STRUCTURED-DATA as rsyslog's own parser (mmpstrucdata) read it: a JSON text.
_RSYSLOG_CONF = """
global(workDirectory="{d}/work" maxMessageSize="{max_message_size}"
       parser.escapeControlCharactersOnReceive="off" net.enableDNS="off"
       processInternalMessages="on"{global_tls})
main_queue(queue.type="FixedArray" queue.size="100000" queue.discardSeverity="8"
           queue.timeoutEnqueue="600000")
module(load="mmpstrucdata")
template(name="jsonl" type="list" option.jsonf="on") {{
  property(outname="raw"      name="rawmsg"          format="jsonf")
  property(outname="pri"      name="pri"             format="jsonf")
  property(outname="facility" name="syslogfacility"  format="jsonf")
  property(outname="severity" name="syslogseverity"  format="jsonf")
  property(outname="hostname" name="hostname"        format="jsonf")
  property(outname="app"      name="app-name"        format="jsonf")
  property(outname="procid"   name="procid"          format="jsonf")
  property(outname="msgid"    name="msgid"           format="jsonf")
  property(outname="sd"       name="structured-data" format="jsonf")
  property(outname="sdp"      name="$!rfc5424-sd"    format="jsonf")
  property(outname="ts"       name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="msg"      name="msg"             format="jsonf")
}}
ruleset(name="recv" {ruleset_opts}) {{
  action(type="mmpstrucdata" sd_name.lowercase="off")
  action(type="omfile" file="{d}/out.jsonl" template="jsonl")
{forward}
}}
{input}
# rsyslog's own messages (start, stop, errors, oversize warnings):
action(type="omfile" file="{d}/internal.log")
"""


#: The relay hop of docs/destinations.md ("Beyond one machine"): forward every message
#: as RFC 5424 with octet counting, through a disk-assisted queue that retries forever.
FORWARD = """\
  action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format"
         queue.type="LinkedList" queue.filename="fwd" queue.saveOnShutdown="on"
         action.resumeRetryCount="-1")"""


#: TLS for imtcp: rsyslog's OpenSSL stream driver (``rsyslog-openssl``), its files in
#: ``global()``; *auth* ``anon`` (any client) or ``x509/name`` (a client certificate
#: signed by the CA, naming a permitted peer: mutual TLS).
IMTCP_TLS_GLOBAL = (
    '\n       defaultNetstreamDriver="ossl" defaultNetstreamDriverCAFile="{ca}"'
    '\n       defaultNetstreamDriverCertFile="{cert}" defaultNetstreamDriverKeyFile="{key}"'
)
IMTCP_TLS_MODULE = ('streamDriver.name="ossl" streamDriver.mode="1" '
                    'streamDriver.authMode="{auth}"{peers}')
#: TLS for imrelp (librelp, here with OpenSSL); *auth* ``anon`` (no tls.authMode: any
#: client) or ``name`` (a client certificate signed by tls.caCert naming a permitted peer).
IMRELP_TLS_INPUT = ('tls="on" tls.caCert="{ca}" tls.myCert="{cert}" tls.myPrivKey="{key}"'
                    '{auth}')


class Rsyslog(Daemon):
    """rsyslogd with one input, ``"imtcp"`` (octet counting and LF framing, detected per
    frame) or ``"imrelp"``, writing JSON lines. *max_message_size*: rsyslog's
    ``maxMessageSize`` (its own default is 8k, i.e. 8096 octets). *forward_port*: also
    relay every message to another syslog receiver on that port (:data:`FORWARD`).
    *tls*: serve TLS with these certificates (``tests.certs.Certs``); *tls_auth*: how
    clients are checked (imtcp: ``anon`` or ``x509/name``; imrelp: ``anon`` or ``name``;
    the permitted peer name is ``localhost``)."""

    name = "rsyslog"

    def __init__(self, tmp: pathlib.Path, kind: str = "imtcp", port: int = 0,
                 max_message_size: str = "256k", forward_port: int | None = None,
                 tls: Any = None, tls_auth: str = "anon") -> None:
        if not os.path.exists(RSYSLOGD):
            raise AssertionError(f"rsyslogd is not installed: {_INSTALL_HINT}")
        assert kind in ("imtcp", "imrelp"), kind
        self.kind = kind
        self.max_message_size = max_message_size
        self.forward_port = forward_port
        self.tls = tls
        self.tls_auth = tls_auth
        super().__init__(tmp, port)

    def config(self) -> tuple[str, str]:
        d = self.dir
        tls, auth = self.tls, self.tls_auth
        files = {} if tls is None else {"ca": tls.ca, "cert": tls.server, "key": tls.server_key}
        global_tls = ""
        if self.kind == "imrelp":
            tls_opts = lib = ""
            if tls is not None:
                assert auth in ("anon", "name"), auth
                mode = ' tls.authMode="name" tls.permittedPeer=["localhost"]' if auth == "name" else ""
                tls_opts = " " + IMRELP_TLS_INPUT.format(auth=mode, **files)
                lib = ' tls.tlslib="openssl"'
            inp = (f'module(load="imrelp"{lib})\n'
                   f'input(type="imrelp" address="127.0.0.1" port="{self.port}" ruleset="recv"{tls_opts})')
        else:
            mod = ""
            if tls is not None:
                assert auth in ("anon", "x509/name"), auth
                peers = ' permittedPeer=["localhost"]' if auth == "x509/name" else ""
                mod = " " + IMTCP_TLS_MODULE.format(auth=auth, peers=peers)
                global_tls = IMTCP_TLS_GLOBAL.format(**files)
            inp = (f'module(load="imtcp" maxSessions="1000"{mod})\n'
                   f'input(type="imtcp" address="127.0.0.1" port="{self.port}" listenPortFileName="{d}/port" '
                   f'ruleset="recv" supportOctetCountedFraming="on" ratelimit.interval="0")')
        # For RELP, a Direct queue makes rsyslog write a message before it answers "200 OK"
        # (with its in-memory main queue, an ack means only "queued", and a SIGKILL loses
        # acknowledged messages: rsyslog's guarantee, not the sender's).
        opts = 'queue.type="Direct"' if self.kind == "imrelp" else ""
        forward = FORWARD.format(port=self.forward_port) if self.forward_port else ""
        text = _RSYSLOG_CONF.format(d=d, input=inp, ruleset_opts=opts, forward=forward,
                                    max_message_size=self.max_message_size, global_tls=global_tls)
        return "rsyslog.conf", text

    def argv(self) -> list[str]:
        return [RSYSLOGD, "-n", "-f", str(self.dir / "rsyslog.conf"), "-i", str(self.dir / "pid")]

    def found_port(self, proc: subprocess.Popen[bytes]) -> int | None:
        if self.kind == "imtcp":
            try:
                text = (self.dir / "port").read_text().strip()
            except FileNotFoundError:
                return None
            return int(text) if text else None
        return super().found_port(proc)


# -- syslog-ng --------------------------------------------------------------------------

#: syslog-ng 3.38: a syslog() source (RFC 5424 with octet counting), flow control on (so
#: nothing is dropped when the file destination lags), and every field as JSON; ``_SDATA``
#: is the STRUCTURED-DATA as syslog-ng's parser read it.
_SNG_CONF = """@version: 3.38
options {{
  chain-hostnames(no); keep-hostname(yes); use-dns(no); dns-cache(no);
  stats-freq(0); stats-level(1); mark-freq(0); log-msg-size({log_msg_size}); frac-digits(6);
  log-fifo-size(100000);
}};
source s_net {{ syslog(ip("127.0.0.1") port({port}) transport("{transport}") max-connections(1000)
                      log-iw-size(1000000) flags(store-raw-message){tls}); }};
source s_int {{ internal(); }};
destination d_out {{
  file("{d}/out.jsonl"
       template("$(format-json raw=$RAWMSG pri=$PRI facility=$FACILITY_NUM severity=$LEVEL_NUM hostname=$HOST app=$PROGRAM procid=$PID msgid=$MSGID sd=$SDATA ts=$ISODATE msg=$MSG --key .SDATA.*)\\n"));
}};
destination d_int {{ file("{d}/internal.log"); }};
log {{ source(s_net); destination(d_out); flags(flow-control); }};
log {{ source(s_int); destination(d_int); }};
"""


#: syslog-ng's TLS source options (OpenSSL); *verify*: ``optional-untrusted`` (any client,
#: with or without a certificate) or ``required-trusted`` (a certificate from *ca*).
_SNG_TLS = (' tls(key-file("{key}") cert-file("{cert}") ca-file("{ca}")'
            ' peer-verify({verify}))')


class SyslogNg(Daemon):
    """syslog-ng 3.38 with a ``syslog()`` TCP source (octet counting only), flow control
    on. *log_msg_size*: syslog-ng's ``log-msg-size`` (its own default is 65536; a longer
    frame makes it close the connection). *tls*: serve TLS with these certificates
    (``tests.certs.Certs``); *tls_verify*: its ``peer-verify()``."""

    name = "syslog-ng"

    def __init__(self, tmp: pathlib.Path, port: int = 0, log_msg_size: int = 262144,
                 tls: Any = None, tls_verify: str = "optional-untrusted") -> None:
        if not (SNG_ROOT / "usr/sbin/syslog-ng").exists():
            raise AssertionError(f"syslog-ng is not unpacked at {SNG_ROOT}: {_INSTALL_HINT}")
        self.log_msg_size = log_msg_size
        self.tls, self.tls_verify = tls, tls_verify
        super().__init__(tmp, port)

    def config(self) -> tuple[str, str]:
        tls = "" if self.tls is None else _SNG_TLS.format(
            key=self.tls.server_key, cert=self.tls.server, ca=self.tls.ca, verify=self.tls_verify)
        return "syslog-ng.conf", _SNG_CONF.format(
            d=self.dir, port=self.port, log_msg_size=self.log_msg_size,
            transport="tcp" if self.tls is None else "tls", tls=tls)

    def env(self) -> dict[str, str]:
        return dict(super().env(), LD_LIBRARY_PATH=str(SNG_ROOT / "usr/lib/syslog-ng"))

    def argv(self) -> list[str]:
        d = self.dir
        return [str(SNG_ROOT / "usr/sbin/syslog-ng"), "-F", "--no-caps", "-f", str(d / "syslog-ng.conf"),
                "--module-path", str(SNG_ROOT / "usr/lib/syslog-ng/3.38"), "--persist-file", str(d / "persist"),
                "--pidfile", str(d / "pid"), "--control", str(d / "ctl")]


# -- a JSON-lines TCP reader -------------------------------------------------------------


class LineReceiver(Daemon):
    """``python -m tests.receivers lines``: raw lines, as a JSON-lines input reads them."""

    name = "lines"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "tests.receivers", "lines", "--port", str(self.port), "--out", str(self.out)]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        return env

    def raw_lines(self) -> list[bytes]:
        """Every complete line received, as bytes, without its LF."""
        try:
            return self.out.read_bytes().split(b"\n")[:-1]
        except FileNotFoundError:
            return []


def _serve_lines(port: int, out_path: str) -> None:
    import selectors
    import socket

    sel = selectors.DefaultSelector()
    srv = socket.create_server(("127.0.0.1", port), reuse_port=False, backlog=64)
    srv.setblocking(False)
    sel.register(srv, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    print(f"listening on 127.0.0.1:{srv.getsockname()[1]}", flush=True)
    with open(out_path, "ab", buffering=0) as out:
        while True:
            for key, _ in sel.select():
                sock = key.fileobj
                if sock is srv:
                    conn, _ = srv.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    pending[conn] = b""
                    continue
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1 << 20)
                except ConnectionError:
                    data = b""
                if not data:  # EOF: a torn last line is dropped, as a line reader would
                    sel.unregister(sock)
                    sock.close()
                    del pending[sock]
                    continue
                buf = pending[sock] + data
                cut = buf.rfind(b"\n") + 1
                if cut:
                    out.write(buf[:cut])
                pending[sock] = buf[cut:]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.receivers")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lines = sub.add_parser("lines", help="a JSON-lines TCP reader")
    lines.add_argument("--port", type=int, default=0)
    lines.add_argument("--out", required=True)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _serve_lines(a.port, a.out)


if __name__ == "__main__":
    main()
