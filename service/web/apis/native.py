"""Our own API, ``POST /detect``: images as multipart fields ``image`` (or one raw image
body); the model and options in the query (``model``, ``conf``, ``iou``, ``agnostic``,
``max_det``, ``tiles``: auto or off), checked before the body is read; one record as JSON, or
``{"results": [...]}`` for several, with a ``Server-Timing`` header."""

from __future__ import annotations

from aiohttp import web

from service.serving.options import DetectOptions
from service.web import keys, params
from service.web.detecting import Answer, Decoded, detect_with
from service.web.receive import Form

MAX_DET = 10_000  # the most detections per image a request may ask for


class NativeCodec:
    api = "native"

    def max_files(self, request: web.Request) -> int:
        return request.config_dict[keys.config_key].server.max_files

    def before_body(self, request: web.Request) -> Decoded:
        query = request.query
        server = request.config_dict[keys.servers_key].get(params.text(query, "model"))
        model = server.model
        return Decoded(server, DetectOptions(
            conf_thres=params.unit_interval(query, "conf", None),
            iou_thres=params.unit_interval(query, "iou", None),
            agnostic=params.optional_flag(query, "agnostic", model.agnostic_nms),
            max_det=params.positive_int(query, "max_det", model.max_det, MAX_DET),
            tiles=params.tiles(query)))

    async def decode(self, request: web.Request, form: Form, early: Decoded | None) -> Decoded:
        assert early is not None
        return early

    def encode(self, request: web.Request, answer: Answer) -> web.Response:
        headers = {"Server-Timing": answer.timing.header()}
        records = answer.records
        if len(records) == 1:
            return web.json_response(records[0].to_json(), headers=headers)
        return web.json_response({"results": [record.to_json() for record in records]},
                                 headers=headers)


CODEC = NativeCodec()


async def detect(request: web.Request) -> web.StreamResponse:
    """POST /detect: run the model on each uploaded image and store the records.

    The model and options are checked first (400, 404; 503 when the model is not
    serving or at capacity, with Retry-After, before the body is read). The body is read
    holding no model place (at most ``server.max_uploads`` at once) and must keep up
    ``server.upload_min_rate_kb`` after ``server.upload_grace`` seconds (else 408). The
    request then takes one of the model's places per image (``workers x max_batch_size +
    workers.max_queue`` per model), or gets 503 at once. Reading and detection share one
    deadline (``server.request_timeout``: 408 while reading, 504 after); a client that
    leaves while its images wait has them taken off the queue. The response is sent only
    once the records are durable; its ``Server-Timing`` header gives the phases.
    """
    return await detect_with(request, CODEC)
