"""GET /api/export?format=yolo|coco and the history filters: a zip streamed as it is
made (``service.export``). Parameters are checked before the first byte (JSON 400 for
a bad one); a failure after that can only cut the download short, and is logged."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from aiohttp import web

from service.export import run
from service.web import keys, labels, params

log = logging.getLogger(__name__)


async def export(request: web.Request) -> web.StreamResponse:
    """GET /api/export: the records the filters select, as training data."""
    query = request.query
    fmt = params.choice(query, "format", run.FORMATS, "yolo")
    filters = params.history_filter(query)
    servers = request.app[keys.servers_key]
    pool = request.app[keys.db_key]
    await labels.check_label(servers, pool, filters.label)
    # The model's classes in their order (a model no longer served: the labels found, sorted).
    served = not filters.model or filters.model in servers
    preferred = servers.get(filters.model).classes if served else ()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    response = web.StreamResponse(headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="history-{fmt}-{stamp}.zip"',
        "Cache-Control": "no-store"})
    async with pool.acquire() as conn, \
            conn.transaction(isolation="repeatable_read", readonly=True):
        plan = await run.plan(conn, filters, preferred)
        response.headers["X-Export-Records"] = str(plan.records)
        await response.prepare(request)
        try:
            counts = await run.write_export(conn, filters, fmt, plan, response.write)
        except ConnectionResetError:
            log.info("export %s: the client left", fmt)
            return response
        except Exception:  # the status is sent: all that is left is to cut it short
            log.exception("export %s cut short after the response began", fmt)
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    log.info("export %s: %d images, %d left out", fmt, counts.images, counts.left_out)
    return response
