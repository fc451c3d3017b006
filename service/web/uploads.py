"""Reading uploaded images from a request: multipart field ``image`` or a raw body.

Limits are enforced while reading: more than ``max_bytes`` -> 413, more parts than
``max_parts(max_files)`` -> 413 at the first part too many (before it is parsed), no image
or an empty one -> 400 (all raised as ApiError). :func:`paced` bounds how slowly a body may
arrive: 408 for a body that, after a grace period, averages less than a minimum rate, or is
not in by a deadline. What a client says it sent (the part's or the body's Content-Type) is
not trusted either way: the bytes decide, in ``service.detect`` (415 with the same
sentence, whatever the client, for anything that is not an accepted image).

``Expect: 100-continue`` is answered only when the body is about to be read, after every
check that could refuse it (:func:`defer_continue` is the routes' expect handler,
:func:`send_continue` sends the 100): a refused request gets its 4xx and no 100. Small forms
(sign-in, DeepStack's model list) may be at most :data:`SMALL_FORM_BYTES` (413 beyond).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import BodyPartReader, HttpVersion11, web
from aiohttp.hdrs import CONTENT_DISPOSITION, EXPECT
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from service.detect import Upload
from service.web.errors import ApiError, error_response

FIELD = "image"
MAX_FILENAME = 255
MAX_FIELDS = 16  # short text fields of a form that are kept (others are read and dropped)
MAX_EXTRA_PARTS = 16  # parts of a form besides its images (text fields); more -> 413
MAX_FIELD_BYTES = 1024
CHUNK = 1 << 16
SMALL_FORM_BYTES = 16 * 1024  # the sign-in form, DeepStack's model list
CONTINUE = "100-continue"
# (name, value) of each short text field as it is read; may raise to end the read
FieldCheck = Callable[[str, str], None]
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def clean_filename(raw: str | None, default: str = "upload") -> str:
    """The last path component, without control characters, at most 255 characters."""
    name = _UNSAFE.sub("", raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", ".."):
        return default
    return name[:MAX_FILENAME]


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """The routes' expect handler: no ``100 Continue`` now (aiohttp's default sends it
    before any check); :func:`send_continue` sends it once the body is wanted. An Expect
    other than 100-continue: 417."""
    if request.headers.get(EXPECT, "").lower() != CONTINUE:
        return error_response(417, "expectation_failed", "only Expect: 100-continue is "
                              "understood", path=request.path)
    return None


async def send_continue(request: web.Request) -> None:
    """``100 Continue``, if the client waits for it: call just before reading the body."""
    if request.version == HttpVersion11 \
            and request.headers.get(EXPECT, "").lower() == CONTINUE \
            and request.writer.output_size == 0 and not request.content.total_bytes:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started


def small_form_size(request: web.Request) -> None:
    """413 for a small form whose declared length is over :data:`SMALL_FORM_BYTES`."""
    if request.content_length is not None and request.content_length > SMALL_FORM_BYTES:
        raise ApiError(413, "payload_too_large",
                       f"the form exceeds the limit of {SMALL_FORM_BYTES // 1024} KiB")


def max_parts(max_files: int) -> int:
    """The most parts a multipart form may have: its images and a few text fields."""
    return max_files + MAX_EXTRA_PARTS


@asynccontextmanager
async def paced(request: web.Request, *, grace: float, min_rate: float,
                deadline: float) -> AsyncIterator[None]:
    """Read the request's body inside this block, or get a 408 ``request_timeout``.

    The body must average at least ``min_rate`` bytes/s once ``grace`` seconds are over
    (so by ``t`` seconds, ``min_rate * (t - grace)`` bytes), and be in by ``deadline``
    (loop time). A client that trickles its body is cut off after about ``grace``
    seconds. One timer, moved on only when it fires: no work per chunk."""
    loop = asyncio.get_running_loop()
    content = request.content
    start, start_bytes = loop.time(), content.total_bytes
    too_slow = False

    def due() -> float:
        """When the bytes received so far stop being enough."""
        return start + grace + (content.total_bytes - start_bytes) / min_rate

    try:
        async with asyncio.timeout_at(deadline) as timeout:

            def check() -> None:
                nonlocal handle, too_slow
                when = due()
                if when <= loop.time():
                    too_slow = True
                    timeout.reschedule(loop.time())  # fires now
                elif when < deadline:
                    handle = loop.call_at(when, check)

            handle = loop.call_at(min(due(), deadline), check)
            try:
                yield
            finally:
                handle.cancel()
    except TimeoutError:
        if too_slow:
            raise ApiError(408, "request_timeout", "the request body arrived too slowly "
                           f"(under {min_rate / 1024:g} KiB/s after {grace:g}s)") from None
        raise ApiError(408, "request_timeout",
                       "the request body was not received in time") from None


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"the upload exceeds the limit of {max_bytes / (1 << 20):g} MiB")


async def read_uploads(request: web.Request, *, max_bytes: int, max_files: int) -> list[Upload]:
    """Every uploaded image of the request, in order (499 if the client leaves mid-way)."""
    uploads, _ = await read_form(request, max_bytes=max_bytes, max_files=max_files)
    return uploads


async def read_form(request: web.Request, *, max_bytes: int, max_files: int,
                    on_field: FieldCheck | None = None) -> tuple[list[Upload], dict[str, str]]:
    """Every uploaded image of the request, in order, and the short text fields of a
    multipart form (the first of each name; DeepStack clients send ``api_key`` and
    ``min_confidence`` so), each given to ``on_field`` as soon as it is read. 499 if the
    client leaves mid-way."""
    try:
        return await _read_uploads(request, max_bytes=max_bytes, max_files=max_files,
                                   on_field=on_field)
    except ConnectionResetError:
        raise ApiError(499, "client_closed_request",
                       "the client closed the connection during the upload") from None


async def _read_uploads(request: web.Request, *, max_bytes: int, max_files: int,
                        on_field: FieldCheck | None) -> tuple[list[Upload], dict[str, str]]:
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    content_type = request.content_type.lower()
    fields: dict[str, str] = {}
    await send_continue(request)
    if content_type == "multipart/form-data":
        uploads = await _read_multipart(request, max_bytes, max_files, fields, on_field)
    else:  # one raw image body, whatever its declared type (curl --data-binary sends
        # application/x-www-form-urlencoded)
        uploads = [await _read_raw(request, max_bytes)]
    for upload in uploads:
        if not upload.data:
            raise ApiError(400, "empty_image", f"{upload.filename}: the image is empty")
    return uploads, fields


async def _read_raw(request: web.Request, max_bytes: int) -> Upload:
    """A raw body, hashed as it arrives and joined once (``request.read()`` would hold a
    growing copy and then another)."""
    chunks, digest, total = [], hashlib.sha256(), 0
    while chunk := await request.content.read(CHUNK):
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
        digest.update(chunk)
    data = b"".join(chunks)
    del chunks
    return Upload(clean_filename(request.query.get("filename")), data, digest.hexdigest())


async def _read_multipart(request: web.Request, max_bytes: int, max_files: int,
                          fields: dict[str, str], on_field: FieldCheck | None) -> list[Upload]:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
    uploads: list[Upload] = []
    total = 0
    parts, most = 0, max_parts(max_files)
    try:
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > most:  # before its body is read: the first part too many ends it
                raise ApiError(413, "too_many_parts", f"the form has more than {most} parts")
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "bad_multipart", "nested multipart bodies are not supported")
            chunks, digest = [], hashlib.sha256()  # hashed as it arrives
            while chunk := await part.read_chunk(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise _too_large(max_bytes)
                chunks.append(chunk)
                digest.update(chunk)
            # Content-Disposition is parsed once (each of part.name and part.filename
            # parses it again).
            _, disposition = parse_content_disposition(part.headers.get(CONTENT_DISPOSITION))
            name = content_disposition_filename(disposition, "name")
            if name != FIELD:
                value = b"".join(chunks)
                if name and name not in fields and len(fields) < MAX_FIELDS:
                    # A value too long is kept cut one byte past the limit, so that its
                    # reader can refuse it (400) instead of finding the field absent.
                    fields[name] = value[:MAX_FIELD_BYTES + 1].decode("utf-8", "replace").strip()
                    if on_field is not None:
                        on_field(name, fields[name])
                continue
            if len(uploads) >= max_files:
                raise ApiError(400, "too_many_files",
                               f"at most {max_files} images per request")
            uploads.append(Upload(
                clean_filename(content_disposition_filename(disposition, "filename")),
                b"".join(chunks), digest.hexdigest()))
    except (ValueError, HttpProcessingError) as exc:  # bad boundaries, headers, encodings
        message = getattr(exc, "message", None) or str(exc)
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {message}") from exc
    if not uploads:
        raise ApiError(400, "missing_field", "no file in multipart field 'image'")
    return uploads
