"""Plain subprocesses: a chain of programs, each started by the previous one, all logging
into the pipeline of the first.

Run it:
    python examples/subprocess_chain.py              # listener prints on stderr
    python examples/subprocess_chain.py --port 9020  # to `mplog serve --port 9020`

``mplog.start()`` exports ``MPLOG_ADDRESS``; a child started with the inherited
environment calls ``mplog.worker_init()`` (no argument) and is in. Each level exports the
variable again, so grandchildren find it too.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys

import mplog

log = logging.getLogger("examples.chain")


def child(level: int, depth: int) -> None:
    mplog.worker_init()  # reads MPLOG_ADDRESS
    log.info("hello from level %d, pid %d", level, os.getpid(), extra={"level": level})
    if level < depth:
        run_next(level + 1, depth)


def run_next(level: int, depth: int) -> None:
    cmd = [sys.executable, os.path.abspath(__file__), "--level", str(level), "--depth", str(depth)]
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="send to a receiver on 127.0.0.1:PORT")
    parser.add_argument("--depth", type=int, default=3, help="levels of subprocesses (default 3)")
    parser.add_argument("--level", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.level:
        child(args.level, args.depth)
        return
    if args.port:
        handlers: list[logging.Handler] = [mplog.SocketHandler("127.0.0.1", args.port)]
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
    with mplog.start(handlers, level=logging.INFO):
        log.info("hello from level 0, pid %d", os.getpid(), extra={"level": 0})
        run_next(1, args.depth)


if __name__ == "__main__":
    main()
