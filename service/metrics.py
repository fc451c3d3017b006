"""Prometheus metrics for ``GET /metrics`` (text exposition format).

:class:`ServiceMetrics` is one :class:`~prometheus_client.CollectorRegistry` per app
(never the global default one: tests build many apps in one process). It holds the HTTP
metrics (recorded by ``service.web.middlewares.metrics_middleware``) and, at each
scrape, reads every component that the app has started through the small ``collect()``
each offers (the pool, the record writer, the admission queue, the database's health): this module knows none
of their insides.

Label values stay bounded: ``endpoint`` is the matched route's canonical path
(``/detections/{id}``) or ``unmatched``; ``method`` is a standard HTTP method or
``other``; ``status`` is the response status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import Metric

log = logging.getLogger(__name__)

# Seconds, for CPU inference and the requests around it: 1 ms .. 30 s.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
PASSES_BUCKETS = (1, 2, 3, 5, 7, 9, 13, 17, 25, 33)  # the whole photo plus its tiles
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Collectable(Protocol):
    def collect(self) -> Iterable[Metric]: ...


@dataclass(frozen=True)
class MetricSources:
    """What the scrape-time collector reads; each is None until its resource exists.
    The field names say what each is in the log of a failed read."""

    pool: Collectable | None = None
    records: Collectable | None = None
    admission: Collectable | None = None
    database: Collectable | None = None
    events: Collectable | None = None


_WHAT = {"pool": "the model servers", "records": "the spool", "admission": "the uploads received",
         "database": "the database's health", "events": "the event outbox"}


class ServiceMetrics:
    """The app's registry: HTTP metrics plus the figures of its components."""

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
        self.registry.register(_ComponentCollector(sources))

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.duration.labels(endpoint, method).observe(seconds)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text exposition format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


class _ComponentCollector:
    """Reads each started component when scraped; never raises."""

    def __init__(self, sources: Callable[[], MetricSources]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        try:
            sources = self._sources()
        except Exception:  # a scrape must not fail for a missing figure
            log.warning("metrics: cannot read the app's resources", exc_info=True)
            return
        for part in fields(sources):
            source = getattr(sources, part.name)
            if source is None:
                continue
            try:
                families = list(source.collect())  # all of a part, or none of it
            except Exception:  # as above
                log.warning("metrics: cannot read %s", _WHAT.get(part.name, part.name),
                            exc_info=True)
                continue
            yield from families
