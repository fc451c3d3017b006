"""Routes for administrators only (model management, event rules): the one check."""

from __future__ import annotations

from aiohttp import web

from service.web import keys
from service.web.errors import ApiError

ADMIN_TOKEN_HINT = "a token made with `python -m service.web.tokens create NAME --admin`"


def require_admin(request: web.Request, what: str) -> str:
    """The name of the caller's token if it was made with ``--admin``; else 401 (no valid
    credentials) or 403 (another token). ``what``: what the caller wanted to do, for the
    message. Access control must be on: each route says what it does when it is off."""
    auth = request.config_dict[keys.auth_key]
    name = auth.user(request)
    if name is None:
        raise ApiError(401, "unauthorized", "a valid admin token is required",
                       {"WWW-Authenticate": 'Bearer realm="yolo-detect"'})
    if not auth.tokens.is_admin(name):
        raise ApiError(403, "forbidden", f"token {name!r} may not {what}: that needs "
                                         f"{ADMIN_TOKEN_HINT}")
    return name
