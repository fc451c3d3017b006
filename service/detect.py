"""The detect work of every API, without HTTP: images in, durable records out.

:func:`detect_images` takes uploaded images (already read and hashed) and, in order:
checks each is, by its bytes, an image type the engine decodes; takes the model's places
(one per image); starts writing the originals to the database
(:meth:`RecordWriter.images_ahead`) while every image runs through the model server at
once (:meth:`~service.serving.server.ModelServer.detect`); turns the results into
records (model name and version); and returns once the records are durable (database
or spool). Whatever goes wrong is raised as the domain
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
from model.errors import UnsupportedImageError
from model.formats import NOT_AN_IMAGE, sniff_content_type
from service.recorder import RecordWriter
from service.serving.options import DetectOptions
from service.serving.server import Detected, ModelServer

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
    image when there are several), ``store`` (made durable); and ``passes``, the forward
    passes its images took (more than one per image with tiles)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._phases: list[tuple[str, float]] = []
        self._counts: list[tuple[str, int]] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.add(name, (now - self._last) * 1000.0)
        self._last = now

    def add(self, name: str, ms: float) -> None:
        self._phases.append((name, ms))

    def count(self, name: str, value: int) -> None:
        """A figure that is no duration (``passes``: the forward passes of the request's
        images, tiles included), given as the entry's description."""
        self._counts.append((name, value))

    def header(self) -> str:
        return ", ".join([*(f"{name};dur={ms:.2f}" for name, ms in self._phases),
                          *(f'{name};desc="{value}"' for name, value in self._counts)])


async def detect_images(server: ModelServer, writer: RecordWriter, uploads: Sequence[Upload],
                        *, options: DetectOptions, store_images: bool, deadline: float,
                        client_gone: Callable[[], bool], timing: Timing | None = None,
                        api: str = "native", source: str | None = None) -> list[db.Record]:
    """Detect objects in every upload with ``server``'s model and return their records
    (marked with the model's name and version, the ``api`` the request came through and
    the image's ``source``), durable.

    The request holds one of the model's places per image until its records are durable
    (``server.admit``: 503 at capacity). ``deadline`` is on the running loop's clock
    (``loop.time()``); past it, :class:`DetectTimeout`. ``client_gone`` is polled while
    the images wait: when it says so, their jobs are taken off the queue and
    :class:`ClientGone` is raised. The originals are stored with the records when
    ``store_images`` (and deleted again if the request fails).
    """
    timing = timing or Timing()
    content_types = [_content_type(upload) for upload in uploads]
    images = []
    if store_images:
        images = [db.StoredImage(u.sha256, ct, u.data)
                  for u, ct in zip(uploads, content_types, strict=True)]
    with server.admit(len(uploads)):
        async with writer.images_ahead(images) as ahead:  # written while the model runs
            detected = await _run_model(server, uploads, options, deadline, client_gone)
            results = detected.results
            timing.lap("detect")
            timing.add("decode", max(r.decode_ms for r in results))
            timing.add("infer", max(r.inference_ms for r in results))
            timing.count("passes", sum(r.passes for r in results))
            now = datetime.now(timezone.utc)
            records = [db.Record(id=uuid4(), created_at=now, filename=u.filename,
                                 sha256=u.sha256, width=r.width, height=r.height,
                                 model=detected.model, model_version=detected.version,
                                 inference_ms=r.inference_ms, detections=r.detections,
                                 api=api, source=source, passes=r.passes)
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


async def _run_model(server: ModelServer, uploads: Sequence[Upload], options: DetectOptions,
                     deadline: float, client_gone: Callable[[], bool]) -> Detected:
    try:
        async with asyncio.timeout_at(deadline):
            return await _unless_client_leaves(client_gone, server.detect(
                [u.data for u in uploads], options, names=[u.filename for u in uploads]))
    except TimeoutError:
        raise DetectTimeout("no result within the request's time limit "
                            "(server.request_timeout): the service is busy") from None


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
