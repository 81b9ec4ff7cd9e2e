"""Prometheus metrics (served at ``/metrics`` when ``PROMETHEUS_ENABLED``).

Process-local counters (dispatch fallbacks, embedded worker restarts, dispatch latency observed from the
event bus) live in the default registry. Database-wide figures (deployments per status, cumulative
recovery statistics written by whichever process ran recovery) are read at scrape time from a few
maintained rows (``deployment_status_counts``, ``system_state``), so a scrape costs the same whatever
the number of deployments.
"""

from __future__ import annotations

import bisect

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from backend.app.core.events import Event, EventType
from backend.app.models import DeploymentStatus
from backend.app.runtime import workers

DISPATCH_FALLBACKS = Counter("windflow_dispatch_fallback_total", "Deployments run by the asyncio fallback instead of Celery", ["reason"])
DISPATCHES = Counter("windflow_dispatch_total", "Deployments handed to an executor", ["executor"])
EMBEDDED_WORKER_RESTARTS = Counter("windflow_embedded_worker_restarts_total", "Restarts of the embedded Celery worker")
DISPATCH_LATENCY = Histogram(
    "windflow_dispatch_latency_seconds",
    "Time from queueing to the claim by an executor (first attempts)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class _DatabaseCollector:
    """Yields the figures last read from the database by :func:`refresh_from_database`."""

    def __init__(self) -> None:
        self.by_status: dict[str, int] = {}
        self.recovery: dict[str, int] = {}
        self.workers: dict[str, int] = {}
        self.degraded_total = 0

    def collect(self):
        gauge = GaugeMetricFamily("windflow_deployments", "Deployments by status", labels=["status"])
        for status in DeploymentStatus:
            gauge.add_metric([str(status)], self.by_status.get(str(status), 0))
        yield gauge
        yield GaugeMetricFamily("windflow_deployments_pending", "Deployments waiting in pending", value=self.by_status.get("pending", 0))
        for key in ("retried", "failed", "skipped", "errors", "settled", "runs"):
            yield CounterMetricFamily(f"windflow_recovery_{key}", f"Recovery: cumulative {key}", value=self.recovery.get(key, 0))
        workers = GaugeMetricFamily(
            "windflow_workers",
            "Celery workers with a fresh heartbeat: healthy, or degraded (alive, executing nothing)",
            labels=["state"],
        )
        for state in ("healthy", "degraded"):
            workers.add_metric([state], self.workers.get(state, 0))
        yield workers
        yield CounterMetricFamily(
            "windflow_workers_degraded", "Times a worker was found alive but executing nothing", value=self.degraded_total
        )


_collector = _DatabaseCollector()
REGISTRY.register(_collector)


async def refresh_from_database(session) -> None:
    from backend.app.services.deployments import status_counts
    from backend.app.services.deployments.recovery import last_report

    _collector.by_status = await status_counts.read(session)  # six maintained rows, never a scan
    report = await last_report(session)
    _collector.recovery = dict((report or {}).get("totals", {}))
    present = await workers.list_workers(session, include_stale=False)  # a few rows, one per worker node
    _collector.workers = {"healthy": sum(w.serving for w in present), "degraded": sum(not w.serving for w in present)}
    _collector.degraded_total = await workers.degraded_total(session)


def observes(evt: Event) -> bool:
    """The bus filter of :func:`observe_event` (so log events are not read for it across processes)."""
    return evt.type is EventType.DEPLOYMENT_STATUS_CHANGED


def observe_event(evt: Event) -> None:
    """Bus subscriber: dispatch latency of first attempts, from ``DEPLOYMENT_STATUS_CHANGED`` to deploying."""
    if evt.type is not EventType.DEPLOYMENT_STATUS_CHANGED or evt.data.get("new_status") != "deploying":
        return  # (main.py subscribes with a filter on status events; this guard keeps direct calls safe)
    latency = evt.data.get("dispatch_latency_seconds")
    if latency is not None and evt.data.get("attempt") == 1:
        DISPATCH_LATENCY.observe(max(0.0, float(latency)))


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- real time (WebSocket / SSE; process-local) ----------------------------------------------------

WEBSOCKET_CONNECTIONS = Gauge("windflow_websocket_connections", "Open authenticated WebSocket connections")
SSE_STREAMS = Gauge("windflow_sse_streams", "Open Server-Sent Events streams")
EVENT_SEND_LATENCY = Histogram(
    "windflow_event_latency_seconds",
    "Time from an event's emission (its timestamp) to its send to a WebSocket/SSE client",
    ["transport"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def observe_many(histogram: Histogram, value: float, count: int) -> None:
    """``count`` observations of the same ``value`` (the latency of one event written to ``count`` sockets):
    one bucket increment of ``count`` instead of ``count`` calls. Uses the histogram's value slots
    (prometheus_client 0.2x); falls back to single observations if they are not there."""
    buckets, bounds, total = (getattr(histogram, a, None) for a in ("_buckets", "_upper_bounds", "_sum"))
    if buckets is None or bounds is None or total is None:
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    buckets[bisect.bisect_left(bounds, value)].inc(count)


RESYNCS = Counter("windflow_event_resyncs_total", "Clients that fell behind and were resynchronised", ["transport"])
EVENT_FRAMES = Counter(
    "windflow_event_frames_total",
    "Event frames sent to clients: during the hub's delivery (direct) or by the client's pump "
    "(queued: something was waiting before it, a catch-up, or an earlier send still waiting for the socket)",
    ["transport", "path"],
)


class _PublishedCollector:
    """Events published by this process, by type (the bus counts them; no import from events to metrics)."""

    def collect(self):
        from backend.app.core.events import EventType, bus

        family = CounterMetricFamily("windflow_events_published", "Events published by this process", labels=["type"])
        for kind in EventType:
            family.add_metric([str(kind)], bus.published_by_type.get(str(kind), 0))
        yield family


REGISTRY.register(_PublishedCollector())
