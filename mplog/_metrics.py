"""IO: ``GET /metrics`` in the Prometheus text format, for a pipeline or for ``mplog serve``.

Rules this module keeps:

- ``prometheus_client`` is optional (``pip install 'mplog[metrics]'``) and imported only
  when metrics are asked for; :func:`check_metrics_port` turns its absence into a
  :class:`ConfigError` at ``start()``, before any process is started.
- Nothing is counted twice: a custom collector turns one stats snapshot (the same dict
  ``Pipeline.stats()`` returns) into metric families at scrape time. The hot paths do not
  know Prometheus exists.
- The HTTP server is ``prometheus_client``'s own, on 127.0.0.1 only, in a daemon thread
  of the process that owns the counters (the listener, or the collector).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from ._errors import ConfigError

__all__ = [
    "MetricsServer",
    "check_metrics_port",
    "pipeline_families",
    "serve_collector_metrics",
    "serve_pipeline_metrics",
]

#: The address metrics are served on: local only (the stats say nothing secret, but a
#: scrape endpoint on every interface is a choice the user should make with a proxy).
METRICS_HOST = "127.0.0.1"

#: Pipeline stats that only grow: served as counters ``mplog_<name>_total``.
PIPELINE_COUNTERS: dict[str, str] = {
    "received": "records the listener has read from processes",
    "handled": "records the listener has passed to its handlers",
    "sent": "records socket handlers have written (acknowledged, where the wire acks)",
    "dropped": "records discarded for any reason",
    "reconnects": "times a socket handler re-established a connection",
    "drop_reports": "drop reports sent downstream",
    "worker_lost": "records workers could not hand to the listener",
    "torn_frames": "partial frames left by workers that died mid-write",
    "bad_frames": "malformed frames (their connections closed)",
    "handler_errors": "exceptions raised by handlers",
    "turned_away": "worker connections turned away for want of file descriptors",
    "spool_damaged": "damaged spool regions skipped",
    "restarts": "times the supervisor restarted a dead listener",
}
#: Pipeline stats that go up and down: served as gauges ``mplog_<name>``.
PIPELINE_GAUGES: dict[str, str] = {
    "buffered": "records waiting in socket handlers' buffers and spools",
    "buffered_bytes": "bytes waiting in socket handlers' memory buffers",
    "connected": "socket handlers connected now",
    "connections": "worker connections open now",
    "spooled": "records in disk spools",
    "spool_bytes": "bytes in disk spools",
}


def check_metrics_port(port: object) -> int | None:
    """*port* (the ``metrics_port=`` option) checked: None, or an int from 0 to 65535 (0:
    any free port), with ``prometheus_client`` importable. :class:`ConfigError` if not."""
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics_port must be a TCP port number (0-65535), got {port!r}")
    if importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError("metrics_port needs prometheus_client: pip install 'mplog[metrics]'")
    return port


def pipeline_families(stats: Mapping[str, Any]) -> Iterator[Any]:
    """Prometheus metric families for one pipeline stats snapshot."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for key, doc in PIPELINE_COUNTERS.items():
        if isinstance(stats.get(key), int):
            yield CounterMetricFamily(f"mplog_{key}", doc, value=stats[key])
    for key, doc in PIPELINE_GAUGES.items():
        if isinstance(stats.get(key), int):
            yield GaugeMetricFamily(f"mplog_{key}", doc, value=stats[key])
    if isinstance(stats.get("listener_rss"), int):
        yield GaugeMetricFamily(
            "mplog_listener_resident_memory_bytes", "the listener's resident memory",
            value=stats["listener_rss"],
        )
    if isinstance(stats.get("listener_cpu"), (int, float)):
        yield CounterMetricFamily(
            "mplog_listener_cpu_seconds", "the listener's CPU time (user + system)",
            value=stats["listener_cpu"],
        )
    at = stats.get("last_error_at")
    if isinstance(at, (int, float)):
        yield GaugeMetricFamily(
            "mplog_last_error_timestamp_seconds", "when the latest delivery error happened",
            value=at,
        )


def collector_families(
    stats: Mapping[str, Any], gauges: Collection[str], prefix: str
) -> Iterator[Any]:
    """Families for a flat stats mapping: an int is a counter ``<prefix>_<key>_total``
    (a gauge ``<prefix>_<key>`` if *key* is in *gauges*); a mapping of ints is one counter
    with a ``reason`` label (``refusals`` by reason); anything else is skipped."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for key, value in stats.items():
        name = f"{prefix}_{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            if key in gauges:
                yield GaugeMetricFamily(name, f"{key} now", value=value)
            else:
                yield CounterMetricFamily(name, f"{key} so far", value=value)
        elif isinstance(value, Mapping):
            family = CounterMetricFamily(name, f"{key} so far, by reason", labels=["reason"])
            for reason, n in sorted(value.items()):
                if isinstance(n, (int, float)) and not isinstance(n, bool):
                    family.add_metric([str(reason)], n)
            yield family


class _SnapshotCollector:
    """A ``prometheus_client`` custom collector: one stats snapshot per scrape."""

    def __init__(self, families: Callable[[], Iterator[Any]]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families()

    def describe(self) -> list[Any]:
        return []  # no fixed description: the registry must not call collect() at register


class MetricsServer:
    """A running ``/metrics`` endpoint: :attr:`port` (the real one, for port 0), and
    :meth:`close`."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = int(server.server_address[1])

    def close(self) -> None:
        """Stop serving and join the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def _serve(port: int, families: Callable[[], Iterator[Any]]) -> MetricsServer:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(families))
    try:
        server, thread = start_http_server(port, addr=METRICS_HOST, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {METRICS_HOST}:{port}: {exc}") from exc
    return MetricsServer(server, thread)


def serve_pipeline_metrics(port: int, stats_fn: Callable[[], Mapping[str, Any]]) -> MetricsServer:
    """Serve ``GET /metrics`` on 127.0.0.1:*port* with the pipeline counters *stats_fn*
    returns at each scrape (``mplog_received_total``, ``mplog_buffered``, ...).

    Raises:
        ConfigError: the port cannot be bound.
    """
    return _serve(port, lambda: pipeline_families(stats_fn()))


def serve_collector_metrics(
    port: int,
    stats_fn: Callable[[], Mapping[str, Any]],
    *,
    gauges: Collection[str] = ("connections_open",),
    prefix: str = "mplog_collector",
) -> MetricsServer:
    """Serve ``GET /metrics`` on 127.0.0.1:*port* for ``mplog serve --metrics-port``.

    *stats_fn* returns the collector's counters at each scrape, e.g. ``{"records": 10,
    "duplicates": 0, "bytes": 2048, "connections": 3, "refusals": {"hmac": 1}}``: ints
    become counters ``mplog_collector_records_total`` (gauges for the keys in *gauges*),
    a mapping becomes one counter labelled by ``reason``.

    Raises:
        ConfigError: ``prometheus_client`` is missing or the port cannot be bound.
    """
    check_metrics_port(port)
    return _serve(port, lambda: collector_families(stats_fn(), gauges, prefix))
