"""The sign-in form (access control on): a token in, an HTTP-only session cookie out."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from service.web import keys
from service.web.auth import COOKIE_NAME, safe_next
from service.web.errors import ApiError
from service.web.receive import receive_post

MAX_TOKEN_LENGTH = 200


async def login_form(request: web.Request) -> web.Response:
    """GET /login: the form (straight home when access control is off)."""
    if keys.auth_key not in request.app:
        raise web.HTTPSeeOther("/")
    return _form(request, safe_next(request.query.get("next")))


async def login(request: web.Request) -> web.Response:
    """POST /login: check the token, open a session, go back where the user was."""
    auth = request.app.get(keys.auth_key)
    if auth is None:
        raise web.HTTPSeeOther("/")
    # A cross-site form was refused before this (middlewares.same_origin_middleware).
    form = await receive_post(request)
    target = safe_next(_text(form.get("next")))
    token = _text(form.get("token")).strip()
    session_id = await auth.open_session(request.app[keys.db_key], token) \
        if 0 < len(token) <= MAX_TOKEN_LENGTH else None
    if session_id is None:
        return _form(request, target, "That token is not valid.", status=401)
    response = web.HTTPSeeOther(target)
    auth.set_cookie(request, response, session_id)
    raise response


async def logout(request: web.Request) -> web.Response:
    """POST /logout: end the session and clear its cookie (a cross-site POST was refused
    before this: middlewares.same_origin_middleware)."""
    auth = request.app.get(keys.auth_key)
    session_id = request.cookies.get(COOKIE_NAME)
    if auth is not None and session_id:
        await auth.close_session(request.app[keys.db_key], session_id)
    response = web.HTTPSeeOther("/login" if auth is not None else "/")
    response.del_cookie(COOKIE_NAME, path="/")
    raise response


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _form(request: web.Request, target: str, error: str | None = None,
          status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(
        "login.html", request, {"nav": None, "next": target, "error": error}, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response
