"""Models managed while serving (admin tokens only): ``PUT``, ``GET`` and ``DELETE
/api/models/{name}``.

``PUT`` takes a multipart form: the files ``cfg``, ``weights`` and ``names`` and
optional fields with the settings of a ``models:`` entry (``img_size``, ``conf_thres``,
``iou_thres``, ``agnostic_nms``, ``max_det``, ``workers``, ``precision``; checked as the
config is, by ``settings.parse_model``). The files are streamed to disk under
``storage.max_model_mb`` and read only as data: the cfg is parsed as text here, the
weights are loaded by the workers as they always are (never unpickling code). The model
is created, or its new version warms up beside the one serving; the answer is 202 with
the model's state, and ``GET`` says how it went (``state``, ``version``, ``error``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from model.cfg import parse_cfg
from model.errors import CfgError
from service.serving.servers import ModelServers
from model.weights import DARKNET_SUFFIXES, TORCH_SUFFIXES
from service.serving.store import ROLES, file_name, files_in
from service.web import keys
from service.web.admin import require_admin
from service.web.errors import RETRY_AFTER_S, ApiError
from service.web.uploads import paced
from settings import MODEL_NAME, RESERVED_MODEL_NAMES, ConfigError, form_value, parse_model

CHUNK = 1 << 16
MAX_FIELD_BYTES = 256  # a setting's value
MAX_SETTINGS = 32
TURN_ON = ("model management needs access control: create a token with `python -m "
           "service.web.tokens create NAME --admin`, set auth.tokens_file in the config "
           "(the command says so) and restart")


def _require_admin(request: web.Request) -> None:
    """403 unless the caller's token was made with ``--admin`` (with access control off:
    403 with how to turn it on)."""
    if request.app.get(keys.auth_key) is None:
        raise ApiError(403, "forbidden", TURN_ON)
    require_admin(request, "manage models")


def _servers(request: web.Request) -> ModelServers:
    return request.app[keys.servers_key]


async def get_model(request: web.Request) -> web.Response:
    """GET /api/models/{name}: state, version, ready, error, classes, settings."""
    _require_admin(request)
    servers = _servers(request)
    return web.json_response(servers.describe(servers.get(request.match_info["name"])))


async def delete_model(request: web.Request) -> web.Response:
    """DELETE /api/models/{name}: drains (requests in flight finish), then removes it
    and its kept files; the default model: 409."""
    _require_admin(request)
    name = request.match_info["name"]
    await _servers(request).remove(name)
    return web.json_response({"name": name, "state": "removed"})


async def put_model(request: web.Request) -> web.Response:
    """PUT /api/models/{name}: create the model or replace it (202, its state)."""
    _require_admin(request)
    name = request.match_info["name"]
    config = request.app[keys.config_key]
    _checked_name(name)
    servers = _servers(request)
    store = servers.store
    if store is None:
        raise ApiError(409, "conflict", "this service keeps no models (storage.models_dir)")
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       "send multipart/form-data with the files cfg, weights and names")
    try:
        folder = await asyncio.to_thread(store.incoming)
    except OSError as exc:
        raise _storage_error(exc) from exc
    try:
        settings = await _receive(request, folder)
        model = _checked(name, {**settings, **{role: str(path) for role, path
                                               in files_in(folder).items()}}, config)
        await asyncio.to_thread(_check_files, folder)
        paths = await asyncio.to_thread(store.keep, name, folder)
    except OSError as exc:  # the disk: full, read-only
        await asyncio.to_thread(store.discard, folder)
        raise _storage_error(exc) from exc
    except BaseException:
        await asyncio.to_thread(store.discard, folder)
        raise
    model = _checked(name, {**settings, **{role: str(path) for role, path in paths.items()}},
                     config)
    server = servers.put(model)
    return web.json_response(servers.describe(server), status=202)


def _storage_error(exc: OSError) -> ApiError:
    return ApiError(503, "storage_unavailable", f"the model cannot be kept: "
                    f"{exc.strerror or exc}", {"Retry-After": RETRY_AFTER_S})


def _checked_name(name: str) -> None:
    """400 for a name a model cannot have, before the body is read."""
    if not MODEL_NAME.fullmatch(name) or name in RESERVED_MODEL_NAMES:
        raise ApiError(400, "bad_parameter", "a model name is 1-64 letters, digits, '_', '.' "
                       "or '-' (not 'list')")


def _checked(name: str, raw: dict[str, Any], config: Any) -> Any:
    try:
        model, default = parse_model(name, raw, config.workers, key="")
    except ConfigError as exc:
        raise ApiError(400, "bad_parameter", str(exc).removeprefix(": ")) from None
    if default:
        raise ApiError(400, "bad_parameter", "default: the default model is set in the config")
    return model


def _check_files(folder: Path) -> None:
    """The cfg parses (as Darknet's text format) and the names are UTF-8 text."""
    try:
        parse_cfg(folder / file_name("cfg"))
    except CfgError as exc:
        raise ApiError(400, "invalid_model", f"cfg: {exc}") from None
    try:
        (folder / file_name("names")).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_model", "names: not UTF-8 text") from None


async def _receive(request: web.Request, folder: Path) -> dict[str, Any]:
    """Stream the form: the files into ``folder``, the settings (YAML scalars) returned."""
    config = request.app[keys.config_key]
    limit = config.storage.max_model_bytes
    server = config.server
    seconds = max(server.request_timeout, limit / server.upload_min_rate)
    deadline = asyncio.get_running_loop().time() + seconds
    settings: dict[str, Any] = {}
    received: set[str] = set()
    async with paced(request, grace=server.upload_grace, min_rate=server.upload_min_rate,
                     deadline=deadline):
        try:
            await _read_parts(request, folder, settings, received, limit)
        except (ValueError, AssertionError, HttpProcessingError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {message}") from exc
        except ConnectionResetError:
            raise ApiError(499, "client_closed_request",
                           "the client closed the connection during the upload") from None
    missing = [role for role in ROLES if role not in received]
    if missing:
        raise ApiError(400, "missing_field", f"missing file(s): {', '.join(missing)}")
    return settings


async def _read_parts(request: web.Request, folder: Path, settings: dict[str, Any],
                      received: set[str], limit: int) -> None:
    total = 0
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise ApiError(400, "bad_request", "a part without a name")
        if part.name in ROLES:
            if part.name in received:
                raise ApiError(400, "bad_request", f"{part.name}: sent twice")
            received.add(part.name)
            path = folder / file_name(part.name, _suffix(part))
            total = await _save(part, path, total, limit)
        elif len(settings) >= MAX_SETTINGS:
            raise ApiError(400, "bad_request", f"more than {MAX_SETTINGS} settings")
        else:
            settings[part.name] = _setting(part.name, await _small(part))


def _suffix(part: BodyPartReader) -> str:
    """The weights' format, told by their file name's suffix (as in the config)."""
    if part.name != "weights":
        return ""
    suffix = Path(part.filename or "").suffix.lower()
    known = (*DARKNET_SUFFIXES, *TORCH_SUFFIXES)
    if suffix not in known:
        raise ApiError(400, "invalid_model", f"weights: the file name must end in one of "
                       f"{', '.join(known)} (Darknet or PyTorch weights), got {suffix!r}")
    return suffix


async def _save(part: BodyPartReader, path: Path, total: int, limit: int) -> int:
    with path.open("wb") as handle:
        while chunk := await part.read_chunk(CHUNK):
            total += len(chunk)
            if total > limit:
                raise ApiError(413, "payload_too_large", f"the model's files exceed "
                               f"storage.max_model_mb ({limit / (1 << 20):g} MiB)")
            handle.write(chunk)
    return total


async def _small(part: BodyPartReader) -> str:
    data = b""
    while chunk := await part.read_chunk(MAX_FIELD_BYTES + 1):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError(400, "bad_parameter", f"{part.name}: longer than "
                           f"{MAX_FIELD_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_parameter", f"{part.name}: not UTF-8 text") from None


def _setting(name: str, text: str) -> Any:
    """A form value as the config's YAML would read it (``0.5``, ``true``, ``416``)."""
    value = form_value(text)
    if isinstance(value, dict | list):
        raise ApiError(400, "bad_parameter", f"{name}: a single value, got {text[:40]!r}")
    return value
