"""Access control (off unless ``auth.tokens_file`` is set).

Every route except ``/healthz``, ``/readyz`` (its details only to a signed-in caller:
``handlers.api.details_for_signed_in``), ``/login`` and static files (:func:`is_public`)
needs either
``Authorization: Bearer <token>`` or the session cookie that ``/login`` sets. A missing
or wrong credential gets a JSON 401 with ``WWW-Authenticate: Bearer``; a browser asking
for a page is sent to the login form instead (``middlewares.auth_middleware``).

Sessions are kept in PostgreSQL (``service.web.sessions``), so every instance behind a
proxy knows them: the cookie holds a random id, the database its hash, the hash of the
token that opened it and an expiry. A session ends with its token (revoking the token
signs its sessions out), and each token has at most ``auth.max_sessions_per_token``
(signing in once more ends that token's oldest, never another user's). While the
database does not answer, the sessions this instance opened or saw are still honoured
from its memory (bounded), so pages keep working through an outage; bearer tokens never
need the database.

Credentials in headers are judged before any body is read (``middlewares``): a request
with ``Authorization`` by it alone. The DeepStack sub-app (``service.web.apis.deepstack``)
also takes the token in the body (``api_key``): a request there without header
credentials is let through marked :data:`ANONYMOUS`, and its body is read under a small
budget of its own (``server.anonymous_uploads`` places, ``service.web.budget``), the key
checked as soon as its field is in.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg
from aiohttp import hdrs, web

import db
from service.web import sessions
from service.web.tokens import TokenStore, token_hash

log = logging.getLogger(__name__)

COOKIE_NAME = "yolo_session"
MAX_KNOWN_SESSIONS = 10_000  # sessions this instance remembers for a database outage
LOOKUP_TIMEOUT_S = 2.0  # a session lookup slower than this uses what this instance knows
WRITE_TIMEOUT_S = 5.0  # signing in or out: beyond, 503 database_unavailable
# Set by the access-control middleware: the session's user (a cookie checked against the
# database), and whether the request came with no header credentials to a route that
# takes the token in the body.
SESSION_USER = web.RequestKey("session_user", str)
ANONYMOUS = web.RequestKey("anonymous_body", bool)
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/login", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)


@dataclass(frozen=True)
class _Session:
    token_sha256: str
    expires: float


class Auth:
    """Tokens (from the tokens file) and the sessions opened with them."""

    def __init__(self, tokens: TokenStore, *, session_seconds: float,
                 cookie_secure: bool | None, per_token: int = 32) -> None:
        self.tokens = tokens
        self.session_seconds = session_seconds
        self.cookie_secure = cookie_secure
        self.per_token = per_token
        self._known: OrderedDict[str, _Session] = OrderedDict()  # outage fallback only

    # ------------------------------------------------------------- sessions

    async def open_session(self, pool: asyncpg.Pool, token: str) -> str | None:
        """A new session id for a valid token, else None."""
        digest = token_hash(token)
        if self.tokens.name_for_hash(digest) is None:
            return None
        session_id = secrets.token_urlsafe(32)
        key = _key(session_id)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await sessions.open_session(pool, key, digest, seconds=self.session_seconds,
                                        per_token=self.per_token)
        self._remember(key, _Session(digest, time.time() + self.session_seconds))
        return session_id

    async def close_session(self, pool: asyncpg.Pool, session_id: str) -> None:
        key = _key(session_id)
        self._known.pop(key, None)
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await sessions.close_session(pool, key)

    async def session_user(self, pool: asyncpg.Pool, session_id: str) -> str | None:
        """The user of a live session: the database decides; while it does not answer,
        what this instance knows."""
        key = _key(session_id)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                found = await sessions.find_session(pool, key)
        except (TimeoutError, *db.UNAVAILABLE_ERRORS) as exc:
            log.warning("session lookup failed (%s: %s); using this instance's sessions",
                        type(exc).__name__, exc)
            session = self._known.get(key)
        else:
            if found is None:
                self._known.pop(key, None)
                return None
            session = _Session(found[0], found[1].timestamp())
            self._remember(key, session)
        if session is None or session.expires < time.time():
            return None
        return self.tokens.name_for_hash(session.token_sha256)

    def _remember(self, key: str, session: _Session) -> None:
        self._known[key] = session
        self._known.move_to_end(key)
        while len(self._known) > MAX_KNOWN_SESSIONS:
            self._known.popitem(last=False)

    # ------------------------------------------------------------- requests

    async def identify(self, request: web.Request, pool: asyncpg.Pool | None) -> str | None:
        """Who sent the request, from its headers only (bearer token, else session
        cookie); a session's user is kept on the request for :meth:`user`."""
        if hdrs.AUTHORIZATION in request.headers or pool is None:
            return self.user(request)
        session_id = request.cookies.get(COOKIE_NAME)
        if not session_id or len(session_id) > 100:
            return None
        name = await self.session_user(pool, session_id)
        if name is not None:
            request[SESSION_USER] = name
        return name

    def user(self, request: web.Request) -> str | None:
        """Who sent the request: a bearer token's name, a session's (as
        :meth:`identify` found it), or None.

        A request with an Authorization header is judged by it alone.
        """
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return self.tokens.name_for(token.strip())
        return request.get(SESSION_USER)

    def key_user(self, api_key: str) -> str | None:
        """The name of a token sent as DeepStack's ``api_key`` form field."""
        return self.tokens.name_for(api_key) if 0 < len(api_key) <= 200 else None

    def set_cookie(self, request: web.Request, response: web.StreamResponse,
                   session_id: str) -> None:
        secure = request.secure if self.cookie_secure is None else self.cookie_secure
        response.set_cookie(COOKIE_NAME, session_id, max_age=int(self.session_seconds),
                            path="/", httponly=True, samesite="Lax", secure=secure)


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def safe_next(target: str | None) -> str:
    """A same-site path to return to after login (never another origin)."""
    if not target or not target.startswith("/") or target.startswith("//") \
            or "\\" in target or any(ord(ch) < 32 for ch in target):
        return "/"
    return target
