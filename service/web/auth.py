"""Access control (off unless ``auth.tokens_file`` is set).

Every route except ``/healthz``, ``/readyz`` (its details only to a signed-in caller:
``handlers.api.details_for_signed_in``), ``/login`` and static files (:func:`is_public`)
needs either
``Authorization: Bearer <token>`` or the session cookie that ``/login`` sets. A missing
or wrong credential gets a JSON 401 with ``WWW-Authenticate: Bearer``; a browser asking
for a page is sent to the login form instead (``middlewares.auth_middleware``).

Sessions live in this process's memory (a restart signs everyone out): the cookie holds
a random id, the server keeps its hash, the hash of the token that opened it and an
expiry. A session ends with its token: revoking the token signs its sessions out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import hdrs, web

from service.web.tokens import TokenStore, token_hash

COOKIE_NAME = "yolo_session"
MAX_SESSIONS = 10_000
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/login", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)


@dataclass(frozen=True)
class _Session:
    token_sha256: str
    expires: float


class Auth:
    """Tokens (from the tokens file) and the sessions opened with them."""

    def __init__(self, tokens: TokenStore, *, session_seconds: float,
                 cookie_secure: bool | None) -> None:
        self.tokens = tokens
        self.session_seconds = session_seconds
        self.cookie_secure = cookie_secure
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    # ------------------------------------------------------------- sessions

    def open_session(self, token: str) -> str | None:
        """A new session id for a valid token, else None."""
        digest = token_hash(token)
        if self.tokens.name_for_hash(digest) is None:
            return None
        session_id = secrets.token_urlsafe(32)
        self._sessions[_key(session_id)] = _Session(digest, time.time() + self.session_seconds)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session_id

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(_key(session_id), None)

    def session_user(self, session_id: str) -> str | None:
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        name = self.tokens.name_for_hash(session.token_sha256)
        if name is None or session.expires < time.time():
            del self._sessions[key]
            return None
        return name

    # ------------------------------------------------------------- requests

    def user(self, request: web.Request) -> str | None:
        """Who sent the request: a bearer token's name, a session's, or None.

        A request with an Authorization header is judged by it alone.
        """
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            return self.tokens.name_for(token.strip())
        session_id = request.cookies.get(COOKIE_NAME)
        return self.session_user(session_id) if session_id else None

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
