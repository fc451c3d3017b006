"""Where a request body may be read: a receiving place, taken before the first byte.

A caller with valid header credentials (or with access control off) reads its body in one
of the ``server.max_uploads`` places of the admission queue (``utils.admission``), the
bodies in transit together at most ``server.max_receiving_mb`` (each counted at its
declared length, or ``server.max_upload_mb`` when chunked; one that would pass it: 503). A caller
without them on a route that takes the token in the body (DeepStack's ``api_key``: the
access-control middleware marks it ``auth.ANONYMOUS``) reads in one of the
``server.anonymous_uploads`` places instead, a budget of its own: anonymous uploads, however
many and however slow, never take a place a signed-in user needs. Its ``api_key`` is
checked as soon as its form field is in (:func:`key_checker`): a wrong one ends the read
with 401 at once.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from service.web import keys
from service.web.auth import ANONYMOUS
from service.web.errors import ApiError
from utils.admission import Place

API_KEY_FIELD = "api_key"


def anonymous(request: web.Request) -> bool:
    return request.get(ANONYMOUS, False)


def body_size(request: web.Request) -> int:
    """The most bytes the body can take: its declared length, else the upload limit."""
    limit = request.app[keys.config_key].server.max_upload_bytes
    declared = request.content_length
    return limit if declared is None else min(declared, limit)


def body_place(request: web.Request) -> Place:
    """The place to read this request's body in (QueueFull: 503 when none is free, or when
    the bodies in transit would pass ``server.max_receiving_mb``)."""
    if anonymous(request):
        return request.app[keys.anonymous_admission_key].receive(body_size(request))
    return request.app[keys.admission_key].receive(body_size(request))


def key_checker(request: web.Request) -> Callable[[str, str], None] | None:
    """For an anonymous request: a check of each text field as it is read, refusing a
    wrong ``api_key`` (401) before the rest of the body; None otherwise."""
    auth = request.app.get(keys.auth_key)
    if auth is None or not anonymous(request):
        return None

    def check(name: str, value: str) -> None:
        if name == API_KEY_FIELD and auth.key_user(value) is None:
            raise ApiError(401, "unauthorized", "a valid api_key is required")

    return check
