"""Reading a request body under the request's deadline and the upload pace: the uploaded
images and short form fields (:func:`receive_form`), a small form (:func:`receive_post`),
and whether the client is still there (:func:`client_gone`). Every API's codec reads
its body through these."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from multidict import MultiDictProxy

from service.detect import Upload
from service.web import budget, keys
from service.web.uploads import (
    SMALL_FORM_BYTES,
    paced,
    read_form,
    send_continue,
    small_form_size,
)


@dataclass(frozen=True)
class Form:
    """A request body read: its images and its short text fields."""

    uploads: list[Upload]
    fields: dict[str, str] = field(default_factory=dict)


async def receive_form(request: web.Request, deadline: float, *,
                       max_files: int | None = None) -> Form:
    """The uploaded images and the form's short text fields (408 past the deadline, or
    slower than ``server.upload_min_rate_kb`` after ``server.upload_grace``)."""
    server = request.config_dict[keys.config_key].server
    async with paced(request, grace=server.upload_grace, min_rate=server.upload_min_rate,
                     deadline=deadline):
        uploads, fields = await read_form(request, max_bytes=server.max_upload_bytes,
                                          max_files=max_files or server.max_files,
                                          on_field=budget.key_checker(request))
    return Form(uploads, fields)


async def receive_post(request: web.Request) -> MultiDictProxy[str | web.FileField]:
    """``request.post()`` of a small form (sign-in, DeepStack's list): at most
    ``uploads.SMALL_FORM_BYTES`` (413 beyond, before reading when the length is declared),
    paced as uploads are and bounded by ``server.request_timeout``; ``client_max_fields``
    bounds its parts."""
    server = request.config_dict[keys.config_key].server
    small_form_size(request)
    deadline = asyncio.get_running_loop().time() + server.request_timeout
    async with paced(request, grace=server.upload_grace, min_rate=server.upload_min_rate,
                     deadline=deadline):
        await send_continue(request)
        return await request.clone(client_max_size=SMALL_FORM_BYTES).post()


def client_gone(request: web.Request) -> bool:
    """The client has closed the connection."""
    transport = request.transport
    return transport is None or transport.is_closing()
