"""Send tasks to the example worker and wait for them: a process that only sends tasks.

    python -m examples.celery.client [--count N] [--crash] [--timeout SECONDS] [--json]

It imports ``examples.celery.tasks``, so ``install()`` runs here too, and that starts
nothing: this process keeps its own logging (here ``basicConfig`` to stderr), has no
listener and no ``MPLOG_ADDRESS``, and the worker's pipeline never sees its records.

Sends *N* ``hello`` tasks (and, with ``--crash``, one ``crash`` task halfway through), waits
for every result (``--timeout``, default 120 s, for all of them), and prints how many ended
in which state. ``--json`` prints one JSON object instead, which the test suite reads:
``{"tasks": [[task_id, task_name, uid, state, exception_type], ...], "mplog": {...}}``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import uuid

from celery.result import ResultSet

import mplog
from examples.celery.tasks import app, crash, hello

log = logging.getLogger("examples.celery.client")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m examples.celery.client")
    ap.add_argument("--count", type=int, default=20, help="hello tasks to send (default 20)")
    ap.add_argument("--crash", action="store_true", help="also send one crash task")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="client: %(message)s")

    run = uuid.uuid4().hex[:8]
    sent = []
    for i in range(args.count):
        uid = f"{run}-{i:05d}"
        sent.append((hello.name, uid, hello.delay(uid)))
        if args.crash and i == args.count // 2:
            uid = f"{run}-crash"
            sent.append((crash.name, uid, crash.delay(uid)))
    log.info("sent %d tasks; waiting for their results", len(sent))
    ResultSet([r for _, _, r in sent], app=app).join(
        timeout=args.timeout, propagate=False, interval=0.05
    )

    rows = []
    for name, uid, r in sent:
        exc = type(r.result).__name__ if isinstance(r.result, BaseException) else None
        rows.append([r.id, name, uid, r.state, exc])
    root = logging.getLogger()
    mine = {
        # What install() left in this process: nothing of mplog's.
        "address": os.environ.get(mplog.ENV_ADDRESS),
        "queue_handlers": sum(isinstance(h, mplog.QueueHandler) for h in root.handlers),
    }
    if args.json:
        json.dump({"tasks": rows, "mplog": mine}, sys.stdout)
        sys.stdout.write("\n")
    else:
        states = collections.Counter(f"{row[1]} {row[3]}" for row in rows)
        for what, n in sorted(states.items()):
            print(f"{n:6d}  {what}")
        print(f"mplog in this process: {mine}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
