"""The bounded queue in front of the workers: how many /detect requests may be in progress.

Two stages, each with a hard limit:

- *receiving* (``receive(size)``): at most ``receive_limit`` request bodies are being read
  at once, of at most ``receive_bytes`` bytes together (each counted at its declared
  length, or the most an upload may be). A body holds no model place while it arrives, so
  slow clients cannot take the workers' capacity; these limits bound the memory that
  bodies in transit take.
- *in progress* (``enter()``): at most ``limit`` requests (a full batch per worker plus
  ``workers.max_queue`` waiting) are admitted to the model at once.

A request that finds every place in progress taken is refused at once, before its body is
read (``receive()`` checks both), so memory stays bounded whatever the offered load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class QueueFull(RuntimeError):
    """Every place is taken: the client should try again shortly (503, Retry-After)."""


class Admission:
    """Counters of admitted requests with hard limits; ``receive()`` and ``enter()``
    return a place."""

    def __init__(self, limit: int, receive_limit: int | None = None,
                 receive_bytes: int | None = None) -> None:
        if limit < 1:
            raise ValueError("the admission limit must be at least 1")
        if receive_limit is not None and receive_limit < 1:
            raise ValueError("the receive limit must be at least 1")
        self.limit = limit
        self.receive_limit = receive_limit if receive_limit is not None else 4 * limit
        self.receive_bytes = receive_bytes
        self.in_progress = 0
        self.receiving = 0
        self.receiving_bytes = 0
        self.received_bytes_total = 0  # the sizes of every body received, declared
        self.admitted_total = 0
        self.rejected_total = 0

    def _full(self) -> QueueFull:
        self.rejected_total += 1
        return QueueFull(f"the service is at capacity ({self.limit} requests in progress); "
                         "try again shortly")

    def receive(self, size: int = 0) -> Place:
        """A place to read a request body of at most ``size`` bytes in (``with place:``);
        raise QueueFull if every place in progress or every receiving place is taken, or
        the body would take the bodies in transit past ``receive_bytes``."""
        if self.in_progress >= self.limit:
            raise self._full()
        if self.receiving >= self.receive_limit:
            self.rejected_total += 1
            raise QueueFull(f"the service is receiving {self.receive_limit} uploads already; "
                            "try again shortly")
        if self.receive_bytes is not None and self.receiving \
                and self.receiving_bytes + size > self.receive_bytes:
            self.rejected_total += 1
            raise QueueFull(f"the service is receiving {self.receiving_bytes / (1 << 20):.0f} "
                            "MiB of uploads already; try again shortly")
        self.receiving += 1
        self.receiving_bytes += size
        self.received_bytes_total += size
        return Place(lambda: self._received(size))

    def _received(self, size: int) -> None:
        self.receiving -= 1
        self.receiving_bytes -= size

    @property
    def idle(self) -> bool:
        """No body being received and no request in progress."""
        return self.receiving == 0 and self.in_progress == 0

    def enter(self) -> Place:
        """Take a place (give it back with ``with place:``); raise QueueFull if none."""
        if self.in_progress >= self.limit:
            raise self._full()
        self.in_progress += 1
        self.admitted_total += 1
        return Place(self._left)

    def _left(self) -> None:
        self.in_progress -= 1

    def snapshot(self) -> dict[str, Any]:
        return {"in_progress": self.in_progress, "limit": self.limit,
                "receiving": self.receiving, "receive_limit": self.receive_limit,
                "receiving_bytes": self.receiving_bytes, "receive_bytes": self.receive_bytes,
                "admitted_total": self.admitted_total, "rejected_total": self.rejected_total}

    def collect(self) -> Iterator[Metric]:
        """Its figures as Prometheus metric families (read at each scrape)."""
        yield GaugeMetricFamily("yolo_admission_in_progress",
                                "/detect requests admitted and in progress",
                                value=self.in_progress)
        yield GaugeMetricFamily("yolo_admission_limit",
                                "/detect requests that may be in progress at once",
                                value=self.limit)
        yield GaugeMetricFamily("yolo_admission_receiving",
                                "/detect request bodies being received (no model place yet)",
                                value=self.receiving)
        yield CounterMetricFamily("yolo_admission_rejected",
                                  "/detect requests refused at capacity (503)",
                                  value=self.rejected_total)


class Place:
    """One admitted request; leaving the ``with`` block gives the place back (once)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._release is not None:
            self._release()
            self._release = None
