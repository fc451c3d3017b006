"""The OpenAPI document: valid OpenAPI 3.1, and describing exactly the routes the app
has (neither may drift from the other)."""

from __future__ import annotations

from typing import Any

from aiohttp.web_urldispatcher import PrefixedSubAppResource
from openapi_spec_validator import validate

from service.web.handlers.docs import load_openapi
from settings import BASE_DIR

METHODS = {"get", "post", "put", "patch", "delete"}


def test_the_document_is_valid_openapi_3_1() -> None:
    document = load_openapi()
    assert document["openapi"].startswith("3.1")
    validate(document)


async def test_the_document_describes_every_route_and_no_other(client: Any) -> None:
    routes = set()
    apps = [client.server.app]
    while apps:  # the app and its sub-apps (DeepStack's)
        app = apps.pop()
        for resource in app.router.resources():
            if isinstance(resource, PrefixedSubAppResource):
                apps.append(resource.get_info()["app"])
        for route in app.router.routes():
            path = route.resource.canonical if route.resource is not None else None
            if path is None or path.startswith("/static") or route.method in ("HEAD", "*"):
                continue
            routes.add((route.method.lower(), path))
    documented = {(method, path) for path, item in load_openapi()["paths"].items()
                  for method in item if method in METHODS}
    assert routes == documented, {"undocumented": routes - documented,
                                  "not routes": documented - routes}


async def test_served_json_and_docs_page(client: Any) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert await response.json() == load_openapi()
    page = await client.get("/docs")
    assert page.status == 200
    html = await page.text()
    assert 'id="swagger"' in html
    for asset in ("/static/vendor/swagger-ui/swagger-ui-bundle.js",
                  "/static/vendor/swagger-ui/swagger-ui.css", "/static/js/docs.js"):
        assert asset in html
        assert (BASE_DIR / "system" / asset.removeprefix("/")).is_file()
        served = await client.get(asset)
        assert served.status == 200
