"""Reading uploaded images from a request: multipart field ``image`` or a raw body.

Limits are enforced while reading: more than ``max_bytes`` -> 413, no image or an empty
one -> 400 (all raised as ApiError). What a client says it sent (the part's or the
body's Content-Type) is not trusted either way: the bytes decide, in
``service.detect`` (415 with the same sentence, whatever the client, for anything that
is not an accepted image).
"""

from __future__ import annotations

import hashlib
import re

from aiohttp import BodyPartReader, web
from aiohttp.hdrs import CONTENT_DISPOSITION
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import content_disposition_filename, parse_content_disposition

from service.detect import Upload
from service.web.errors import ApiError

FIELD = "image"
MAX_FILENAME = 255
MAX_FIELDS = 16  # short text fields of a form that are kept (others are read and dropped)
MAX_FIELD_BYTES = 1024
CHUNK = 1 << 16
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def hashed_upload(filename: str, data: bytes) -> Upload:
    """An upload read whole (a raw body), hashed now."""
    return Upload(filename, data, hashlib.sha256(data).hexdigest())


def clean_filename(raw: str | None, default: str = "upload") -> str:
    """The last path component, without control characters, at most 255 characters."""
    name = _UNSAFE.sub("", raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", ".."):
        return default
    return name[:MAX_FILENAME]


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"the upload exceeds the limit of {max_bytes / (1 << 20):g} MiB")


async def read_uploads(request: web.Request, *, max_bytes: int, max_files: int) -> list[Upload]:
    """Every uploaded image of the request, in order (499 if the client leaves mid-way)."""
    uploads, _ = await read_form(request, max_bytes=max_bytes, max_files=max_files)
    return uploads


async def read_form(request: web.Request, *, max_bytes: int,
                    max_files: int) -> tuple[list[Upload], dict[str, str]]:
    """Every uploaded image of the request, in order, and the short text fields of a
    multipart form (the first of each name; DeepStack clients send ``api_key`` and
    ``min_confidence`` so). 499 if the client leaves mid-way."""
    try:
        return await _read_uploads(request, max_bytes=max_bytes, max_files=max_files)
    except ConnectionResetError:
        raise ApiError(499, "client_closed_request",
                       "the client closed the connection during the upload") from None


async def _read_uploads(request: web.Request, *, max_bytes: int,
                        max_files: int) -> tuple[list[Upload], dict[str, str]]:
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    content_type = request.content_type.lower()
    fields: dict[str, str] = {}
    if content_type == "multipart/form-data":
        uploads = await _read_multipart(request, max_bytes, max_files, fields)
    else:  # one raw image body, whatever its declared type (curl --data-binary sends
        # application/x-www-form-urlencoded)
        data = await request.read()  # client_max_size applies: 413 beyond it
        if len(data) > max_bytes:
            raise _too_large(max_bytes)
        uploads = [hashed_upload(clean_filename(request.query.get("filename")), data)]
    for upload in uploads:
        if not upload.data:
            raise ApiError(400, "empty_image", f"{upload.filename}: the image is empty")
    return uploads, fields


async def _read_multipart(request: web.Request, max_bytes: int, max_files: int,
                          fields: dict[str, str]) -> list[Upload]:
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
    uploads: list[Upload] = []
    total = 0
    try:
        while (part := await reader.next()) is not None:
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
                if name and name not in fields and len(fields) < MAX_FIELDS \
                        and len(value) <= MAX_FIELD_BYTES:
                    fields[name] = value.decode("utf-8", "replace").strip()
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
