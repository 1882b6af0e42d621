"""A celery app whose every worker process logs through one mplog pipeline.

Run it from the repository root, each line in its own terminal (Debian: apt install
redis-server; celery[redis] from the ``test`` extra):

    redis-server --port 6379 --save '' --appendonly no          # broker and result backend
    python -m mplog serve --port 9020 --text                     # the receiver, on stdout
    celery -A examples.celery.tasks worker -l INFO               # the worker and its pool
    python -m examples.celery.client --count 20                  # send tasks, wait, summarize

The receiver shows celery's own records (``celery@... ready.``, ``Task ... received`` from
the main process, ``Task ... succeeded`` from the pool processes) and the tasks' records,
all through the single connection of the worker's pipeline. Try ``--pool threads``,
``--pool solo``, ``--max-tasks-per-child 5`` or ``--pool-start-method spawn``, kill a pool
process with SIGKILL, or send ``--crash``: records logged before a pool process dies are
never lost.

Environment: ``CELERY_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``, also the result
backend) and ``LOG_RECEIVER`` (``host:port`` of the receiver, default ``127.0.0.1:9020``).

The only mplog lines are the import and the ``install()`` call; the tasks log with
celery's task logger as usual. The test suite runs this example:
``tests/integration/test_celery.py``.
"""

from __future__ import annotations

import os
import signal

from celery import Celery
from celery.utils.log import get_task_logger

import mplog
from mplog.integrations.celery import install

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
RECEIVER_HOST, _, RECEIVER_PORT = os.environ.get("LOG_RECEIVER", "127.0.0.1:9020").rpartition(":")

app = Celery("examples.celery.tasks", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    task_track_started=False,
)

# The worker's main process starts the pipeline; its pool processes log into it; a process
# that only sends tasks (examples/celery/client.py) imports this module and starts nothing.
install(app, handlers=[mplog.SocketHandler(RECEIVER_HOST, int(RECEIVER_PORT))])

log = get_task_logger(__name__)


@app.task
def hello(uid: str) -> str:
    """Log one record carrying *uid* (as the extra ``uid``) and return *uid*."""
    log.info("hello %s", uid, extra={"uid": uid})
    return uid


@app.task
def crash(uid: str, records: int = 10) -> None:
    """Log *records* numbered records, then SIGKILL this process: none of them is lost.

    Prefork pool only: with ``--pool threads`` or ``solo`` it kills the worker itself.
    The task ends as a failure (``WorkerLostError``) and is not retried.
    """
    for i in range(records):
        log.warning("crash %s %d", uid, i, extra={"uid": uid, "i": i})
    os.kill(os.getpid(), signal.SIGKILL)
