"""What the pool counts about itself: fault counters (for /readyz, the metrics and the
reliability script) and histograms of its jobs, exposed through :func:`families`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from service.metrics import BATCH_BUCKETS, LATENCY_BUCKETS


@dataclass
class PoolStats:
    """Counters since start."""

    worker_deaths: int = 0
    restarts: int = 0
    retried_jobs: int = 0
    refused_images: int = 0
    last_death: str | None = field(default=None)


class PoolMetrics:
    """Time in the queue, batch size and inference time per batch (registry-less: the
    pool's ``collect`` yields them)."""

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
        for histogram in (self._queue, self._batch_size, self._inference):
            yield from histogram.collect()


def families(stats: PoolStats, snapshot: dict[str, Any], ready: bool) -> Iterator[Metric]:
    """The pool's counters and gauges as Prometheus metric families."""
    yield CounterMetricFamily("yolo_worker_deaths", "Worker processes that died or hung",
                              value=stats.worker_deaths)
    yield CounterMetricFamily("yolo_worker_restarts", "Replacement workers started and warm",
                              value=stats.restarts)
    yield CounterMetricFamily("yolo_retried_jobs", "Jobs retried because their worker died",
                              value=stats.retried_jobs)
    yield CounterMetricFamily("yolo_refused_images", "Images refused for crashing two workers",
                              value=stats.refused_images)
    yield GaugeMetricFamily("yolo_workers", "Worker processes running",
                            value=snapshot["workers"])
    yield GaugeMetricFamily("yolo_workers_busy", "Workers running a job", value=snapshot["busy"])
    yield GaugeMetricFamily("yolo_queued_jobs", "Jobs waiting for a worker",
                            value=snapshot["queued_jobs"])
    yield GaugeMetricFamily("yolo_pool_ready", "1 when every worker is warm", value=float(ready))
