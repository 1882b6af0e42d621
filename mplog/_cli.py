"""The ``mplog`` command line (also ``python -m mplog``)."""

from __future__ import annotations

import argparse
import sys

from . import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mplog", description="mplog: a multiprocess-safe logging pipeline.")
    p.add_argument("--version", action="version", version=f"mplog {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the demo: a pool of workers logging through a pipeline into a receiver")
    demo.add_argument("--workers", type=int, default=8, help="worker processes (default 8)")
    demo.add_argument("--records", type=int, default=20000, help="records to log in all (default 20000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run

        return run(workers=args.workers, records=args.records)
    _parser().print_help(sys.stderr)
    return 2
