"""The one detect path of every HTTP API; each API is a codec around it.

An API (ours at ``POST /detect``, DeepStack's, one added later) supplies a
:class:`Codec`: what it can decide before the body (the model and options, checked at
once: 404, 400, 503 at the model's capacity, before a byte of the body is read), what it
decodes from the body (its form fields: options, a key), and how it encodes the records
as its answer. :func:`detect_with` does the rest, the same for all: the deadline
(``server.request_timeout``), the body read holding no model place
(``service.web.budget``), the detect work (:func:`service.detect.detect_images`: the model's
places, the model server, the durable records, marked with the ``source`` the request
names in its query or form) and the ``Server-Timing`` phases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

import db
from service.detect import Timing, detect_images
from service.serving.options import DetectOptions
from service.serving.server import ModelServer
from service.web import budget, keys, params
from service.web.receive import Form, client_gone, receive_form


@dataclass(frozen=True)
class Decoded:
    """What a request asks: the model's server and the options."""

    server: ModelServer
    options: DetectOptions


@dataclass(frozen=True)
class Answer:
    """What the codec encodes: the records, the phases and when the request began."""

    records: Sequence[db.Record]
    timing: Timing
    started: float  # time.perf_counter()


class Codec(Protocol):
    """One HTTP API's decode/encode pair."""

    api: str  # recorded with each record: native, deepstack, ...

    def max_files(self, request: web.Request) -> int:
        """Images one request may carry."""

    def before_body(self, request: web.Request) -> Decoded | None:
        """The model and options when known from the head (None: from the body)."""

    async def decode(self, request: web.Request, form: Form, early: Decoded | None) -> Decoded:
        """The model and options, once the body is read (``early``: before_body's)."""

    def encode(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        """The HTTP answer."""


async def detect_with(request: web.Request, codec: Codec) -> web.StreamResponse:
    """Run one detect request of ``codec``'s API."""
    started = time.perf_counter()
    state = request.config_dict
    config = state[keys.config_key]
    early = codec.before_body(request)
    if early is not None:
        early.server.check()  # at capacity or not serving: refused before the body
    timing = Timing()
    deadline = asyncio.get_running_loop().time() + config.server.request_timeout
    # No model place while the body arrives; a caller without header credentials reads
    # in the anonymous budget, its api_key checked as soon as it is in.
    with budget.body_place(request):
        form = await receive_form(request, deadline, max_files=codec.max_files(request))
    timing.lap("upload")
    decoded = await codec.decode(request, form, early)
    records = await detect_images(
        decoded.server, state[keys.records_key], form.uploads, options=decoded.options,
        store_images=config.storage.store_images, deadline=deadline,
        client_gone=lambda: client_gone(request), timing=timing, api=codec.api,
        source=params.source(request.query, form.fields))
    return codec.encode(request, Answer(records, timing, started))
