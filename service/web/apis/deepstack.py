"""The DeepStack object-detection API (as CodeProject.AI Server keeps it): its own
sub-app, with its own error shape and key check; nothing else knows its prefix.

Blue Iris, Home Assistant, Frigate, Node-RED, Agent DVR and the ``deepstack-python`` /
``deepstack-sdk`` clients speak it:

- ``POST /v1/vision/detection``: the default model; ``POST /v1/vision/custom/{model}``:
  a named one; ``POST /v1/vision/custom/list``: the models' names.
- Multipart field ``image``; optional form fields ``min_confidence`` (0 to 1; 0 means
  every detection, unlike DeepStack, where it hangs), ``tiles`` (auto or off: the model's
  setting when absent), ``source`` (recorded, for events) and ``api_key`` (the access
  token when access control is on).
- Answer: ``{"success": true, "predictions": [{"label", "confidence", "x_min", "y_min",
  "x_max", "y_max"}], ...}``, integer pixel boxes, highest confidence first, plus
  CodeProject.AI's ``count``, ``inferenceMs``, ``processMs``, ``moduleId`` and friends.
- Errors: ``{"success": false, "error": "...", "code": status}``, with the statuses of
  ``POST /detect`` (the sub-app's own error middleware).
- Access (with access control on): a request with an ``Authorization`` header is judged
  by it alone; else a session, else the ``api_key`` form field, read in one place
  (:func:`_api_key_caller`). A caller without valid credentials learns nothing, not
  even the model names (401 before the model is looked up).

Every answer is a record in the history, marked ``api: deepstack``.
"""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import hdrs, web

from service.serving.options import DetectOptions
from service.web import keys, params
from service.web.auth import ANONYMOUS
from service.web.detecting import Answer, Decoded, detect_with
from service.web.errors import ApiError
from service.web.middlewares import error_middleware
from service.web.receive import Form, receive_post
from service.web.uploads import defer_continue

PREFIX = "/v1/vision"
MODULE_ID = "darknet-yolo"
MODULE_NAME = "Darknet YOLO detection service"


def render_error(status: int, code: str, message: str,
                 headers: dict[str, str] | None = None,
                 details: dict[str, object] | None = None) -> web.Response:
    """DeepStack's error body (its clients read ``success`` and ``error``; ``code`` is
    the status, as CodeProject.AI's)."""
    return web.json_response({"success": False, "error": message, "code": status},
                             status=status, headers=headers)


def _unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "a valid api_key is required")


@web.middleware
async def access(request: web.Request, handler: Any) -> web.StreamResponse:
    """With access control on, from the headers before any body is read: an Authorization
    header decides alone (401 if it names no valid token); a session lets the request in;
    else the caller is anonymous: its body is read in the anonymous budget
    (``service.web.budget``) and must carry a valid ``api_key`` (:func:`_api_key_caller`)."""
    auth = request.config_dict.get(keys.auth_key)
    if auth is not None and \
            await auth.identify(request, request.config_dict.get(keys.db_key)) is None:
        if hdrs.AUTHORIZATION in request.headers:
            raise _unauthorized()
        request[ANONYMOUS] = True
    return await handler(request)


def _api_key_caller(request: web.Request, fields: dict[str, str]) -> None:
    """The one place where the ``api_key`` form field is judged, once the form is read
    (an anonymous body is bounded, and a wrong key ends its read at once:
    ``budget.key_checker``)."""
    if not request.get(ANONYMOUS):
        return
    if request.config_dict[keys.auth_key].key_user(fields.get("api_key", "")) is None:
        raise _unauthorized()


