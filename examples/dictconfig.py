"""Declarative configuration on both sides: the listener's handlers and the workers'
logging both come from ``logging.config.dictConfig`` dictionaries.

Run it:
    python examples/dictconfig.py --port 9020 --file /tmp/app.log

``mplog.start(config=LISTENER)`` applies LISTENER in the listener process: the handlers it
attaches to the root logger are the listener's handlers (here a file with its own format
and level, and an mplog.SocketHandler). Each worker applies WORKER, whose only handler is
``"class": "mplog.QueueHandler"``; with no "address" key it reads MPLOG_ADDRESS.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import multiprocessing
import sys
from typing import Any

import mplog

# On Python 3.12.0-3.12.3, dictConfig passes no keys but a queue to QueueHandler
# subclasses (CPython gh-118868); "()" instead of "class" works on every version.
_KEY = "()" if (3, 12) <= sys.version_info[:3] < (3, 12, 4) else "class"

WORKER: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"mplog": {_KEY: "mplog.QueueHandler"}},
    "root": {"handlers": ["mplog"], "level": "DEBUG"},
}


def listener_config(port: int, path: str) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(levelname)s %(processName)s %(name)s: %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": path, "formatter": "plain",
                     "level": "INFO"},
            "collector": {"class": "mplog.SocketHandler", "host": "127.0.0.1", "port": port},
        },
        "root": {"handlers": ["file", "collector"]},
    }


def worker(i: int) -> None:
    logging.config.dictConfig(WORKER)
    log = logging.getLogger("examples.dictconfig")
    log.debug("worker %d: debug (the file handler's level keeps this out of the file)", i,
              extra={"i": i})
    log.info("worker %d: info", i, extra={"i": i})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="receiver on 127.0.0.1:PORT")
    parser.add_argument("--file", required=True, help="the listener's log file")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with mplog.start(config=listener_config(args.port, args.file), level=logging.DEBUG) as p:
        procs = [multiprocessing.get_context("spawn").Process(target=worker, args=(i,))
                 for i in range(args.workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        p.flush()


if __name__ == "__main__":
    main()
