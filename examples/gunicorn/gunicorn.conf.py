"""gunicorn config: every record of the arbiter and of every worker, gunicorn's own
(``gunicorn.error``, ``gunicorn.access``) and the app's, into one mplog pipeline, which sends
them over one connection to a receiver.

Run it, from the repository root:

    # terminal 1: a receiver that prints one JSON object per record
    python -m mplog serve --port 9020

    # terminal 2: gunicorn with this config (the app is app.py beside it)
    gunicorn -c examples/gunicorn/gunicorn.conf.py

    # terminal 3: a few requests, then a reload, more workers, fewer, and a stop
    curl 'http://127.0.0.1:8000/?rid=hello'
    kill -HUP  "$(cat /tmp/mplog-example-gunicorn.pid)"
    kill -TTIN "$(cat /tmp/mplog-example-gunicorn.pid)"
    kill -TTOU "$(cat /tmp/mplog-example-gunicorn.pid)"
    kill -TERM "$(cat /tmp/mplog-example-gunicorn.pid)"

Environment: ``MPLOG_RECEIVER`` (``host:port`` of the receiver, default ``127.0.0.1:9020``).
Command-line options override this file (``--bind``, ``--workers``, ...).
The test suite runs this file unchanged (tests/integration/test_gunicorn.py).

See docs/integrations/gunicorn.md for what the hooks do and how to combine them with hooks of
your own.
"""

import os

import mplog
from mplog.integrations.gunicorn import *  # noqa: F403  (the hooks and logger_class)

# Where the records go: handlers that run in mplog's listener process (one process for the
# whole server), here one SocketHandler, i.e. one connection for every worker.
_host, _, _port = os.environ.get("MPLOG_RECEIVER", "127.0.0.1:9020").rpartition(":")
configure([mplog.SocketHandler(_host, int(_port))], level="INFO")  # noqa: F405

# The usual gunicorn settings.
wsgi_app = "app:app"
pythonpath = os.path.dirname(os.path.abspath(__file__))
bind = "127.0.0.1:8000"
workers = 4
max_requests = 1000  # recycled workers are forks of the arbiter: configured, nothing to do
max_requests_jitter = 100
pidfile = "/tmp/mplog-example-gunicorn.pid"
