"""JSON API: history, stats, stored images, the models, health, metrics (detection is
``service.web.apis.native``)."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

import db
from service import history_stats, review
from service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.renditions import SIZES
from service.web import keys, params
from service.web.labels import check_label
from service.web.errors import RETRY_AFTER_S, ApiError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- history

async def list_detections(request: web.Request) -> web.Response:
    """GET /api/detections: filtered history, newest first, keyset-paginated."""
    query = request.query
    filters = params.history_filter(query)
    limit = params.limit(query, maximum=db.MAX_PAGE_SIZE)
    pool = request.app[keys.db_key]
    await check_label(request.app[keys.servers_key], pool, filters.label)
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
    record = await db.get_detection(pool, params.path_record_id(request.match_info))
    reviewed = await review.get_review(pool, record.id)
    return web.json_response({**record.to_json(),
                              "review": reviewed.to_json() if reviewed else None})


async def stats(request: web.Request) -> web.Response:
    """GET /api/stats: counts of the records the history filters select (the same
    parameters as /api/detections): in total, per label and per day."""
    filters = params.history_filter(request.query)
    pool = request.app[keys.db_key]
    await check_label(request.app[keys.servers_key], pool, filters.label)
    result = await history_stats.stats(pool, filters, source=params.stat_source(request.query))
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
        _, image = await db.get_image(pool, params.path_record_id(request.match_info))
        return web.Response(body=image.data, content_type=image.content_type, headers=headers)
    record = await db.get_detection(pool, params.path_record_id(request.match_info))
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

    ``checks.database``: the one ``DatabaseHealth``'s state (``service.database_health``,
    kept by its watcher and the writes): ``ok``, ``replaying spool`` (it answers; spooled
    records are going in), ``unavailable``, ``restarting`` or ``recovering`` (the
    embedded server died and is being started again). ``checks.storage``: the
    spool's ``ok``, ``full`` (its limit, or the disk's reserve, reached) or ``failing``.
    Records are durable while the database answers with nothing spooled, or while the
    spool takes them; when neither holds the answer is 503 (``not_ready``). So it is
    while the default model's workers warm up or one is being replaced. With the
    database away but the spool taking records, or with another model not ready
    (``models`` says which, and why), the answer is 200 with ``"status": "degraded"``.
    The body shows the queue, fault counters and the spool either way.
    """
    servers = request.app[keys.servers_key]
    server = servers.default
    writer = request.app[keys.records_key]
    health = request.app[keys.db_health_key]
    checks: dict[str, str] = {"workers": server.state}
    problems = []
    if not server.ready:
        problems.append(server.error or f"workers are {server.state}")
    if health.up:
        database = "replaying spool" if writer.spool.pending_entries else "ok"
    else:
        database = health.state
    why = health.detail
    checks["database"] = database
    checks["storage"] = writer.spool.state
    if database != "ok" and not writer.accepting:
        problems.append(f"records cannot be made durable: database {database}"
                        + (f" ({why})" if why else "") + f"; spool {writer.spool.state}"
                        + (f" ({writer.spool.last_error})" if writer.spool.last_error else ""))
    degraded = database != "ok" or checks["storage"] != "ok"
    models = {other.name: {"state": other.state, "ready": other.ready, "error": other.error,
                           "version": other.version} for other in servers}
    degraded = degraded or not all(other.ready for other in servers)
    admission = {**server.admission.snapshot(),
                 **request.app[keys.receiving_key].snapshot()}
    events = request.app[keys.events_key]
    if events.rules.all():  # pending events are not a readiness matter; dead ones degrade
        checks["events"] = events.problem() or "ok"
        degraded = degraded or checks["events"] != "ok"
    body = {"checks": checks, "pool": server.snapshot(), "models": models,
            "admission": admission, "spool": writer.snapshot(), "database": health.snapshot(),
            "events": events.snapshot()}
    if problems:
        return web.json_response(
            {"status": "not_ready", **body,
             "error": {"code": "not_ready", "message": "; ".join(problems)}},
            status=503, headers={"Retry-After": RETRY_AFTER_S})
    workers = request.app[keys.config_key].workers
    return web.json_response({
        "status": "degraded" if degraded else "ready", **body, "model": server.name,
        "workers": [{"pid": w.pid, "device": w.device, "backend": w.backend,
                     "threads": w.threads, "lone_threads": w.lone_threads,
                     "warmup_ms": w.warmup_ms} for w in server.workers],
        "batching": {"max_batch_size": workers.max_batch_size,
                     "max_queue_delay_ms": workers.max_queue_delay_ms},
    })


async def models(request: web.Request) -> web.Response:
    """GET /api/models: every model served: name, version, classes, settings, backend,
    whether it is ready (and why not)."""
    servers = request.app[keys.servers_key]
    return web.json_response({"default": servers.default_name,
                              "models": [servers.describe(server) for server in servers]})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format (``service.metrics``)."""
    body = request.app[keys.metrics_key].exposition()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
