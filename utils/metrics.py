"""Prometheus metrics for ``GET /metrics`` (text exposition format).

- :class:`PoolMetrics`: histograms the detector pool feeds from its own thread (time in
  the queue, batch size, inference time per batch). Its metrics belong to no registry;
  whoever exposes them calls :meth:`PoolMetrics.collect`.
- :class:`ServiceMetrics`: one :class:`~prometheus_client.CollectorRegistry` per app
  (never the global default one: tests build many apps in one process). It holds the HTTP
  metrics that :func:`middleware` records, and a collector that reads the pool, the
  spool and the admission queue when scraped.

Label values stay bounded: ``endpoint`` is the matched route's canonical path
(``/detections/{id}``) or ``unmatched``; ``method`` is a standard HTTP method or
``other``; ``status`` is the response status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:  # pool.py imports this module: no run-time import back
    from pool import DetectorPool
    from recorder import RecordWriter
    from utils.admission import Admission

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Seconds, for CPU inference and the requests around it: 1 ms .. 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
UNMATCHED = "unmatched"  # the endpoint label of a request that matched no route
OTHER_METHOD = "other"
CLIENT_GONE_STATUS = 499  # the handler was cancelled: nothing was sent


class PoolMetrics:
    """What the detector pool observes about its jobs; thread-safe."""

    def __init__(self) -> None:
        self._queue = Histogram(
            "yolo_queue_seconds", "Time a job waited in the pool queue before a worker "
            "started it", buckets=LATENCY_BUCKETS, registry=None)
        self._batch_size = Histogram(
            "yolo_batch_size", "Images per forward batch run by a worker",
            buckets=BATCH_BUCKETS, registry=None)
        self._inference = Histogram(
            "yolo_inference_seconds", "Worker-side time per forward batch",
            buckets=LATENCY_BUCKETS, registry=None)

    def observe_queue(self, seconds: float) -> None:
        """A job waited ``seconds`` in the queue before a worker started it."""
        self._queue.observe(max(0.0, seconds))

    def observe_batch(self, size: int, inference_seconds: float) -> None:
        """A worker ran one forward batch of ``size`` images in ``inference_seconds``."""
        self._batch_size.observe(size)
        self._inference.observe(max(0.0, inference_seconds))

    def collect(self) -> Iterator[Metric]:
        """The metric families of the three histograms."""
        for histogram in (self._queue, self._batch_size, self._inference):
            yield from histogram.collect()


@dataclass(frozen=True)
class MetricSources:
    """What the scrape-time collector reads; each is None until its resource exists."""

    pool: DetectorPool | None = None
    records: RecordWriter | None = None
    admission: Admission | None = None


class ServiceMetrics:
    """The app's registry: HTTP metrics plus the pool, spool and admission figures."""

    def __init__(self, sources: Callable[[], MetricSources] = MetricSources) -> None:
        """``sources`` is called at each scrape (the app's resources start later)."""
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "yolo_http_requests", "HTTP requests answered, by route, method and status",
            ["endpoint", "method", "status"], registry=self.registry)
        self.duration = Histogram(
            "yolo_http_request_duration_seconds", "Time to produce the response",
            ["endpoint", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge(
            "yolo_http_requests_in_flight", "HTTP requests being served",
            registry=self.registry)
        self.registry.register(_ServiceCollector(sources))

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.duration.labels(endpoint, method).observe(seconds)

    def response(self) -> web.Response:
        """Every metric in the Prometheus text exposition format."""
        return web.Response(body=generate_latest(self.registry),
                            headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


def endpoint_label(request: web.Request) -> str:
    """The matched route's canonical path (``/detections/{id}``), else ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def method_label(request: web.Request) -> str:
    return request.method if request.method in hdrs.METH_ALL else OTHER_METHOD


def middleware(metrics: ServiceMetrics) -> Callable[[web.Request, Handler],
                                                    Awaitable[web.StreamResponse]]:
    """Count every request with the status the client gets.

    Put it first (outermost) so that errors already turned into JSON responses by the
    inner middlewares are counted with their status; an ``HTTPException`` that gets
    through (a redirect) is counted with its own, anything else as 500, and a cancelled
    handler (the client left) as 499.
    """

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint, method = endpoint_label(request), method_label(request)
        status = 500
        metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_GONE_STATUS
            raise
        finally:
            metrics.in_flight.dec()
            metrics.observe_request(endpoint, method, status, time.perf_counter() - start)

    return count_requests


# ---------------------------------------------------------------- scrape-time figures

class _ServiceCollector:
    """Reads the pool, the spool and the admission queue when scraped; never raises."""

    def __init__(self, sources: Callable[[], MetricSources]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        try:
            sources = self._sources()
        except Exception:  # a scrape must not fail for a missing figure
            log.warning("metrics: cannot read the app's resources", exc_info=True)
            return
        parts: tuple[tuple[str, Callable[[Any], Iterable[Metric]], object | None], ...] = (
            ("the detector pool", _pool_families, sources.pool),
            ("the spool", _spool_families, sources.records),
            ("the admission queue", _admission_families, sources.admission),
        )
        for what, read, source in parts:
            if source is None:
                continue
            try:
                families = list(read(source))  # all of a part, or none of it
            except Exception:  # as above
                log.warning("metrics: cannot read %s", what, exc_info=True)
                continue
            yield from families


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _pool_families(pool: DetectorPool) -> Iterator[Metric]:
    stats = pool.stats
    yield _counter("yolo_worker_deaths", "Worker processes that died or hung",
                   stats.worker_deaths)
    yield _counter("yolo_worker_restarts", "Replacement workers started and warm",
                   stats.restarts)
    yield _counter("yolo_retried_jobs", "Jobs retried because their worker died",
                   stats.retried_jobs)
    yield _counter("yolo_refused_images", "Images refused for crashing two workers",
                   stats.refused_images)
    snapshot = pool.snapshot()
    yield _gauge("yolo_workers", "Worker processes running", snapshot["workers"])
    yield _gauge("yolo_workers_busy", "Workers running a job", snapshot["busy"])
    yield _gauge("yolo_queued_jobs", "Jobs waiting for a worker", snapshot["queued_jobs"])
    yield _gauge("yolo_pool_ready", "1 when every worker is warm", float(pool.ready))
    yield from pool.metrics.collect()


def _spool_families(records: RecordWriter) -> Iterator[Metric]:
    spool = records.spool
    yield _gauge("yolo_spool_records", "Records waiting in the spool for the database",
                 spool.pending_items)
    yield _gauge("yolo_spool_bytes", "Bytes waiting in the spool", spool.pending_bytes)
    yield _gauge("yolo_spool_capacity_bytes", "Spool size limit", spool.max_bytes)
    yield _counter("yolo_spooled_records", "Records written to the spool",
                   records.spooled_total)
    yield _counter("yolo_replayed_records", "Spooled records replayed into the database",
                   records.replayed_total)


def _admission_families(admission: Admission) -> Iterator[Metric]:
    yield _gauge("yolo_admission_in_progress", "/detect requests admitted and in progress",
                 admission.in_progress)
    yield _gauge("yolo_admission_limit", "/detect requests that may be in progress at once",
                 admission.limit)
    yield _counter("yolo_admission_rejected", "/detect requests refused at capacity (503)",
                   admission.rejected_total)