class DeepStackCodec:
    api = "deepstack"

    def __init__(self, command: str) -> None:
        self.command = command  # "detect" or "custom", echoed in the answer

    def max_files(self, request: web.Request) -> int:
        return 1

    def before_body(self, request: web.Request) -> Decoded | None:
        if request.content_type.lower() in ("application/x-www-form-urlencoded", ""):
            # A form without a file (DeepStack answers this with 400 too).
            if request.get(ANONYMOUS):
                raise _unauthorized()
            raise ApiError(400, "missing_field", "no file in multipart field 'image'")
        if request.get(ANONYMOUS):
            return None  # who it is, and so which model, only once the form is read
        return Decoded(self._server(request), DetectOptions())

    async def decode(self, request: web.Request, form: Form, early: Decoded | None) -> Decoded:
        _api_key_caller(request, form.fields)
        server = early.server if early is not None else self._server(request)
        if early is None:
            server.check()
        return Decoded(server, DetectOptions(conf_thres=_min_confidence(form.fields),
                                             tiles=params.tiles(form.fields)))

    def _server(self, request: web.Request) -> Any:
        return request.config_dict[keys.servers_key].get(request.match_info.get("model"))

    def encode(self, request: web.Request, answer: Answer) -> web.Response:
        record = answer.records[0]
        predictions = [{"label": d.label, "confidence": d.confidence,
                        "x_min": math.floor(d.x1), "y_min": math.floor(d.y1),
                        "x_max": math.ceil(d.x2), "y_max": math.ceil(d.y2)}
                       for d in sorted(record.detections, key=lambda d: -d.confidence)]
        return web.json_response({
            "success": True,
            "predictions": predictions,
            "count": len(predictions),
            "message": _message(predictions),
            "inferenceMs": round(record.inference_ms),
            "processMs": round((time.perf_counter() - answer.started) * 1000.0),
            "moduleId": MODULE_ID,
            "moduleName": MODULE_NAME,
            "command": self.command,
            "code": 200,
            "requestId": str(record.id),  # the record in the history
        }, headers={"Server-Timing": answer.timing.header()})


async def detection(request: web.Request) -> web.StreamResponse:
    """POST /v1/vision/detection: the default model."""
    return await detect_with(request, DeepStackCodec("detect"))


async def custom(request: web.Request) -> web.StreamResponse:
    """POST /v1/vision/custom/{model}: a named model."""
    return await detect_with(request, DeepStackCodec("custom"))


async def list_models(request: web.Request) -> web.Response:
    """POST /v1/vision/custom/list: the names of the models served."""
    fields: dict[str, str] = {}
    if request.content_type.lower() in ("multipart/form-data",
                                        "application/x-www-form-urlencoded"):
        form = await receive_post(request)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    _api_key_caller(request, fields)
    return web.json_response({"success": True,
                              "models": request.config_dict[keys.servers_key].names,
                              "moduleId": MODULE_ID, "code": 200})


def _min_confidence(fields: dict[str, str]) -> float | None:
    raw = fields.get("min_confidence", "").strip()
    if not raw:
        return None  # the model's configured threshold
    message = f"min_confidence must be a number from 0 to 1, got {raw[:40]!r}"
    if len(raw) > 32:
        raise ApiError(400, "bad_parameter", message)
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", message) from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ApiError(400, "bad_parameter", message)
    return value


def _message(predictions: list[dict[str, Any]]) -> str:
    if not predictions:
        return "No objects found"
    counts: dict[str, int] = {}
    for prediction in predictions:
        counts[prediction["label"]] = counts.get(prediction["label"], 0) + 1
    return "Found " + ", ".join(f"{n} {label}" for label, n in counts.items())


def deepstack_app() -> web.Application:
    """The sub-app, mounted at :data:`PREFIX` (``app.add_subapp(PREFIX, deepstack_app())``):
    its errors in DeepStack's shape, its own access check."""
    app = web.Application(middlewares=[error_middleware(render=render_error), access])
    app[keys.checks_own_access_key] = True
    router = app.router
    # "list" before the model names
    for path, handler, name in (("/detection", detection, "deepstack_detection"),
                                ("/custom/list", list_models, "deepstack_models"),
                                ("/custom/{model}", custom, "deepstack_custom")):
        router.add_post(path, handler, name=name, expect_handler=defer_continue)
    return app
