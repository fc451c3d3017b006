"""The app's middlewares, outermost first: metrics (count the status the client gets),
errors (every failure as JSON, through ``errors.for_exception``), the Host allowlist,
the same-origin check of POSTs, access control.

The one exception to JSON errors: a browser asking for a page that does not exist (GET,
``Accept: text/html``, not under ``/api/``) gets the HTML error page, when the app gives
a renderer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from yarl import URL

from service.metrics import ServiceMetrics
from service.web import keys, origin
from service.web.auth import Auth, is_public
from service.web.errors import CODES, ApiError, ErrorRenderer, error_response, for_exception

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
# (request, status, title, message) -> an HTML error page
PageRenderer = Callable[[web.Request, int, str, str], web.StreamResponse]

UNMATCHED = "unmatched"  # the endpoint label of a request that matched no route
OTHER_METHOD = "other"
CLIENT_GONE_STATUS = 499  # the handler was cancelled: nothing was sent
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


# ---------------------------------------------------------------- metrics

def endpoint_label(request: web.Request) -> str:
    """The matched route's canonical path (``/detections/{id}``), else ``unmatched``."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def method_label(request: web.Request) -> str:
    return request.method if request.method in hdrs.METH_ALL else OTHER_METHOD


def metrics_middleware(metrics: ServiceMetrics) -> Middleware:
    """Count every request with the status the client gets.

    Put it first (outermost) so that errors already turned into JSON responses by the
    inner middlewares are counted with their status; an ``HTTPException`` that gets
    through (a redirect) is counted with its own, anything else as 500, and a cancelled
    handler (the client left) as 499.
    """

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint, method = endpoint_label(request), method_label(request)
        status = 500
        metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_GONE_STATUS
            raise
        finally:
            metrics.in_flight.dec()
            metrics.observe_request(endpoint, method, status, time.perf_counter() - start)

    return count_requests


# ---------------------------------------------------------------- errors

def _from_http_exception(exc: web.HTTPException, render: ErrorRenderer) -> web.Response:
    headers = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    return render(exc.status, CODES.get(exc.status, "error"), message or exc.reason, headers)


def _wants_page(request: web.Request) -> bool:
    return (request.method in ("GET", "HEAD") and not request.path.startswith("/api/")
            and "text/html" in request.headers.get("Accept", ""))


def error_middleware(render_page: PageRenderer | None = None, *,
                     render: ErrorRenderer = error_response) -> Middleware:
    """Turn raised errors into JSON error responses (``render``'s body: ours, or a
    sub-app's own API's): :class:`ApiError` and the domain errors of ``errors.ERRORS`` as
    they say, HTTP errors with their status, anything else as a logged 500 (an unknown
    page asked for by a browser: ``render_page``'s HTML, when given)."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 404 and render_page is not None and _wants_page(request):
                return render_page(request, 404, "Page not found",
                                   f"There is no page at {request.path[:200]}.")
            return _unread_closes(request, _from_http_exception(exc, render))
        except Exception as exc:
            error = for_exception(exc)
            if error is None:
                log.exception("unhandled error in %s %s", request.method, request.path)
                return render(500, "internal_error", "internal server error")
            if error.code == "database_unavailable":
                log.warning("%s %s: database unavailable: %s: %s", request.method,
                            request.path, type(exc).__name__, exc)
            return _unread_closes(request, render(error.status, error.code, error.message,
                                                  error.headers, error.details))

    return errors


def _unread_closes(request: web.Request, response: web.Response) -> web.Response:
    """A refused request whose body was not read closes its connection after the answer,
    rather than aiohttp reading (and dropping) the rest of the body for up to 10 s."""
    if request.can_read_body and not request.content.is_eof():
        response.force_close()
    return response


# ---------------------------------------------------------------- security headers

# No inline script anywhere (pages load theirs from /static); inline style attributes
# carry the class colours. Nothing may frame the pages.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; "
                           "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response (pages, API, static files, errors) gets
    the security headers."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


# ---------------------------------------------------------------- access control

def checks_own_access(request: web.Request) -> bool:
    """The route belongs to a sub-app that checks access itself (DeepStack's: its
    clients send the token in the form)."""
    return any(app.get(keys.checks_own_access_key, False) for app in request.match_info.apps)


def auth_middleware(auth: Auth) -> Middleware:
    """Access control, from the request's headers, before any body is read: a public path,
    a valid token or a session, else 401 (a browser asking for a page without credentials:
    a redirect to the sign-in form). A request with ``Authorization`` is judged by it
    alone. On a route that takes the token in the body (DeepStack's ``api_key``), a
    request without header credentials goes on marked ``ANONYMOUS``: its body is read
    under the anonymous budget (``service.web.budget``) and its key checked there."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if checks_own_access(request):
            return await handler(request)  # a sub-app that judges its callers itself
        user = await auth.identify(request, request.app.get(keys.db_key))
        if user is not None or is_public(request.path):
            return await handler(request)
        wants_page = request.method == "GET" and "text/html" in request.headers.get(hdrs.ACCEPT, "")
        if wants_page and hdrs.AUTHORIZATION not in request.headers:
            raise web.HTTPSeeOther(URL("/login").with_query(next=request.path_qs))
        raise ApiError(401, "unauthorized",
                       "a valid token is required: Authorization: Bearer <token>",
                       {"WWW-Authenticate": 'Bearer realm="yolo-detect"'})

    return require_token


# ---------------------------------------------------------------- hosts and origins

def host_middleware(allowed: frozenset[str]) -> Middleware:
    """DNS rebinding: a ``Host`` outside ``allowed`` gets 421, a malformed one 400
    (``service.web.origin``)."""

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin.check_host(request.headers.get(hdrs.HOST), allowed)
        return await handler(request)

    return check_host


@web.middleware
async def same_origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CSRF: a POST that a browser sent from another origin gets 403 ``cross_origin``, on
    every route, access control on or off (``service.web.origin``)."""
    origin.check_same_origin(request.method, request.headers, request.headers.get(hdrs.HOST))
    return await handler(request)
