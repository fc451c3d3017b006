"""JSON errors: ``{"error": {"code": ..., "message": ...}}`` for every failed request.

The one exception: a browser asking for a page that does not exist (GET, ``Accept:
text/html``, not under ``/api/``) gets the HTML error page, when the app gives a renderer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

import db

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
# (request, status, title, message) -> an HTML error page
PageRenderer = Callable[[web.Request, int, str, str], web.StreamResponse]

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    499: "client_closed_request",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
DB_RETRY_AFTER_S = "5"


class ApiError(Exception):
    """An HTTP error with a machine-readable code, rendered as JSON by the middleware."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    headers = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    return error_response(exc.status, CODES.get(exc.status, "error"), message or exc.reason,
                          headers)


def error_middleware(render_page: PageRenderer | None = None) -> Middleware:
    """Turn raised HTTP errors and unexpected exceptions into JSON error responses (an
    unknown page asked for by a browser: ``render_page``'s HTML, when given)."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404 and render_page is not None and _wants_page(request):
                return render_page(request, 404, "Page not found",
                                   f"There is no page at {request.path[:200]}.")
            return _from_http_exception(exc)
        except db.UNAVAILABLE_ERRORS as exc:
            log.warning("%s %s: database unavailable: %s: %s", request.method, request.path,
                        type(exc).__name__, exc)
            return error_response(503, "database_unavailable",
                                  "the database is unavailable; try again shortly",
                                  {"Retry-After": DB_RETRY_AFTER_S})
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal_error", "internal server error")

    return errors


def _wants_page(request: web.Request) -> bool:
    return (request.method in ("GET", "HEAD") and not request.path.startswith("/api/")
            and "text/html" in request.headers.get("Accept", ""))
