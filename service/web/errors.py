"""HTTP errors: the one table from domain errors to status and code, and the JSON body
``{"error": {"code": ..., "message": ...}}`` every failed request gets (a sub-app with
an API of its own renders its own body: :data:`ErrorRenderer`).

Code below the web layer raises its own errors (``model.errors.ImageError``, the pool's
``PoolUnavailable``, the recorder's ``StorageUnavailable``, ``db.RecordNotFound``, ...);
:data:`ERRORS` says what each means to a client, and :func:`for_exception` finds it
(``middlewares.error_middleware`` renders it). Handlers raise :class:`ApiError` only for
what is an HTTP matter in itself (a bad parameter, an upload too slow or too large).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

import db
from model.errors import (
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from service.detect import ClientGone, DetectTimeout
from service.events.rules import FixedEvent, InvalidEvent, UnknownEvent
from service.recorder import StorageUnavailable
from service.review import InvalidReview
from service.serving.servers import DefaultModelRemoval, UnknownModel
from service.workers.pool import ImageKilledWorker, PoolUnavailable
from utils.admission import QueueFull

RETRY_AFTER_S = "5"  # not ready: warming up, a worker being replaced, storage away
RETRY_AFTER_BUSY_S = "1"  # at capacity

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    499: "client_closed_request",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An HTTP error with a machine-readable code, rendered as JSON by the middleware."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None,
                 details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details or {}  # more fields of the error object (known_labels)


@dataclass(frozen=True)
class ErrorRule:
    """What a domain error means to a client: ``message`` replaces the error's own text
    (for errors whose text is not for clients)."""

    errors: type[BaseException] | tuple[type[BaseException], ...]
    status: int
    code: str
    retry_after: str | None = None
    message: str | None = None


# First match wins: specific errors before the classes they derive from.
ERRORS: tuple[ErrorRule, ...] = (
    ErrorRule(ImageTooLargeError, 413, "image_too_large"),
    ErrorRule(UnsupportedImageError, 415, "unsupported_media_type"),
    ErrorRule((ImageDecodeError, ImageError), 400, "invalid_image"),
    ErrorRule(ImageKilledWorker, 422, "image_crashed_worker"),
    ErrorRule(PoolUnavailable, 503, "not_ready", RETRY_AFTER_S),
    ErrorRule(QueueFull, 503, "overloaded", RETRY_AFTER_BUSY_S),
    ErrorRule(StorageUnavailable, 503, "storage_unavailable", RETRY_AFTER_S),
    ErrorRule(DetectTimeout, 504, "timeout", RETRY_AFTER_BUSY_S),
    ErrorRule(ClientGone, 499, "client_closed_request"),
    ErrorRule(db.RecordNotFound, 404, "not_found"),
    ErrorRule(InvalidReview, 400, "invalid_review"),
    ErrorRule(UnknownModel, 404, "unknown_model"),
    ErrorRule(DefaultModelRemoval, 409, "default_model"),
    ErrorRule(UnknownEvent, 404, "unknown_event"),
    ErrorRule(FixedEvent, 409, "event_in_config"),
    ErrorRule(InvalidEvent, 400, "invalid_event"),
    ErrorRule(db.UNAVAILABLE_ERRORS, 503, "database_unavailable", RETRY_AFTER_S,
              message="the database is unavailable; try again shortly"),
)


def for_exception(exc: BaseException) -> ApiError | None:
    """The HTTP error for ``exc``: itself if an ApiError, its :data:`ERRORS` rule's if it
    has one, else None (a bug: 500)."""
    if isinstance(exc, ApiError):
        return exc
    for rule in ERRORS:
        if isinstance(exc, rule.errors):
            headers = {} if rule.retry_after is None else {"Retry-After": rule.retry_after}
            return ApiError(rule.status, rule.code, rule.message or str(exc), headers)
    return None


# (status, code, message, headers, details) -> the error response
ErrorRenderer = Callable[[int, str, str, "dict[str, str] | None", "dict[str, object] | None"],
                         web.Response]


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None,
                   details: dict[str, object] | None = None) -> web.Response:
    """Our JSON error body."""
    return web.json_response({"error": {"code": code, "message": message, **(details or {})}},
                             status=status, headers=headers)
