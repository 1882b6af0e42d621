"""The ``mplog`` command line (also ``python -m mplog``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import __version__, _ops

__all__ = ["main"]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive = _int_at_least(1)
_nonneg = _int_at_least(0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mplog", description="mplog: a multiprocess-safe logging pipeline."
    )
    p.add_argument("--version", action="version", version=f"mplog {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_bench(sub)
    demo = sub.add_parser(
        "demo", help="a pool of workers logging through a pipeline into a receiver"
    )
    demo.add_argument("--workers", type=_positive, default=8, help="worker processes (default 8)")
    demo.add_argument(
        "--records", type=_positive, default=20000, help="records to log in all (default 20000)"
    )
    serve = sub.add_parser("serve", help="run the collector: receive records, write JSON lines")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--port", type=_port, default=9020, help="TCP port (0: any free port)")
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket instead")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--output", default="-", metavar="FILE",
                       help="append records to FILE ('-': stdout, the default); SIGHUP "
                            "reopens it (logrotate)")
    serve.add_argument("--hmac-key-file", metavar="FILE",
                       help="require mplog-wire frames signed with the key in FILE")
    serve.add_argument("--text", action="store_true", help="human-readable lines, not JSON")
    serve.add_argument("--max-bytes", type=_nonneg, default=0,
                       help="rotate the output file at this size (0: never)")
    serve.add_argument("--backup-count", type=_nonneg, default=5,
                       help="rotated files to keep (default 5)")
    serve.add_argument("--fsync", action="store_true",
                       help="fsync the output before acknowledging records")
    serve.add_argument("--max-connections", type=_positive, default=256, metavar="N",
                       help="connections open at once; more are accepted and closed "
                            "(default 256)")
    serve.add_argument("--idle-timeout", type=_seconds, default=60.0, metavar="SECONDS",
                       help="close a connection that completes no frame for this long "
                            "(idle, or a slow partial frame; default 60)")
    serve.add_argument("--max-frame-bytes", type=_int_at_least(1024), default=1024 * 1024,
                       metavar="N", help="largest frame on either wire (default 1048576)")
    serve.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    serve.add_argument("--tls-client-ca", metavar="FILE",
                       help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--metrics-port", type=_port, metavar="PORT",
                       help="serve GET /metrics (Prometheus) on 127.0.0.1:PORT")
    _ops.add_subcommands(sub)
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _port(text: str) -> int:
    value = _nonneg(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser(
        "bench", help="benchmark mplog against the stdlib patterns on this machine",
        description="Side by side: mplog, the logging cookbook's QueueHandler + "
        "QueueListener, a SocketHandler in every process, and a format-only floor; then "
        "mplog serve against rsyslog. Progress on stderr; the markdown report on stdout, or "
        "in FILE.md between the mplog bench markers (the rest of an existing file is kept).",
    )
    bench.add_argument("--quick", action="store_true",
                       help="N = 4 only, 2,000 records per worker, one round, one collector run")
    bench.add_argument("--out", metavar="FILE.md", help="write the markdown report to FILE.md")
    bench.add_argument("--plot", metavar="FILE.png",
                       help="also draw records/s as a bar chart (needs matplotlib)")
    bench.add_argument("--no-collector", action="store_true",
                       help="skip mplog serve against rsyslog")
    bench.add_argument("--collector-only", action="store_true",
                       help="run only mplog serve against rsyslog (no worker setups)")
    bench.add_argument("--sizes", type=lambda text: [_positive(x) for x in text.split(",")],
                       metavar="N,N,...", help="worker counts (default 4,16,64; --quick: 4)")
    bench.add_argument("--records", type=_positive, help="records per run, all workers together")
    bench.add_argument("--rounds", type=_positive, metavar="R",
                       help="rounds of every setup, order rotated each round; also the "
                       "collector's runs per receiver (default 3; --quick: 1)")
    bench.add_argument("--spool", action="store_true",
                       help='also run mplog with spool_mode="all" (every record on disk)')
    bench.add_argument("--timeout", type=float, metavar="SECONDS",
                       help="give up on a setup after this long (default: from --records)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")


def _bench(args: argparse.Namespace, argv: list[str] | None) -> int:
    import shlex

    from . import _bench

    cfg = _bench.BenchConfig.make(
        quick=args.quick, sizes=args.sizes, records=args.records,
        collector=not args.no_collector, pipeline=not args.collector_only,
        spool=args.spool, timeout=args.timeout, rounds=args.rounds,
        out=args.out, plot=args.plot, json_out=args.json,
        command=shlex.join(["mplog", *(sys.argv[1:] if argv is None else argv)]),
    )
    try:
        return _bench.main(cfg)
    except _bench.UsageError as exc:
        sys.stderr.write(f"mplog bench: {exc}\n")
        return 2


def _serve(args: argparse.Namespace) -> int:
    import signal

    from ._collector import Collector
    from ._errors import MplogError

    try:
        collector = Collector(
            args.host, None if args.unix else args.port, unix=args.unix, output=args.output,
            hmac_key_file=args.hmac_key_file, text=args.text, max_bytes=args.max_bytes,
            backup_count=args.backup_count, fsync=args.fsync,
            max_connections=args.max_connections, idle_timeout=args.idle_timeout,
            max_frame_bytes=args.max_frame_bytes,
            tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        )
    except MplogError as exc:
        sys.stderr.write(f"mplog serve: {exc}\n")
        return 2

    metrics = None
    if args.metrics_port is not None:
        from ._metrics import serve_collector_metrics

        try:
            metrics = serve_collector_metrics(args.metrics_port, lambda: dict(collector.stats))
        except MplogError as exc:
            collector.stop()
            sys.stderr.write(f"mplog serve: {exc}\n")
            return 2

    def _stop(signum: int, frame: object) -> None:
        collector.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.output != "-":
        # logrotate's "postrotate kill -HUP": write on in a new file at the same path.
        signal.signal(signal.SIGHUP, lambda signum, frame: collector.reopen())
    # With records on stdout, stdout carries nothing else (`mplog serve | jq` works);
    # with a file, the banner is the first stdout line (scripts wait for it).
    banner = sys.stderr if args.output == "-" else sys.stdout
    print(f"listening on {collector.address}", file=banner, flush=True)
    try:
        collector.serve_forever()
    finally:
        if metrics is not None:
            metrics.close()
    collector.diag.write(collector.summary(), wait=1.0)
    return 1 if collector.output_gone else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        return run(workers=args.workers, records=args.records)
    if args.command == "serve":
        return _serve(args)
    if args.command in _ops.COMMANDS:
        return _ops.run(args)
    if args.command == "bench":
        return _bench(args, argv)
    _parser().print_help(sys.stderr)
    return 2
