"""The HTTP API described: ``GET /openapi.json`` (OpenAPI 3.1, from
``service/web/openapi.yaml``) and ``GET /docs`` (rendered by Swagger UI, served from
``system/static/vendor``; no CDN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from service.web import keys
from service.web.handlers import pages

OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


def load_openapi(path: Path = OPENAPI_PATH) -> dict[str, Any]:
    """The OpenAPI document (read once, at start-up)."""
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json"""
    return web.json_response(request.app[keys.openapi_key])


async def docs(request: web.Request) -> web.Response:
    """GET /docs: the API reference page."""
    return pages.render("docs.html", request, {"nav": "docs"})
