"""Every kind of process pool logging into one mplog pipeline.

Run it:
    python examples/pools.py                 # records printed by the listener on stderr
    mplog serve --port 9020 &                # or: collect them as JSON lines
    python examples/pools.py --port 9020

The parent calls ``mplog.start()`` once. Pool workers get ``initializer=mplog.worker_init``;
``worker_init`` reads the pipeline's address from ``MPLOG_ADDRESS``, which ``start()``
exported, so it needs no argument. (Forked workers are configured already, and spawn
and forkserver workers join by themselves when their main module imports mplog, as this
one does; the initializer makes it explicit, and covers billiard's workers too.)

The default mode ships a ``logging.StreamHandler(sys.stderr)`` instance to the listener:
a list of handler instances works like a factory, for every stdlib handler.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import sys

import mplog

log = logging.getLogger("examples.pools")


def work(args: tuple[str, int]) -> int:
    pool, i = args
    log.info("%s task %d in pid %d", pool, i, os.getpid(), extra={"pool": pool, "i": i})
    return i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="send to a receiver on 127.0.0.1:PORT")
    parser.add_argument("--tasks", type=int, default=20, help="tasks per pool (default 20)")
    args = parser.parse_args()
    if args.port:
        handlers: list[logging.Handler] = [mplog.SocketHandler("127.0.0.1", args.port)]
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(processName)s %(process)d %(name)s: %(message)s"))
        handlers = [stream]

    with mplog.start(handlers, level=logging.INFO) as pipeline:
        n = args.tasks
        # 1. multiprocessing.Pool (spawn: the worker starts from nothing and needs the initializer)
        with multiprocessing.get_context("spawn").Pool(2, initializer=mplog.worker_init) as pool:
            pool.map(work, [("multiprocessing", i) for i in range(n)])
        # 2. concurrent.futures.ProcessPoolExecutor
        with concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("forkserver"), initializer=mplog.worker_init
        ) as ex:
            list(ex.map(work, [("executor", i) for i in range(n)]))
        # 3. multiprocess.Pool (dill instead of pickle; same initializer)
        import multiprocess

        with multiprocess.get_context("spawn").Pool(2, initializer=mplog.worker_init) as pool:
            pool.map(work, [("multiprocess", i) for i in range(n)])
        # 4. billiard.Pool (celery's fork of multiprocessing)
        import billiard

        pool = billiard.Pool(2, initializer=mplog.worker_init)
        try:
            pool.map(work, [("billiard", i) for i in range(n)])
        finally:
            pool.close()
            pool.join()
        pipeline.flush()
        log.info("done", extra={"pool": "main", "i": -1})


if __name__ == "__main__":
    main()
