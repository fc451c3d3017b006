"""The DeepStack object-detection API (as CodeProject.AI Server keeps it), next to ours.

Blue Iris, Home Assistant, Frigate, Node-RED, Agent DVR and the ``deepstack-python`` /
``deepstack-sdk`` clients speak it:

- ``POST /v1/vision/detection``: the default model; ``POST /v1/vision/custom/{model}``:
  a named one; ``POST /v1/vision/custom/list``: the models' names.
- Multipart field ``image``; optional form fields ``min_confidence`` (0 to 1; 0 means
  every detection, unlike DeepStack, where it hangs) and ``api_key`` (the access token
  when access control is on; a bearer header or session works too).
- Answer: ``{"success": true, "predictions": [{"label", "confidence", "x_min", "y_min",
  "x_max", "y_max"}], ...}``, integer pixel boxes, highest confidence first, plus
  CodeProject.AI's ``count``, ``inferenceMs``, ``processMs``, ``moduleId`` and friends.
- Errors: ``{"success": false, "error": "...", "code": status}`` (the error middleware
  renders every error under ``/v1/vision/`` so), with the statuses of ``POST /detect``.

The work is the same as ``POST /detect``'s (:func:`service.detect.detect_images`): every
answer is a record in the history, marked ``api: deepstack``.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from aiohttp import web

from service.detect import DetectOptions, Timing, detect_images
from service.web import keys, params
from service.web.errors import ApiError
from service.web.handlers.api import client_gone, receive_form, receive_post
from service.workers.pool import PoolUnavailable

MODULE_ID = "darknet-yolo"
MODULE_NAME = "Darknet YOLO detection service"


async def detection(request: web.Request) -> web.Response:
    """POST /v1/vision/detection: the default model."""
    return await _detect(request, None, "detect")


async def custom(request: web.Request) -> web.Response:
    """POST /v1/vision/custom/{model}: a named model."""
    return await _detect(request, request.match_info["model"], "custom")


async def list_models(request: web.Request) -> web.Response:
    """POST /v1/vision/custom/list: the names of the models served."""
    await _check_key(request, await _form_fields(request))
    return web.json_response({"success": True, "models": request.app[keys.models_key].names,
                              "moduleId": MODULE_ID, "code": 200})


async def _detect(request: web.Request, name: str | None, command: str) -> web.Response:
    started = time.perf_counter()
    app = request.app
    config = app[keys.config_key]
    pool = app[keys.models_key].get(name)
    if not pool.accepting:
        raise PoolUnavailable(pool.error or f"the workers of model {pool.model.name} are "
                                            "warming up")
    if request.content_type.lower() in ("application/x-www-form-urlencoded", ""):
        # A form without a file (DeepStack answers this with 400 too).
        raise ApiError(400, "missing_field", "no file in multipart field 'image'")
    admission = app[keys.admission_key]
    timing = Timing()
    deadline = asyncio.get_running_loop().time() + config.server.request_timeout
    with admission.receive():  # no model place while the body arrives (as POST /detect)
        uploads, fields = await receive_form(request, deadline, max_files=1)
    timing.lap("upload")
    await _check_key(request, fields)
    options = DetectOptions(conf_thres=_min_confidence(fields))
    with admission.enter():
        records = await detect_images(
            pool, app[keys.records_key], uploads, options=options,
            store_images=config.storage.store_images, deadline=deadline,
            client_gone=lambda: client_gone(request), timing=timing, api="deepstack",
            source=params.source(request.query, fields))
    record = records[0]
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
        "processMs": round((time.perf_counter() - started) * 1000.0),
        "moduleId": MODULE_ID,
        "moduleName": MODULE_NAME,
        "command": command,
        "code": 200,
        "requestId": str(record.id),  # the record in the history
    }, headers={"Server-Timing": timing.header()})


def _min_confidence(fields: dict[str, str]) -> float | None:
    raw = fields.get("min_confidence", "").strip()
    if not raw:
        return None  # the model's configured threshold
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"min_confidence must be a number from 0 to 1, "
                                             f"got {raw[:40]!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ApiError(400, "bad_parameter",
                       f"min_confidence must be a number from 0 to 1, got {raw[:40]!r}")
    return value


async def _form_fields(request: web.Request) -> dict[str, str]:
    if request.content_type.lower() not in ("multipart/form-data",
                                            "application/x-www-form-urlencoded"):
        return {}
    form = await receive_post(request)
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def _check_key(request: web.Request, fields: dict[str, str]) -> None:
    """With access control on, the caller needs a token: a bearer header or session (as
    elsewhere) or, as DeepStack clients send it, the ``api_key`` form field."""
    auth = request.app.get(keys.auth_key)
    if auth is None or auth.user(request) is not None:
        return
    key = fields.get("api_key", "")
    if key and auth.tokens.name_for(key) is not None:
        return
    raise ApiError(401, "unauthorized", "a valid api_key is required")


def _message(predictions: list[dict[str, Any]]) -> str:
    if not predictions:
        return "No objects found"
    counts: dict[str, int] = {}
    for prediction in predictions:
        counts[prediction["label"]] = counts.get(prediction["label"], 0) + 1
    return "Found " + ", ".join(f"{n} {label}" for label, n in counts.items())
