"""What the pool counts about itself: fault counters (for /readyz, the metrics and the
reliability script) and histograms of its jobs, exposed through :func:`families`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from service.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, PASSES_BUCKETS


@dataclass
class PoolStats:
    """Counters since start."""

    worker_deaths: int = 0
    restarts: int = 0
    retried_jobs: int = 0
    refused_images: int = 0
    last_death: str | None = field(default=None)


class PoolMetrics:
    """Time in the queue, batch size and inference time per batch of one model's pool
    (registry-less, labelled with the model: the pool's ``collect`` yields them)."""

    def __init__(self, model: str = "") -> None:
        self._histograms = (
            Histogram("yolo_queue_seconds", "Time a job waited in the pool queue before a "
                      "worker started it", ["model"], buckets=LATENCY_BUCKETS, registry=None),
            Histogram("yolo_batch_size", "Images per forward batch run by a worker",
                      ["model"], buckets=BATCH_BUCKETS, registry=None),
            Histogram("yolo_inference_seconds", "Worker-side time per forward batch",
                      ["model"], buckets=LATENCY_BUCKETS, registry=None),
            Histogram("yolo_passes", "Forward passes per image: 1, or the whole photo plus "
                      "its tiles", ["model"], buckets=PASSES_BUCKETS, registry=None))
        self._queue, self._batch_size, self._inference, self._passes = (
            h.labels(model) for h in self._histograms)

    def observe_queue(self, seconds: float) -> None:
        """A job waited ``seconds`` in the queue before a worker started it."""
        self._queue.observe(max(0.0, seconds))

    def observe_batch(self, size: int, inference_seconds: float,
                      passes: Sequence[int] = ()) -> None:
        """A worker ran one forward batch of ``size`` images in ``inference_seconds``,
        each image in ``passes`` forward passes (tiles)."""
        self._batch_size.observe(size)
        self._inference.observe(max(0.0, inference_seconds))
        for count in passes:
            self._passes.observe(count)

    def collect(self) -> Iterator[Metric]:
        for histogram in self._histograms:
            yield from histogram.collect()


def families(model: str, stats: PoolStats, snapshot: dict[str, Any],
             ready: bool) -> Iterator[Metric]:
    """One model's pool counters and gauges as Prometheus metric families."""
    def counter(name: str, documentation: str, value: float) -> Metric:
        family = CounterMetricFamily(name, documentation, labels=["model"])
        family.add_metric([model], value)
        return family

    def gauge(name: str, documentation: str, value: float) -> Metric:
        family = GaugeMetricFamily(name, documentation, labels=["model"])
        family.add_metric([model], value)
        return family

    yield counter("yolo_worker_deaths", "Worker processes that died or hung",
                  stats.worker_deaths)
    yield counter("yolo_worker_restarts", "Replacement workers started and warm",
                  stats.restarts)
    yield counter("yolo_retried_jobs", "Jobs retried because their worker died",
                  stats.retried_jobs)
    yield counter("yolo_refused_images", "Images refused for crashing two workers",
                  stats.refused_images)
    yield gauge("yolo_workers", "Worker processes running", snapshot["workers"])
    yield gauge("yolo_workers_busy", "Workers running a job", snapshot["busy"])
    yield gauge("yolo_queued_jobs", "Jobs waiting for a worker", snapshot["queued_jobs"])
    yield gauge("yolo_pool_ready", "1 when every worker is warm", float(ready))


def merged(parts: Iterable[Iterable[Metric]]) -> list[Metric]:
    """Families of the same name (one per model) joined into one, samples in order."""
    by_name: dict[str, Metric] = {}
    for families_of_one in parts:
        for family in families_of_one:
            joined = by_name.get(family.name)
            if joined is None:
                joined = by_name[family.name] = Metric(family.name, family.documentation,
                                                       family.type)
            joined.samples.extend(family.samples)
    return list(by_name.values())
