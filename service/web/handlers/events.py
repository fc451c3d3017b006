"""Event rules over HTTP: ``GET /api/events``, ``GET/PUT/DELETE /api/events/{name}``.

A rule's JSON is the config file's ``events:`` entry (``webhook`` or ``mqtt``, ``secret``,
``labels``, ``models``, ``min_confidence``, ``changes_only``, ``max_attempts``,
``timeout``, ``max_backoff``); the answer adds its delivery state (pending, dead, the
last dead events). Rules of the config file can be read, not changed (409).
"""

from __future__ import annotations

import json

from aiohttp import web

from service.events import outbox
from service.web import keys
from service.web.admin import require_admin
from service.web.errors import ApiError

MAX_RULE_BYTES = 64 * 1024


def _require_admin(request: web.Request) -> None:
    """Only an administrator may see and change rules (they hold URLs and secrets); with
    access control off, anyone may (as every endpoint)."""
    if request.app.get(keys.auth_key) is not None:
        require_admin(request, "read or change event rules")


async def list_events(request: web.Request) -> web.Response:
    """GET /api/events: every rule and its delivery state."""
    _require_admin(request)
    events = request.app[keys.events_key]
    return web.json_response({"events": [events.describe(rule.name)
                                         for rule in events.rules.all()]})


async def get_event(request: web.Request) -> web.Response:
    """GET /api/events/{name}: the rule, its delivery state, its last dead events."""
    _require_admin(request)
    events = request.app[keys.events_key]
    name = request.match_info["name"]
    body = events.describe(name)
    body["dead_events"] = await outbox.dead_events(request.app[keys.db_key], name)
    return web.json_response(body)


async def put_event(request: web.Request) -> web.Response:
    """PUT /api/events/{name}: add or replace a rule (201 new, 200 replaced)."""
    _require_admin(request)
    events = request.app[keys.events_key]
    name = request.match_info["name"]
    raw = await request.content.read(MAX_RULE_BYTES + 1)
    if len(raw) > MAX_RULE_BYTES:
        raise ApiError(413, "payload_too_large", f"a rule is at most {MAX_RULE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_json", "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    rule = events.rules.check(name, data)
    created = await events.rules.put(request.app[keys.db_key], rule)
    return web.json_response(events.describe(name), status=201 if created else 200)


async def delete_event(request: web.Request) -> web.Response:
    """DELETE /api/events/{name}: remove a rule with its pending and dead events."""
    _require_admin(request)
    events = request.app[keys.events_key]
    await events.rules.delete(request.app[keys.db_key], request.match_info["name"])
    return web.Response(status=204)
