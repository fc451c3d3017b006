"""JSON API: detection, history, stats, stored images, health."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from uuid import UUID, uuid4

import asyncpg
from aiohttp import web

import db
import keys
from model.errors import ImageDecodeError, ImageTooLargeError
from pool import PoolUnavailable
from utils import params
from utils.imaging import annotate, sniff_content_type
from utils.uploads import read_uploads
from utils.web_errors import ApiError

RETRY_AFTER_S = "5"


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
    """POST /detect: run the model on each uploaded image and store the records."""
    config = request.app[keys.config_key]
    pool = request.app[keys.detector_pool_key]
    if not pool.ready:
        raise _not_ready(pool.error or "the detection workers are warming up")
    conf = params.unit_interval(request.query, "conf", config.workers.conf_thres)
    iou = params.unit_interval(request.query, "iou", config.workers.iou_thres)
    uploads = await read_uploads(request, max_bytes=config.server.max_upload_bytes,
                                 max_files=config.server.max_files)
    content_types = []
    for upload in uploads:
        content_type = sniff_content_type(upload.data)
        if content_type is None:
            raise ApiError(400, "invalid_image",
                           f"{upload.filename}: not a JPEG, PNG, BMP or WebP image")
        content_types.append(content_type)

    outcomes = await asyncio.gather(
        *(pool.detect(u.data, conf_thres=conf, iou_thres=iou) for u in uploads),
        return_exceptions=True)
    results = []
    for upload, outcome in zip(uploads, outcomes, strict=True):
        if isinstance(outcome, ImageTooLargeError):
            raise ApiError(413, "image_too_large", f"{upload.filename}: {outcome}")
        if isinstance(outcome, ImageDecodeError):
            raise ApiError(400, "invalid_image", f"{upload.filename}: {outcome}")
        if isinstance(outcome, PoolUnavailable):
            raise _not_ready(str(outcome))
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)

    now = datetime.now(timezone.utc)
    records = [db.Record(id=uuid4(), created_at=now, filename=u.filename, sha256=r.sha256,
                         width=r.width, height=r.height, model=r.model,
                         inference_ms=r.inference_ms, detections=r.detections)
               for u, r in zip(uploads, results, strict=True)]
    images = []
    if config.storage.store_images:
        images = [db.StoredImage(r.sha256, ct, u.data)
                  for u, r, ct in zip(uploads, results, content_types, strict=True)]
    await db.save_records(request.app[keys.db_key], records, images)
    if len(records) == 1:
        return web.json_response(records[0].to_json())
    return web.json_response({"results": [record.to_json() for record in records]})


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
    """GET /readyz: 200 once every worker is warm and the database answers, else 503."""
    pool = request.app[keys.detector_pool_key]
    checks: dict[str, str] = {"workers": pool.state}
    problems = []
    if not pool.ready:
        problems.append(pool.error or f"workers are {pool.state}")
    try:
        await db.ping(request.app[keys.db_key])
        checks["database"] = "ok"
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        checks["database"] = "unavailable"
        problems.append(f"database: {type(exc).__name__}: {exc}")
    if problems:
        message = "; ".join(problems)
        return web.json_response(
            {"status": "not_ready", "checks": checks,
             "error": {"code": "not_ready", "message": message}},
            status=503, headers={"Retry-After": RETRY_AFTER_S})
    return web.json_response({
        "status": "ready", "checks": checks, "model": pool.model_name,
        "workers": [{"pid": w.pid, "device": w.device, "threads": w.threads,
                     "warmup_ms": w.warmup_ms} for w in pool.workers],
    })
