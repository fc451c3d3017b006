"""The bounded queue in front of the workers: how many /detect requests may be in progress.

At most ``limit`` requests (a full batch per worker plus ``workers.max_queue`` waiting)
are admitted at once; the next one is refused at once, before its body is read, so memory
stays bounded (about ``limit`` x ``server.max_upload_mb``) whatever the offered load.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class QueueFull(RuntimeError):
    """Every place is taken: the client should try again shortly (503, Retry-After)."""


class Admission:
    """A counter of admitted requests with a hard limit; ``enter()`` returns a place."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the admission limit must be at least 1")
        self.limit = limit
        self.in_progress = 0
        self.admitted_total = 0
        self.rejected_total = 0

    def enter(self) -> Place:
        """Take a place (give it back with ``with place:``); raise QueueFull if none."""
        if self.in_progress >= self.limit:
            self.rejected_total += 1
            raise QueueFull(f"the service is at capacity ({self.limit} requests in progress); "
                            "try again shortly")
        self.in_progress += 1
        self.admitted_total += 1
        return Place(self)

    def snapshot(self) -> dict[str, Any]:
        return {"in_progress": self.in_progress, "limit": self.limit,
                "admitted_total": self.admitted_total, "rejected_total": self.rejected_total}

    def collect(self) -> Iterator[Metric]:
        """Its figures as Prometheus metric families (read at each scrape)."""
        yield GaugeMetricFamily("yolo_admission_in_progress",
                                "/detect requests admitted and in progress",
                                value=self.in_progress)
        yield GaugeMetricFamily("yolo_admission_limit",
                                "/detect requests that may be in progress at once",
                                value=self.limit)
        yield CounterMetricFamily("yolo_admission_rejected",
                                  "/detect requests refused at capacity (503)",
                                  value=self.rejected_total)


class Place:
    """One admitted request; leaving the ``with`` block gives the place back (once)."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._admission is not None:
            self._admission.in_progress -= 1
            self._admission = None
