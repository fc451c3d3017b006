"""Where a request body may be read: a receiving place, taken before the first byte.

A caller with valid header credentials (or with access control off) reads its body in one
of the ``server.max_uploads`` places of ``utils.admission.Receiving``, the
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

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from aiohttp import web

from service.web import keys
from service.web.auth import ANONYMOUS
from service.web.errors import ApiError
from utils.admission import Place, Receiving
from utils.allocator import trim

API_KEY_FIELD = "api_key"
TRIM_AFTER_BYTES = 64 << 20  # bodies received since the last trim worth one
TRIM_INTERVAL_S = 1.0


def anonymous(request: web.Request) -> bool:
    return request.get(ANONYMOUS, False)


def body_size(request: web.Request) -> int:
    """The most bytes the body can take: its declared length, else the upload limit."""
    limit = request.config_dict[keys.config_key].server.max_upload_bytes
    declared = request.content_length
    return limit if declared is None else min(declared, limit)


def body_place(request: web.Request) -> Place:
    """The place to read this request's body in (QueueFull: 503 when none is free, or when
    the bodies in transit would pass ``server.max_receiving_mb``)."""
    key = keys.anonymous_receiving_key if anonymous(request) else keys.receiving_key
    return request.config_dict[key].receive(body_size(request))


def key_checker(request: web.Request) -> Callable[[str, str], None] | None:
    """For an anonymous request: a check of each text field as it is read, refusing a
    wrong ``api_key`` (401) before the rest of the body; None otherwise."""
    auth = request.config_dict.get(keys.auth_key)
    if auth is None or not anonymous(request):
        return None

    def check(name: str, value: str) -> None:
        if name == API_KEY_FIELD and auth.key_user(value) is None:
            raise ApiError(401, "unauthorized", "a valid api_key is required")

    return check


async def _trim_when_idle(receivings: Sequence[Receiving], interval: float) -> None:
    trimmed_at = 0
    while True:
        await asyncio.sleep(interval)
        received = sum(receiving.received_bytes_total for receiving in receivings)
        if received - trimmed_at >= TRIM_AFTER_BYTES \
                and all(receiving.idle for receiving in receivings):
            trimmed_at = received
            await asyncio.to_thread(trim)


@asynccontextmanager
async def trim_after_bursts(receivings: Sequence[Receiving],
                            interval: float = TRIM_INTERVAL_S) -> AsyncIterator[None]:
    """While open: once no body is being read, after
    :data:`TRIM_AFTER_BYTES` of bodies, give the heap's free pages back to the system
    (``utils.allocator.trim``): bodies arrive in chunks from the heap, and the memory a
    burst of large uploads freed would otherwise stay held."""
    task = asyncio.create_task(_trim_when_idle(receivings, interval))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
