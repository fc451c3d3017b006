"""Reviews over HTTP: PUT and DELETE /api/detections/{id}/review (``service.review``).

With access control on, the middleware has already refused a request without a valid
token or session; the reviewer is that token's name. The body must be JSON
(``Content-Type: application/json``), which also keeps a cross-site form from posting
one with a signed-in browser's cookie.
"""

from __future__ import annotations

import json
import logging

import asyncpg
from aiohttp import web

import db
from service import review
from service.serving.servers import ModelServers
from service.web import keys, labels, params
from service.web.errors import ApiError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20



async def review_labels(servers: ModelServers, pool: asyncpg.Pool,
                        record: db.Record) -> list[str]:
    """The labels a review of ``record`` may use: its model's classes while that model is
    served, else every known label (``service.web.labels``)."""
    names = servers.get(record.model).classes if record.model in servers else ()
    return list(names) if names else await labels.known_labels(servers, pool)


async def _json_body(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "the review must be sent as application/json")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"a review is at most {MAX_BODY_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "payload_too_large",
                           f"a review is at most {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None


async def put_review(request: web.Request) -> web.Response:
    """PUT /api/detections/{id}/review: ``{"boxes": [{"label", "box": {x1, y1, x2, y2},
    "detection"?}]}``, the reviewed truth for the image (replaces an earlier review)."""
    pool = request.app[keys.db_key]
    record = await db.get_detection(pool, params.path_record_id(request.match_info))
    body = await _json_body(request)
    allowed = await review_labels(request.app[keys.servers_key], pool, record)
    boxes = review.parse_boxes(body, width=record.width, height=record.height,
                               labels=allowed, detections=len(record.detections))
    auth = request.app.get(keys.auth_key)
    reviewer = auth.user(request) if auth is not None else None
    saved = await review.save_review(pool, record.id, boxes, reviewer)
    log.info("record %s reviewed by %s: %d boxes", record.id, reviewer or "-", len(boxes))
    return web.json_response(saved.to_json())


async def delete_review(request: web.Request) -> web.Response:
    """DELETE /api/detections/{id}/review: drop the review (404 when there is none)."""
    record_id = params.path_record_id(request.match_info)
    if not await review.delete_review(request.app[keys.db_key], record_id):
        raise db.RecordNotFound(f"detection {record_id} has no review")
    return web.Response(status=204)


def review_view(record: db.Record, reviewed: review.Review | None,
                allowed: list[str]) -> dict[str, object]:
    """What the record page shows and its script edits: the model's boxes, each with
    the review's verdict on it (right, relabelled, wrong; None while unreviewed), the
    boxes the reviewer drew, and the labels a review may use."""
    verdicts: list[dict[str, object] | None] = [None] * len(record.detections)
    drawn = []
    if reviewed is not None:
        verdicts = [{"state": "wrong", "label": None} for _ in record.detections]
        for box in reviewed.boxes:
            if box.detection is None:
                drawn.append(box.to_json())
                continue
            same = box.label == record.detections[box.detection].label
            verdicts[box.detection] = {"state": "right" if same else "relabelled",
                                       "label": box.label}
    return {"id": str(record.id), "width": record.width, "height": record.height,
            "labels": allowed, "detections": [d.to_json() for d in record.detections],
            "review": reviewed.to_json() if reviewed is not None else None,
            "verdicts": verdicts, "drawn": drawn}
