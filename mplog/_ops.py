"""IO: the operator's subcommands, ``mplog stats`` and ``mplog top``.

Both ask a running listener over its intake socket (control ops ``stats`` and ``top``),
so they work from any shell of the same user: ``MPLOG_ADDRESS`` (exported by
``mplog.start()`` to the program's children) or the address given names the pipeline.

Exit status: 0 on success, 1 when the listener cannot be reached, 2 on bad usage (no
address at all). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from . import _poll
from ._errors import MplogError
from ._intake import control_request
from .handlers import ENV_ADDRESS

__all__ = ["COMMANDS", "add_subcommands", "run"]

COMMANDS = ("stats", "top")
#: How long one control request may take before the listener counts as unreachable.
REQUEST_TIMEOUT = 5.0
#: The contract's stats, in the order the human-readable output lists them first.
MAIN_KEYS = ("received", "handled", "sent", "buffered", "dropped", "reconnects", "connected",
             "restarts")
#: Stats that only grow: under ``--watch`` they get a rate per second.
COUNTER_KEYS = frozenset({
    "received", "handled", "sent", "dropped", "reconnects", "restarts", "drop_reports",
    "worker_lost", "torn_frames", "bad_frames", "handler_errors", "spool_damaged",
    "turned_away", "listener_cpu",
})


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_subcommands(sub: Any) -> None:
    """Add ``stats`` and ``top`` to the ``mplog`` parser's subparsers *sub*."""
    where = (
        "the pipeline's intake address (default: $MPLOG_ADDRESS, which mplog.start() "
        "exports to the program's children)"
    )
    stats = sub.add_parser("stats", help="the counters of a running pipeline")
    stats.add_argument("address", nargs="?", metavar="ADDRESS", help=where)
    stats.add_argument("--json", action="store_true", help="one JSON object per sample")
    stats.add_argument("--watch", type=_seconds, metavar="SECONDS",
                       help="sample again every SECONDS (with rates per second) until Ctrl-C")
    top = sub.add_parser("top", help="a live view of a running pipeline (q quits)")
    top.add_argument("address", nargs="?", metavar="ADDRESS", help=where)
    top.add_argument("--interval", type=_seconds, default=1.0, metavar="SECONDS",
                     help="refresh period (default 1)")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand ``args.command`` (one of :data:`COMMANDS`); its exit status."""
    prog = f"mplog {args.command}"
    address = args.address or os.environ.get(ENV_ADDRESS)
    if not address:
        sys.stderr.write(f"{prog}: no address: give ADDRESS or set {ENV_ADDRESS}\n")
        return 2
    try:
        if args.command == "stats":
            return _stats(address, as_json=args.json, watch=args.watch, out=sys.stdout)
        return _top(address, args.interval)
    except MplogError as exc:
        sys.stderr.write(f"{prog}: {_one_line(str(exc))}\n")
        return 1
    except KeyboardInterrupt:
        return 0


def _one_line(text: str) -> str:
    from ._text import one_line

    return one_line(text)


# -- stats ------------------------------------------------------------------------------


def rates(prev: Mapping[str, Any], cur: Mapping[str, Any], seconds: float) -> dict[str, float]:
    """Per-second rates of the counters between two samples *seconds* apart."""
    out: dict[str, float] = {}
    if seconds <= 0:
        return out
    for key in sorted(COUNTER_KEYS & cur.keys() & prev.keys()):
        a, b = prev[key], cur[key]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            out[key] = round((b - a) / seconds, 3)
    return out


def _rate(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _ordered(stats: Mapping[str, Any]) -> list[str]:
    return [k for k in MAIN_KEYS if k in stats] + sorted(k for k in stats if k not in MAIN_KEYS)


def _value(key: str, value: Any) -> str:
    if key == "listener_cpu" and isinstance(value, float):
        return f"{value:.2f}"
    if value is None:
        return "-"
    return str(value)


def format_stats(stats: Mapping[str, Any], per_second: Mapping[str, float] | None) -> str:
    """Aligned ``key: value`` lines (with ``(N/s)`` after counters when rates are given)."""
    keys = _ordered(stats)
    width = max((len(k) for k in keys), default=0) + 1
    lines = []
    for k in keys:
        line = f"{k + ':':<{width}} {_value(k, stats[k])}"
        if per_second is not None and k in per_second:
            line = f"{line:<{width + 16}} ({_rate(per_second[k])}/s)"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _sample(address: str) -> dict[str, Any]:
    reply = control_request(address, {"op": "stats"}, timeout=REQUEST_TIMEOUT)
    stats = reply.get("stats")
    if not isinstance(stats, dict):
        raise MplogError(f"listener at {address} sent no stats: {reply!r}")
    return stats


def _stats(address: str, *, as_json: bool, watch: float | None, out: TextIO) -> int:
    prev: dict[str, Any] | None = None
    prev_at = 0.0
    while True:
        stats = _sample(address)
        now = time.monotonic()
        per_second = rates(prev, stats, now - prev_at) if prev is not None else None
        if as_json:
            # the stats at the top level (what Pipeline.stats() returns), and when
            obj: dict[str, Any] = dict(stats, time=round(time.time(), 3))
            if per_second is not None:
                obj["rates"] = per_second
            out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        else:
            if watch is not None:
                out.write(f"-- {time.strftime('%H:%M:%S')} {address}\n")
            out.write(format_stats(stats, per_second if watch is not None else None))
        out.flush()
        if watch is None:
            return 0
        prev, prev_at = stats, now
        # Pacing, not waiting for a condition: the next sample is due in *watch* seconds.
        time.sleep(max(0.0, prev_at + watch - time.monotonic()))


# -- top --------------------------------------------------------------------------------


def _mib(n: object) -> str:
    return f"{n / 1048576:.1f} MiB" if isinstance(n, (int, float)) else "-"


def _process_name(pid: int | None) -> str:
    if pid is None:
        return "?"
    import psutil

    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "(gone)"


def _handler_state(h: Mapping[str, Any], now: float) -> str:
    if "connected" not in h:
        return "-"
    if h["connected"]:
        return "connected"
    retry = h.get("retry_time")
    if isinstance(retry, (int, float)):
        return f"back-off {max(0.0, retry - now):.1f}s"  # the next try, on the one timer
    return "connecting"


def render_top(
    address: str,
    detail: Mapping[str, Any],
    prev: Mapping[str, Any] | None,
    names: dict[int, str],
    width: int,
) -> list[str]:
    """The lines of one ``mplog top`` screen for a ``top`` control reply *detail* (and
    the previous one, *prev*, for rates)."""
    stats: Mapping[str, Any] = detail["stats"]
    now = float(detail["time"])
    dt = now - float(prev["time"]) if prev is not None else 0.0
    per_second = rates(prev["stats"], stats, dt) if prev is not None else {}

    def counter(key: str) -> str:
        text = f"{key} {stats.get(key, '-')}"
        return f"{text} ({_rate(per_second[key])}/s)" if key in per_second else text

    lines = [
        f"mplog top  {address}  {time.strftime('%H:%M:%S', time.localtime(now))}  (q quits)",
        f"listener pid {stats.get('pid', '-')}  rss {_mib(stats.get('listener_rss'))}  "
        f"cpu {_value('listener_cpu', stats.get('listener_cpu'))} s  "
        f"restarts {stats.get('restarts', '-')}  connections {stats.get('connections', '-')}",
        "  ".join(counter(k) for k in ("received", "handled", "sent")),
        "  ".join(counter(k) for k in ("dropped", "buffered", "reconnects", "connected")),
        "",
        f"{'HANDLER':<12} {'TARGET':<18} {'STATE':<14} {'BUFFER':>14} {'SENT':>8} "
        f"{'DROPPED':>7}  LAST ERROR",
    ]
    for h in detail.get("handlers", []):
        kind = str(h.get("type", "?")).removesuffix("Handler") or "Handler"
        fill = f"{h['buffered']}/{h.get('buffer_records', '?')}" if "buffered" in h else "-"
        lines.append(
            f"{kind[:12]:<12} {str(h.get('target', '-'))[:18]:<18} {_handler_state(h, now):<14} "
            f"{fill:>14} {h.get('sent', '-')!s:>8} {h.get('dropped', '-')!s:>7}  "
            f"{_one_line(str(h.get('last_error') or '-'))}"
        )
    lines += ["", f"{'PID':>8} {'PROCESS':<20} {'RECORDS':>10} {'RATE/S':>10}"]
    by_pid: dict[int | None, int] = {}
    for c in detail.get("clients", []):
        by_pid[c.get("pid")] = by_pid.get(c.get("pid"), 0) + int(c.get("records", 0))
    before: dict[int | None, int] = {}
    for c in (prev or {}).get("clients", []):
        before[c.get("pid")] = before.get(c.get("pid"), 0) + int(c.get("records", 0))
    for pid, n in sorted(by_pid.items(), key=lambda kv: (-kv[1], kv[0] or 0)):
        if pid is not None and pid not in names:
            names[pid] = _process_name(pid)
        name = names.get(pid, "?") if pid is not None else "?"
        known = prev is not None and pid in before and dt > 0
        rate = f"{(n - before[pid]) / dt:.1f}" if known else "-"
        lines.append(f"{pid if pid is not None else '?':>8} {name[:20]:<20} {n:>10} {rate:>10}")
    return [line[:width] for line in lines]


def _top(address: str, interval: float) -> int:
    import shutil

    detail = control_request(address, {"op": "top"}, timeout=REQUEST_TIMEOUT)
    if "stats" not in detail:
        raise MplogError(f"listener at {address} does not answer 'top': {detail.get('error')}")
    tty = sys.stdin.isatty()
    saved: Any = None
    if tty:
        import termios
        import tty as tty_mod

        saved = termios.tcgetattr(sys.stdin.fileno())
        tty_mod.setcbreak(sys.stdin.fileno())
    out = sys.stdout
    out.write("\x1b[?1049h\x1b[?25l")  # the alternate screen, no cursor: as top(1) does
    names: dict[int, str] = {}
    prev: dict[str, Any] | None = None
    try:
        while True:
            try:  # the terminal's own size: $COLUMNS may be stale (inherited)
                size = os.get_terminal_size(out.fileno())
            except (OSError, ValueError):
                size = shutil.get_terminal_size()
            lines = render_top(address, detail, prev, names, size.columns)[: size.lines]
            out.write("\x1b[H\x1b[2J" + "\n".join(lines))
            out.flush()
            if _key_pressed(interval, tty) == "q":
                return 0
            prev = detail
            detail = control_request(address, {"op": "top"}, timeout=REQUEST_TIMEOUT)
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)


def _key_pressed(timeout: float, tty: bool) -> str | None:
    """Wait up to *timeout* seconds for a key on stdin; the key (lower case), or None."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if not tty:
            time.sleep(remaining)  # no keyboard: refresh on the timer, Ctrl-C quits
            return None
        ready = _poll.readable([sys.stdin], remaining)
        if ready:
            key = os.read(sys.stdin.fileno(), 32).decode("utf-8", "replace").lower()
            if not key:
                return "q"  # stdin closed
            if "q" in key:
                return "q"
