"""JSON API: detection, history, stats, stored images, health, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from datetime import datetime, timezone
from typing import TypeVar
from uuid import UUID, uuid4

from aiohttp import web

import db
import keys
from model.errors import ImageDecodeError, ImageTooLargeError
from pool import DetectorPool, ImageKilledWorker, PoolUnavailable
from recorder import StorageUnavailable
from utils import params
from utils.admission import QueueFull
from utils.imaging import annotate, sniff_content_type
from utils.uploads import Upload, read_uploads
from utils.web_errors import ApiError
from worker import DetectResult

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_AFTER_S = "5"  # not ready: warming up, or a worker is being replaced
RETRY_AFTER_BUSY_S = "1"  # at capacity
DISCONNECT_POLL_S = 0.1  # how often a waiting request checks that its client is still there


def _not_ready(message: str) -> ApiError:
    return ApiError(503, "not_ready", message, {"Retry-After": RETRY_AFTER_S})


def _record_id(request: web.Request) -> UUID:
    try:
        return params.record_id(request.match_info["id"])
    except params.ParamError:
        raise ApiError(404, "not_found", f"no detection with id {request.match_info['id']!r}") \
            from None


# ---------------------------------------------------------------- detection

async def detect(request: web.Request) -> web.Response:
    """POST /detect: run the model on each uploaded image and store the records.

    At most ``max_workers * max_batch_size + max_queue`` requests are in progress at
    once; beyond that a request is refused at once (503, Retry-After) before its body is
    read. Reading and detection share one deadline (``server.request_timeout``: 408
    while reading, 504 after); a client that leaves while its images wait has them taken
    off the queue.
    The original images are written to the database while the model runs (and deleted
    again if the request fails); the response is sent only once the records are durable
    (database or spool). Its ``Server-Timing`` header gives the phases (``_Timing``).
    """
    app = request.app
    config = app[keys.config_key]
    pool = app[keys.detector_pool_key]
    if not pool.accepting:
        raise _not_ready(pool.error or "the detection workers are warming up")
    conf = params.unit_interval(request.query, "conf", config.workers.conf_thres)
    iou = params.unit_interval(request.query, "iou", config.workers.iou_thres)
    try:
        place = app[keys.admission_key].enter()
    except QueueFull as exc:
        raise ApiError(503, "overloaded", str(exc), {"Retry-After": RETRY_AFTER_BUSY_S}) from None
    with place:
        timing = _Timing()
        deadline = asyncio.get_running_loop().time() + config.server.request_timeout
        uploads = await _receive(request, deadline)
        timing.lap("upload")
        content_types = [_content_type(upload) for upload in uploads]
        images = []
        if config.storage.store_images:
            images = [db.StoredImage(u.sha256, ct, u.data)
                      for u, ct in zip(uploads, content_types, strict=True)]
        writer = app[keys.records_key]
        async with writer.images_ahead(images) as ahead:  # written while the model runs
            results = await _run_model(request, uploads, conf, iou, deadline)
            timing.lap("detect")
            timing.add("decode", max(r.decode_ms for r in results))
            timing.add("infer", max(r.inference_ms for r in results))
            now = datetime.now(timezone.utc)
            records = [db.Record(id=uuid4(), created_at=now, filename=u.filename,
                                 sha256=u.sha256, width=r.width, height=r.height,
                                 model=r.model, inference_ms=r.inference_ms,
                                 detections=r.detections)
                       for u, r in zip(uploads, results, strict=True)]
            await ahead.settled()
            try:
                await writer.save(records, images)
            except StorageUnavailable as exc:
                raise ApiError(503, "storage_unavailable", str(exc),
                               {"Retry-After": RETRY_AFTER_S}) from None
        timing.lap("store")
    headers = {"Server-Timing": timing.header()}
    if len(records) == 1:
        return web.json_response(records[0].to_json(), headers=headers)
    return web.json_response({"results": [record.to_json() for record in records]},
                             headers=headers)


async def _receive(request: web.Request, deadline: float) -> list[Upload]:
    """The uploaded images (408 past the deadline)."""
    server = request.app[keys.config_key].server
    try:
        async with asyncio.timeout_at(deadline):
            return await read_uploads(request, max_bytes=server.max_upload_bytes,
                                      max_files=server.max_files)
    except TimeoutError:
        raise ApiError(408, "request_timeout", "the upload was not received within "
                       f"{server.request_timeout:g}s") from None


async def _run_model(request: web.Request, uploads: Sequence[Upload], conf: float | None,
                     iou: float | None, deadline: float) -> list[DetectResult]:
    """Every image through the pool (504 past the deadline; 499 if the client leaves)."""
    timeout = request.app[keys.config_key].server.request_timeout
    try:
        async with asyncio.timeout_at(deadline):
            return await _unless_client_leaves(
                request, _detect_all(request.app[keys.detector_pool_key], uploads, conf, iou))
    except TimeoutError:
        raise ApiError(504, "timeout", f"no result within {timeout:g}s: the service is busy",
                       {"Retry-After": RETRY_AFTER_BUSY_S}) from None


class _Timing:
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


def _content_type(upload: Upload) -> str:
    content_type = sniff_content_type(upload.data)
    if content_type is None:
        raise ApiError(400, "invalid_image",
                       f"{upload.filename}: not a JPEG, PNG, BMP or WebP image")
    return content_type


async def _detect_all(pool: DetectorPool, uploads: Sequence[Upload], conf: float | None,
                      iou: float | None) -> list[DetectResult]:
    """Every image in the pool at once; the first failure (in upload order) is raised."""
    outcomes = await asyncio.gather(
        *(pool.detect(u.data, conf_thres=conf, iou_thres=iou) for u in uploads),
        return_exceptions=True)
    results = []
    for upload, outcome in zip(uploads, outcomes, strict=True):
        if isinstance(outcome, ImageTooLargeError):
            raise ApiError(413, "image_too_large", f"{upload.filename}: {outcome}")
        if isinstance(outcome, ImageDecodeError):
            raise ApiError(400, "invalid_image", f"{upload.filename}: {outcome}")
        if isinstance(outcome, ImageKilledWorker):
            log.error("refused %r (sha256 %s): it crashed the detector twice",
                      upload.filename, outcome.sha256)
            raise ApiError(422, "image_crashed_worker", f"{upload.filename}: {outcome}")
        if isinstance(outcome, PoolUnavailable):
            raise _not_ready(str(outcome))
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _unless_client_leaves(request: web.Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (dropping queued jobs) if the client disconnects."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if _client_gone(request):
                log.info("client of %s %s left; its queued work is dropped",
                         request.method, request.path)
                raise ApiError(499, "client_closed_request", "the client closed the connection")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


# ---------------------------------------------------------------- history

async def list_detections(request: web.Request) -> web.Response:
    """GET /api/detections: filtered history, newest first, keyset-paginated."""
    query = request.query
    filters = params.history_filter(query)
    limit = params.limit(query, maximum=db.MAX_PAGE_SIZE)
    page = await db.list_detections(request.app[keys.db_key], filters, limit=limit,
                                    cursor=params.cursor(query))
    next_cursor = page.next_cursor.encode() if page.next_cursor else None
    next_url = str(request.rel_url.update_query(cursor=next_cursor)) if next_cursor else None
    return web.json_response({
        "items": [record.to_json() for record in page.items],
        "limit": limit,
        "next_cursor": next_cursor,
        "next": next_url,
    })


async def get_detection(request: web.Request) -> web.Response:
    """GET /api/detections/{id}"""
    try:
        record = await db.get_detection(request.app[keys.db_key], _record_id(request))
    except db.RecordNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return web.json_response(record.to_json())


async def stats(request: web.Request) -> web.Response:
    """GET /api/stats: counts per label and per day, optionally within since/until."""
    since = params.timestamp(request.query, "since")
    until = params.timestamp(request.query, "until", end_of_day=True)
    result = await db.stats(request.app[keys.db_key], since=since, until=until)
    return web.json_response(result.to_json())


async def detection_image(request: web.Request) -> web.Response:
    """GET /detections/{id}/image: the stored original, or ?annotated=1 with boxes drawn."""
    annotated = params.flag(request.query, "annotated")
    try:
        record, image = await db.get_image(request.app[keys.db_key], _record_id(request))
    except db.RecordNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    headers = {"Cache-Control": "private, max-age=86400"}  # records never change
    if not annotated:
        return web.Response(body=image.data, content_type=image.content_type, headers=headers)
    body = await asyncio.to_thread(annotate, image.data, record.detections)
    return web.Response(body=body, content_type="image/jpeg", headers=headers)


# ---------------------------------------------------------------- health

async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 once every worker is warm and records can be made durable.

    With the database away the service still detects (records go to the spool): the
    answer is 200 with ``"status": "degraded"``. 503 while workers warm up or one is
    being replaced, or when neither the database nor the spool can take records. The
    body shows the queue, fault counters and the spool depth either way.
    """
    pool = request.app[keys.detector_pool_key]
    writer = request.app[keys.records_key]
    checks: dict[str, str] = {"workers": pool.state}
    problems = []
    degraded = False
    if not pool.ready:
        problems.append(pool.error or f"workers are {pool.state}")
    try:
        await db.ping(request.app[keys.db_key])
        checks["database"] = "ok"
    except db.UNAVAILABLE_ERRORS as exc:
        checks["database"] = "unavailable"
        degraded = True
        message = f"database: {type(exc).__name__}: {exc}"
        if writer.spool.pending_bytes >= writer.spool.max_bytes:
            problems.append(f"{message}; the spool is full")
    body = {"checks": checks, "pool": pool.snapshot(),
            "admission": request.app[keys.admission_key].snapshot(), "spool": writer.snapshot()}
    if problems:
        return web.json_response(
            {"status": "not_ready", **body,
             "error": {"code": "not_ready", "message": "; ".join(problems)}},
            status=503, headers={"Retry-After": RETRY_AFTER_S})
    return web.json_response({
        "status": "degraded" if degraded else "ready", **body, "model": pool.model_name,
        "workers": [{"pid": w.pid, "device": w.device, "backend": w.backend,
                     "threads": w.threads, "lone_threads": w.lone_threads,
                     "warmup_ms": w.warmup_ms} for w in pool.workers],
        "batching": {"max_batch_size": pool.config.max_batch_size,
                     "max_queue_delay_ms": pool.config.max_queue_delay_ms},
    })


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format (``utils.metrics``)."""
    return request.app[keys.metrics_key].response()
