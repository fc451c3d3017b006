"""JSON API: detection, history, stats, stored images, health, metrics."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from uuid import UUID

from aiohttp import web
from multidict import MultiDictProxy

import db
from service import review
from service.detect import DetectOptions, Timing, Upload, detect_images
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.renditions import SIZES
from service.web import keys, params
from service.web.labels import check_label
from service.web.errors import RETRY_AFTER_S, ApiError
from service.web.uploads import paced, read_form
from service.workers.pool import PoolUnavailable

log = logging.getLogger(__name__)

MAX_DET = 10_000  # the most detections per image a request may ask for


def _record_id(request: web.Request) -> UUID:
    try:
        return params.record_id(request.match_info["id"])
    except params.ParamError:
        raise ApiError(404, "not_found", f"no detection with id {request.match_info['id']!r}") \
            from None


# ---------------------------------------------------------------- detection

async def detect(request: web.Request) -> web.Response:
    """POST /detect: run the model on each uploaded image and store the records.

    The body is read first, holding no model place (``admission.receive()``: at most
    ``server.max_uploads`` at once), and must keep up ``server.upload_min_rate_kb`` after
    ``server.upload_grace`` seconds (else 408), so slow clients cannot take the workers'
    capacity. Then at most ``max_workers * max_batch_size + max_queue`` requests are in
    progress at once; beyond that a request is refused at once (503, Retry-After), before
    its body is read when it arrives at capacity. Reading and detection share one
    deadline (``server.request_timeout``: 408 while reading, 504 after); a client that
    leaves while its images wait has them taken off the queue. The work itself is
    :func:`service.detect.detect_images`; the response is sent only once the records are
    durable. Its ``Server-Timing`` header gives the phases
    (:class:`service.detect.Timing`).
    """
    app = request.app
    config = app[keys.config_key]
    query = request.query
    pool = app[keys.models_key].get(params.text(query, "model"))
    if not pool.accepting:
        raise PoolUnavailable(pool.error or f"the workers of model {pool.model.name} are "
                                            "warming up")
    options = DetectOptions(
        conf_thres=params.unit_interval(query, "conf", None),
        iou_thres=params.unit_interval(query, "iou", None),
        agnostic=params.optional_flag(query, "agnostic", pool.model.agnostic_nms),
        max_det=params.positive_int(query, "max_det", pool.model.max_det, MAX_DET))
    admission = app[keys.admission_key]
    timing = Timing()
    deadline = asyncio.get_running_loop().time() + config.server.request_timeout
    with admission.receive():
        uploads = await receive_uploads(request, deadline)
    timing.lap("upload")
    with admission.enter():
        records = await detect_images(
            pool, app[keys.records_key], uploads, options=options,
            store_images=config.storage.store_images, deadline=deadline,
            client_gone=lambda: client_gone(request), timing=timing)
    headers = {"Server-Timing": timing.header()}
    if len(records) == 1:
        return web.json_response(records[0].to_json(), headers=headers)
    return web.json_response({"results": [record.to_json() for record in records]},
                             headers=headers)


async def receive_uploads(request: web.Request, deadline: float, *,
                          max_files: int | None = None) -> list[Upload]:
    """The uploaded images (408 past the deadline or too slow)."""
    uploads, _ = await receive_form(request, deadline, max_files=max_files)
    return uploads


async def receive_form(request: web.Request, deadline: float, *,
                       max_files: int | None = None) -> tuple[list[Upload], dict[str, str]]:
    """The uploaded images and the form's short text fields (408 past the deadline, or
    slower than ``server.upload_min_rate_kb`` after ``server.upload_grace``)."""
    server = request.app[keys.config_key].server
    async with paced(request, grace=server.upload_grace, min_rate=server.upload_min_rate,
                     deadline=deadline):
        return await read_form(request, max_bytes=server.max_upload_bytes,
                               max_files=max_files or server.max_files)


async def receive_post(request: web.Request) -> MultiDictProxy[str | web.FileField]:
    """``request.post()`` (a small form: sign-in, DeepStack's list), paced as uploads are
    and bounded by ``server.request_timeout``; ``client_max_fields`` bounds its parts."""
    server = request.app[keys.config_key].server
    deadline = asyncio.get_running_loop().time() + server.request_timeout
    async with paced(request, grace=server.upload_grace, min_rate=server.upload_min_rate,
                     deadline=deadline):
        return await request.post()


def client_gone(request: web.Request) -> bool:
    """The client has closed the connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


# ---------------------------------------------------------------- history

async def list_detections(request: web.Request) -> web.Response:
    """GET /api/detections: filtered history, newest first, keyset-paginated."""
    query = request.query
    filters = params.history_filter(query)
    limit = params.limit(query, maximum=db.MAX_PAGE_SIZE)
    pool = request.app[keys.db_key]
    await check_label(request.app[keys.config_key], pool, filters.label)
    order = params.order(query)
    page = await db.list_detections(pool, filters, limit=limit,
                                    cursor=params.cursor(query, order), order=order)
    next_cursor = page.next_cursor.encode() if page.next_cursor else None
    next_url = str(request.rel_url.update_query(cursor=next_cursor)) if next_cursor else None
    return web.json_response({
        "items": [record.to_json() for record in page.items],
        "limit": limit,
        "next_cursor": next_cursor,
        "next": next_url,
    })


async def get_detection(request: web.Request) -> web.Response:
    """GET /api/detections/{id}: the record, and its ``review`` (or null)."""
    pool = request.app[keys.db_key]
    record = await db.get_detection(pool, _record_id(request))
    reviewed = await review.get_review(pool, record.id)
    return web.json_response({**record.to_json(),
                              "review": reviewed.to_json() if reviewed else None})


async def stats(request: web.Request) -> web.Response:
    """GET /api/stats: counts of the records the history filters select (the same
    parameters as /api/detections): in total, per label and per day."""
    filters = params.history_filter(request.query)
    pool = request.app[keys.db_key]
    await check_label(request.app[keys.config_key], pool, filters.label)
    result = await db.stats(pool, filters, source=params.stat_source(request.query))
    return web.json_response(result.to_json())


async def detection_image(request: web.Request) -> web.Response:
    """GET /detections/{id}/image: the stored original; with ``?annotated=1`` a JPEG with
    the boxes drawn, at most 1280 px on its long side; with ``?size=thumb`` at most
    320 px (boxes drawn only with annotated=1). Sized images are made once and stored
    (``service.renditions``)."""
    query = request.query
    annotated = params.flag(query, "annotated")
    size = params.choice(query, "size", tuple(SIZES), "display")
    pool = request.app[keys.db_key]
    headers = {"Cache-Control": "private, max-age=86400"}  # records never change
    if not annotated and "size" not in query:
        _, image = await db.get_image(pool, _record_id(request))
        return web.Response(body=image.data, content_type=image.content_type, headers=headers)
    record = await db.get_detection(pool, _record_id(request))
    rendition = await request.app[keys.renditions_key].get(record, SIZES[size],
                                                           annotated=annotated)
    return web.Response(body=rendition.data, content_type=rendition.content_type,
                        headers=headers)


# ---------------------------------------------------------------- health

async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return web.json_response({"status": "ok"})


Handler = Callable[[web.Request], Awaitable[web.Response]]


def details_for_signed_in(handler: Handler) -> Handler:
    """With access control on, an anonymous caller gets only ``{"status": ...}`` and the
    status code (and ``Retry-After``); a signed-in one (token or session) the whole body.
    The service's internals (pids, queue, errors) are not for anyone who can reach it."""

    @functools.wraps(handler)
    async def summarised(request: web.Request) -> web.Response:
        response = await handler(request)
        auth = request.app.get(keys.auth_key)
        if auth is None or auth.user(request) is not None or response.body is None:
            return response
        status = json.loads(response.body)["status"]
        headers = {name: response.headers[name] for name in ("Retry-After",)
                   if name in response.headers}
        return web.json_response({"status": status}, status=response.status,
                                 headers=headers)

    return summarised


@details_for_signed_in
async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: 200 once the default model's workers are warm and records can be made
    durable.

    ``checks.database``: ``ok``, ``replaying spool`` (it answers; spooled records are
    going in), ``unavailable``, ``restarting`` or ``recovering`` (the embedded server
    died and is being started again: ``db.DatabaseHealth``). ``checks.storage``: the
    spool's ``ok``, ``full`` (its limit, or the disk's reserve, reached) or ``failing``.
    Records are durable while the database answers with nothing spooled, or while the
    spool takes them; when neither holds the answer is 503 (``not_ready``). So it is
    while the default model's workers warm up or one is being replaced. With the
    database away but the spool taking records, or with another model not ready
    (``models`` says which, and why), the answer is 200 with ``"status": "degraded"``.
    The body shows the queue, fault counters and the spool either way.
    """
    pools = request.app[keys.models_key]
    pool = pools.default
    writer = request.app[keys.records_key]
    health = request.app[keys.db_health_key]
    checks: dict[str, str] = {"workers": pool.state}
    problems = []
    if not pool.ready:
        problems.append(pool.error or f"workers are {pool.state}")
    try:
        await db.ping(request.app[keys.db_key])
    except db.UNAVAILABLE_ERRORS as exc:
        # The watcher knows more: a dead embedded server being restarted.
        database = health.state if health.state in ("restarting", "recovering") \
            else "unavailable"
        why = health.detail if database != "unavailable" else \
            f"{type(exc).__name__}: {exc}".rstrip(": ")
    else:
        database = "replaying spool" if writer.spool.pending_entries else "ok"
        why = None
    checks["database"] = database
    checks["storage"] = writer.spool.state
    if database != "ok" and not writer.accepting:
        problems.append(f"records cannot be made durable: database {database}"
                        + (f" ({why})" if why else "") + f"; spool {writer.spool.state}"
                        + (f" ({writer.spool.last_error})" if writer.spool.last_error else ""))
    degraded = database != "ok" or checks["storage"] != "ok"
    models = {other.model.name: {"state": other.state, "ready": other.ready,
                                 "error": other.error} for other in pools}
    degraded = degraded or not all(other.ready for other in pools)
    body = {"checks": checks, "pool": pool.snapshot(), "models": models,
            "admission": request.app[keys.admission_key].snapshot(), "spool": writer.snapshot(),
            "database": health.snapshot()}
    if problems:
        return web.json_response(
            {"status": "not_ready", **body,
             "error": {"code": "not_ready", "message": "; ".join(problems)}},
            status=503, headers={"Retry-After": RETRY_AFTER_S})
    return web.json_response({
        "status": "degraded" if degraded else "ready", **body, "model": pool.model.name,
        "workers": [{"pid": w.pid, "device": w.device, "backend": w.backend,
                     "threads": w.threads, "lone_threads": w.lone_threads,
                     "warmup_ms": w.warmup_ms} for w in pool.workers],
        "batching": {"max_batch_size": pool.config.max_batch_size,
                     "max_queue_delay_ms": pool.config.max_queue_delay_ms},
    })


async def models(request: web.Request) -> web.Response:
    """GET /api/models: every model served: name, classes, input size, backend, workers,
    whether it is ready (and why not)."""
    pools = request.app[keys.models_key]
    return web.json_response({"default": pools.default_name,
                              "models": [pools.describe(pool) for pool in pools]})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format (``service.metrics``)."""
    body = request.app[keys.metrics_key].exposition()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
