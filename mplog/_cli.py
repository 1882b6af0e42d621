"""The ``mplog`` command line (also ``python -m mplog``)."""

from __future__ import annotations

import argparse
import sys

from . import __version__

__all__ = ["main"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mplog", description="mplog: a multiprocess-safe logging pipeline."
    )
    p.add_argument("--version", action="version", version=f"mplog {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="a pool of workers logging through a pipeline into a receiver"
    )
    demo.add_argument("--workers", type=_positive, default=8, help="worker processes (default 8)")
    demo.add_argument(
        "--records", type=_positive, default=20000, help="records to log in all (default 20000)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        return run(workers=args.workers, records=args.records)
    _parser().print_help(sys.stderr)
    return 2
