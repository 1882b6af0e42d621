"""A small WSGI app for the mplog gunicorn example: one log record per request.

Each request is logged once by the logger ``example.app``, with its request id as the
extra ``request_id``: the ``rid`` query parameter, else the ``X-Request-Id`` header, else a
fresh one. The response body is ``<request id> <worker pid>``.

It knows nothing about mplog: it logs with the stdlib, and the hooks of
``gunicorn.conf.py`` beside it route every record of every worker into one pipeline.
Run it with that config (see its header).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

log = logging.getLogger("example.app")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    rid = (query.get("rid") or [environ.get("HTTP_X_REQUEST_ID") or uuid.uuid4().hex])[0]
    log.info(
        "%s %s", environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/"),
        extra={"request_id": rid},
    )
    body = f"{rid} {os.getpid()}\n".encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("X-Request-Id", rid),
        ],
    )
    return [body]
