"""Real syslog daemons as test fixtures (recipes: shared/recipes/real-receivers.md)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import time
from typing import Any

from tests.helpers import die_with_parent, wait_until

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

_TEMPLATE = """
global(workDirectory="{d}/work" maxMessageSize="256k"
       parser.escapeControlCharactersOnReceive="off" net.enableDNS="off"
       processInternalMessages="on")
main_queue(queue.type="FixedArray" queue.size="100000" queue.discardSeverity="8"
           queue.timeoutEnqueue="600000")
template(name="jsonl" type="list" option.jsonf="on") {{
  property(outname="raw"      name="rawmsg"          format="jsonf")
  property(outname="pri"      name="pri"             format="jsonf")
  property(outname="hostname" name="hostname"        format="jsonf")
  property(outname="app"      name="app-name"        format="jsonf")
  property(outname="procid"   name="procid"          format="jsonf")
  property(outname="msgid"    name="msgid"           format="jsonf")
  property(outname="sd"       name="structured-data" format="jsonf")
  property(outname="ts"       name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="msg"      name="msg"             format="jsonf")
}}
ruleset(name="recv" {ruleset_opts}) {{
  action(type="omfile" file="{d}/out.jsonl" template="jsonl")
}}
{input}
action(type="omfile" file="{d}/internal.log")
"""


def listening_ports(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    ports = set()
    for tbl in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(tbl) as f:
            for ln in f.read().splitlines()[1:]:
                parts = ln.split()
                if parts[3] == "0A" and parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


class Rsyslog:
    """rsyslogd with one input (``"imtcp"`` or ``"imrelp"``), writing JSON lines."""

    def __init__(self, tmp: pathlib.Path, kind: str = "imtcp", port: int = 0) -> None:
        if kind != "syslog-ng" and not os.path.exists(RSYSLOGD):
            raise AssertionError("rsyslogd not installed: run scripts/ci-deps.sh (apt-get install rsyslog rsyslog-relp)")
        self.dir = tmp / f"rsyslog-{kind}-{time.monotonic_ns()}"
        (self.dir / "work").mkdir(parents=True)
        self.kind = kind
        self.port = port
        self.out = self.dir / "out.jsonl"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def _config(self) -> str:
        d = self.dir
        if self.kind == "imrelp":
            inp = f'module(load="imrelp")\ninput(type="imrelp" address="127.0.0.1" port="{self.port}" ruleset="recv")'
        else:
            inp = (f'module(load="imtcp" maxSessions="1000")\ninput(type="imtcp" address="127.0.0.1" port="{self.port}" '
                   f'listenPortFileName="{d}/port" ruleset="recv" supportOctetCountedFraming="on" ratelimit.interval="0")')
        # For RELP, a Direct queue makes rsyslog write a message before it answers "200 OK"
        # (with its in-memory main queue, an ack means only "queued", and a SIGKILL loses
        # acknowledged messages: rsyslog's guarantee, not the sender's).
        opts = 'queue.type="Direct"' if self.kind == "imrelp" else ""
        return _TEMPLATE.format(d=d, input=inp, ruleset_opts=opts)

    def start(self) -> None:
        conf = self.dir / "rsyslog.conf"
        conf.write_text(self._config())
        pidfile = self.dir / "rsyslogd.pid"
        pidfile.unlink(missing_ok=True)
        log = open(self.dir / "stderr.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(pidfile)], cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True, preexec_fn=die_with_parent,
        )
        log.close()
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited {proc.returncode}: {(self.dir / 'stderr.log').read_text()}")
            ports = listening_ports(proc.pid)
            if self.port == 0 and ports:
                self.port = min(ports)
            return self.port in ports

        wait_until(ready, 20, "rsyslogd to listen")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None

    def count(self) -> int:
        return self.out.read_bytes().count(b"\n") if self.out.exists() else 0

    def lines(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(x) for x in self.out.read_text(encoding="utf-8", errors="replace").splitlines() if x.endswith("}")]


SNG_ROOT = pathlib.Path(os.environ.get("MPLOG_SYSLOG_NG_ROOT", "/opt/syslog-ng-root"))

_SNG_CONF = """@version: 3.38
options {{
  chain-hostnames(no); keep-hostname(yes); use-dns(no); dns-cache(no);
  stats-freq(0); stats-level(1); mark-freq(0); log-msg-size(262144); frac-digits(6);
  log-fifo-size(100000);
}};
source s_net {{ syslog(ip("127.0.0.1") port({port}) transport("tcp") max-connections(1000)
                      log-iw-size(1000000) flags(store-raw-message)); }};
source s_int {{ internal(); }};
destination d_out {{
  file("{d}/out.jsonl"
       template("$(format-json raw=$RAWMSG pri=$PRI hostname=$HOST app=$PROGRAM procid=$PID msgid=$MSGID sd=$SDATA ts=$ISODATE msg=$MSG)\\n"));
}};
destination d_int {{ file("{d}/internal.log"); }};
log {{ source(s_net); destination(d_out); flags(flow-control); }};
log {{ source(s_int); destination(d_int); }};
"""


class SyslogNg(Rsyslog):
    """syslog-ng 3.38 with a ``syslog()`` TCP source (octet counting), flow control on."""

    def __init__(self, tmp: pathlib.Path, port: int = 0) -> None:
        exe = SNG_ROOT / "usr/sbin/syslog-ng"
        if not exe.exists():
            raise AssertionError(f"syslog-ng not unpacked at {SNG_ROOT}: run scripts/ci-deps.sh")
        super().__init__(tmp, "syslog-ng", port)

    def _config(self) -> str:
        return _SNG_CONF.format(d=self.dir, port=self.port)

    def start(self) -> None:
        conf = self.dir / "syslog-ng.conf"
        conf.write_text(self._config())
        d = self.dir
        env = dict(os.environ, LD_LIBRARY_PATH=str(SNG_ROOT / "usr/lib/syslog-ng"))
        env.pop("NOTIFY_SOCKET", None)
        log = open(d / "stderr.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(SNG_ROOT / "usr/sbin/syslog-ng"), "-F", "--no-caps", "-f", str(conf),
             "--module-path", str(SNG_ROOT / "usr/lib/syslog-ng/3.38"), "--persist-file", str(d / "persist"),
             "--pidfile", str(d / "pid"), "--control", str(d / "ctl")],
            cwd=d, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
            preexec_fn=die_with_parent,
        )
        log.close()
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"syslog-ng exited {proc.returncode}: {(d / 'stderr.log').read_text()}")
            ports = listening_ports(proc.pid)
            if self.port == 0 and ports:
                self.port = min(ports)
            return self.port in ports

        wait_until(ready, 20, "syslog-ng to listen")
