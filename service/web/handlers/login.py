"""The sign-in form (access control on): a token in, an HTTP-only session cookie out."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web
from yarl import URL

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


def _same_origin(request: web.Request) -> None:
    """Login CSRF: a browser's cross-site POST is refused (403). Browsers say where a form
    came from (``Origin``, or ``Sec-Fetch-Site``); a client that says neither (curl, a
    script) is not a browser another site can drive."""
    origin = request.headers.get("Origin")
    if origin is not None:
        # The host only: behind a TLS-terminating proxy the scheme seen here differs.
        if URL(origin).authority != request.host:
            raise ApiError(403, "cross_origin", f"a form from {origin[:100]} cannot sign in "
                                                "to this service")
    elif request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise ApiError(403, "cross_origin", "a form from another site cannot sign in here")


async def login(request: web.Request) -> web.Response:
    """POST /login: check the token, open a session, go back where the user was."""
    auth = request.app.get(keys.auth_key)
    if auth is None:
        raise web.HTTPSeeOther("/")
    _same_origin(request)
    form = await receive_post(request)
    target = safe_next(_text(form.get("next")))
    token = _text(form.get("token")).strip()
    session_id = auth.open_session(token) if 0 < len(token) <= MAX_TOKEN_LENGTH else None
    if session_id is None:
        return _form(request, target, "That token is not valid.", status=401)
    response = web.HTTPSeeOther(target)
    auth.set_cookie(request, response, session_id)
    raise response


async def logout(request: web.Request) -> web.Response:
    """POST /logout: end the session and clear its cookie."""
    _same_origin(request)
    auth = request.app.get(keys.auth_key)
    session_id = request.cookies.get(COOKIE_NAME)
    if auth is not None and session_id:
        auth.close_session(session_id)
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
