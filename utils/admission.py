"""Bounded places in front of the workers, counted in images, and the bodies in transit.

Two limits, each hard:

- :class:`Admission` (one per served model): at most ``limit`` images are in progress
  (``enter(count)``: a request takes one place per image). A request that finds the
  places taken is refused at once (``QueueFull``: 503, Retry-After); ``check()`` refuses
  it before its body is read. A request of more images than the whole limit is admitted
  only while nothing else is in progress, so it cannot wait for ever.
- :class:`Receiving` (one per app for callers with credentials, one for anonymous ones):
  at most ``limit`` request bodies are being read at once, of at most ``max_bytes``
  together. A body holds no model place while it arrives, so slow clients cannot take
  the workers' capacity; these limits bound the memory that bodies in transit take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class QueueFull(RuntimeError):
    """Every place is taken: the client should try again shortly (503, Retry-After)."""


class Admission:
    """Images in progress with a hard limit; ``enter(count)`` returns their places."""

    def __init__(self, limit: int, *, name: str = "") -> None:
        if limit < 1:
            raise ValueError("the admission limit must be at least 1")
        self.limit = limit
        self.name = name  # the model's, for messages and metric labels
        self.in_progress = 0
        self.admitted_total = 0
        self.rejected_total = 0

    def _full(self) -> QueueFull:
        self.rejected_total += 1
        whose = f"model {self.name}" if self.name else "the service"
        return QueueFull(f"{whose} is at capacity ({self.in_progress} of {self.limit} images "
                         "in progress); try again shortly")

    def check(self) -> None:
        """Raise QueueFull if every place is taken (before a body is read)."""
        if self.in_progress >= self.limit:
            raise self._full()

    def enter(self, count: int = 1) -> Place:
        """Take ``count`` places (give them back with ``with place:``); QueueFull if there
        are not so many free (a request larger than the limit: unless nothing runs)."""
        if self.in_progress + count > self.limit and self.in_progress > 0:
            raise self._full()
        self.in_progress += count
        self.admitted_total += 1
        return Place(lambda: self._left(count))

    def _left(self, count: int) -> None:
        self.in_progress -= count

    def snapshot(self) -> dict[str, Any]:
        return {"in_progress": self.in_progress, "limit": self.limit,
                "admitted_total": self.admitted_total, "rejected_total": self.rejected_total}

    def collect(self) -> Iterator[Metric]:
        """Its figures as Prometheus metric families, labelled by model."""
        labels = ["model"]
        families = (
            (GaugeMetricFamily, "yolo_admission_in_progress",
             "images admitted to a model and in progress", self.in_progress),
            (GaugeMetricFamily, "yolo_admission_limit",
             "images that may be in progress at once for a model", self.limit),
            (CounterMetricFamily, "yolo_admission_rejected",
             "requests refused at a model's capacity (503)", self.rejected_total))
        for kind, metric, text, value in families:
            family = kind(metric, text, labels=labels)
            family.add_metric([self.name], value)
            yield family


class Receiving:
    """Request bodies being read, with hard limits; ``receive(size)`` returns a place.

    At most ``limit`` bodies at once, of at most ``max_bytes`` together (each counted at
    its declared length, or the most an upload may be; None: no byte limit)."""

    def __init__(self, limit: int, max_bytes: int | None = None, *, name: str = "") -> None:
        if limit < 1:
            raise ValueError("the receive limit must be at least 1")
        self.limit = limit
        self.max_bytes = max_bytes
        self.name = name  # "anonymous" for the bodies of callers without credentials
        self.receiving = 0
        self.receiving_bytes = 0
        self.received_bytes_total = 0  # the sizes of every body received, declared
        self.rejected_total = 0

    def receive(self, size: int = 0) -> Place:
        """A place to read a body of at most ``size`` bytes in (``with place:``); QueueFull
        if every place is taken, or the body would take those in transit past
        ``max_bytes``."""
        if self.receiving >= self.limit:
            self.rejected_total += 1
            raise QueueFull(f"the service is receiving {self.limit} uploads already; "
                            "try again shortly")
        if self.max_bytes is not None and self.receiving \
                and self.receiving_bytes + size > self.max_bytes:
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
        """No body being received."""
        return self.receiving == 0

    def snapshot(self) -> dict[str, Any]:
        return {"receiving": self.receiving, "receive_limit": self.limit,
                "receiving_bytes": self.receiving_bytes, "receive_bytes": self.max_bytes,
                "receive_rejected_total": self.rejected_total}

    def collect(self) -> Iterator[Metric]:
        suffix = f"_{self.name}" if self.name else ""
        whose = f" ({self.name} callers)" if self.name else ""
        yield GaugeMetricFamily(f"yolo_admission_receiving{suffix}",
                                f"request bodies being received{whose} (no model place yet)",
                                value=self.receiving)
        yield GaugeMetricFamily(f"yolo_admission_receiving_bytes{suffix}",
                                f"declared bytes of the bodies being received{whose}",
                                value=self.receiving_bytes)


class Place:
    """Admitted work; leaving the ``with`` block gives the place back (once)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._release is not None:
            self._release()
            self._release = None
