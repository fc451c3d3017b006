"""The work of ``POST /detect``, without HTTP: images in, durable records out.

:func:`detect_images` takes uploaded images (already read and hashed) and, in order:
checks each is, by its bytes, an image type the engine decodes; starts writing the
originals to the database (:meth:`RecordWriter.images_ahead`) while every image runs
through the worker pool at once; turns the results into records; and returns once the
records are durable (database or spool). Whatever goes wrong is raised as the domain
error that says so (``model.errors.ImageError``, ``PoolUnavailable``,
``ImageKilledWorker``, ``StorageUnavailable``, :class:`DetectTimeout`,
:class:`ClientGone`); the web layer's error table turns it into a status. Every handler
that detects (ours, and other APIs' routes) calls this.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar
from uuid import uuid4

import db
from model.errors import ImageError, UnsupportedImageError
from model.formats import NOT_AN_IMAGE, sniff_content_type
from service.recorder import RecordWriter
from service.workers.pool import DetectorPool, ImageKilledWorker
from service.workers.protocol import DetectResult

log = logging.getLogger(__name__)
T = TypeVar("T")

DISCONNECT_POLL_S = 0.1  # how often a waiting request checks that its client is still there


class DetectTimeout(Exception):
    """No result before the request's deadline: the service is busy."""


class ClientGone(Exception):
    """The client closed the connection while its images waited; their jobs are dropped."""


@dataclass(frozen=True)
class Upload:
    """One uploaded image: its (cleaned) file name, bytes and their SHA-256 (hex)."""

    filename: str
    data: bytes = field(repr=False)
    sha256: str


class Timing:
    """Phases of one request for its ``Server-Timing`` header (W3C Server Timing):
    ``upload`` (reading the body), ``detect`` (in the pool: queue, transfer and the
    worker), ``decode`` and ``infer`` (the worker's part of ``detect``; the slowest
    image when there are several), ``store`` (made durable)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._phases: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.add(name, (now - self._last) * 1000.0)
        self._last = now

    def add(self, name: str, ms: float) -> None:
        self._phases.append((name, ms))

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self._phases)


@dataclass(frozen=True)
class DetectOptions:
    """What a request asks of the model; None: the model's configured value."""

    conf_thres: float | None = None
    iou_thres: float | None = None
    agnostic: bool | None = None
    max_det: int | None = None


async def detect_images(pool: DetectorPool, writer: RecordWriter, uploads: Sequence[Upload], *,
                        options: DetectOptions, store_images: bool, deadline: float,
                        client_gone: Callable[[], bool], timing: Timing | None = None,
                        api: str = "native", source: str | None = None) -> list[db.Record]:
    """Detect objects in every upload with ``pool``'s model and return their records
    (marked with the model's name, the ``api`` the request came through and the image's
    ``source``), durable.

    ``deadline`` is on the running loop's clock (``loop.time()``); past it,
    :class:`DetectTimeout`. ``client_gone`` is polled while the images wait: when it
    says so, their jobs are taken off the queue and :class:`ClientGone` is raised.
    The originals are stored with the records when ``store_images`` (and deleted again
    if the request fails).
    """
    timing = timing or Timing()
    content_types = [_content_type(upload) for upload in uploads]
    images = []
    if store_images:
        images = [db.StoredImage(u.sha256, ct, u.data)
                  for u, ct in zip(uploads, content_types, strict=True)]
    async with writer.images_ahead(images) as ahead:  # written while the model runs
        results = await _run_model(pool, uploads, options, deadline, client_gone)
        timing.lap("detect")
        timing.add("decode", max(r.decode_ms for r in results))
        timing.add("infer", max(r.inference_ms for r in results))
        now = datetime.now(timezone.utc)
        records = [db.Record(id=uuid4(), created_at=now, filename=u.filename, sha256=u.sha256,
                             width=r.width, height=r.height, model=pool.model.name,
                             inference_ms=r.inference_ms, detections=r.detections, api=api,
                             source=source)
                   for u, r in zip(uploads, results, strict=True)]
        await ahead.settled()
        await writer.save(records, images)
    timing.lap("store")
    return records


def _content_type(upload: Upload) -> str:
    content_type = sniff_content_type(upload.data)
    if content_type is None:
        raise UnsupportedImageError(f"{upload.filename}: {NOT_AN_IMAGE}")
    return content_type


async def _run_model(pool: DetectorPool, uploads: Sequence[Upload], options: DetectOptions,
                     deadline: float, client_gone: Callable[[], bool]) -> list[DetectResult]:
    try:
        async with asyncio.timeout_at(deadline):
            return await _unless_client_leaves(client_gone, _detect_all(pool, uploads, options))
    except TimeoutError:
        raise DetectTimeout("no result within the request's time limit "
                            "(server.request_timeout): the service is busy") from None


async def _detect_all(pool: DetectorPool, uploads: Sequence[Upload],
                      options: DetectOptions) -> list[DetectResult]:
    """Every image in the pool at once; the first failure (in upload order) is raised,
    its message prefixed with the file name."""
    outcomes = await asyncio.gather(
        *(pool.detect(u.data, conf_thres=options.conf_thres, iou_thres=options.iou_thres,
                      agnostic=options.agnostic, max_det=options.max_det) for u in uploads),
        return_exceptions=True)
    for upload, outcome in zip(uploads, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if isinstance(outcome, ImageKilledWorker):
                log.error("refused %r (sha256 %s): it crashed the detector twice",
                          upload.filename, outcome.sha256)
            if isinstance(outcome, ImageError | ImageKilledWorker):  # about this file
                outcome.args = (f"{upload.filename}: {outcome}",)
            raise outcome
    return list(outcomes)  # type: ignore[arg-type]


async def _unless_client_leaves(client_gone: Callable[[], bool], work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (dropping queued jobs) if the client disconnects."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if client_gone():
                log.info("a client left; its queued work is dropped")
                raise ClientGone("the client closed the connection")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
