"""Models managed while serving: PUT, GET and DELETE /api/models/{name} (admin tokens
only), versions warmed beside the one serving, kept across restarts, the config's models
re-applied (SIGHUP's work) and a steady stream that none of it disturbs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp import FormData

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from main import init_app
from service.web.handlers.docs import load_openapi
from service.web import keys
from service.web.tokens import create_token
from tests.service.conftest import TINY_CFG, two_models
from tests.paths import DATA_DIR

JPEG = {"Content-Type": "image/jpeg"}


def check_schema(body: Any, name: str) -> None:
    """``body`` is what the OpenAPI document's schema ``name`` says."""
    document = Resource.from_contents(load_openapi(), default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openapi", document)
    Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{name}"},
                         registry=registry).validate(body)


@pytest.fixture(scope="module")
def other_tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second version of the colours model: other random weights."""
    from model.darknet import Darknet
    from model.weights import save_weights

    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("tiny-v2") / "tiny.pt"
    save_weights(Darknet(TINY_CFG, img_size=64), path)
    return path


def model_form(weights: Path | bytes, **settings: str) -> FormData:
    data = FormData()
    data.add_field("cfg", TINY_CFG.read_bytes(), filename="tiny.cfg")
    data.add_field("weights", weights if isinstance(weights, bytes) else weights.read_bytes(),
                   filename="tiny.pt")
    data.add_field("names", (DATA_DIR / "tiny.names").read_bytes(), filename="tiny.names")
    for name, value in {"img_size": "64", "conf_thres": "0.05", **settings}.items():
        data.add_field(name, value)
    return data


@pytest.fixture
def managed(make_config: Callable[..., Any], model_weights: Path, tiny_weights: Path,
            detector_pool: Any, colours_pool: Any, tmp_path: Path,
            aiohttp_client: Any) -> Callable[..., Any]:
    """Build a two-model app with access control on; its admin and plain tokens."""
    tokens = tmp_path / "tokens.json"
    admin = create_token(tokens, "ops", admin=True)
    plain = create_token(tokens, "ci")
    config = make_config({**two_models(model_weights, tiny_weights),
                          "auth": {"tokens_file": str(tokens)}})

    async def build() -> tuple[Any, dict[str, str], dict[str, str]]:
        pools = {"service-6cls": detector_pool, "colours": colours_pool}
        client = await aiohttp_client(await init_app(config, model_pools=pools))
        return (client, {"Authorization": f"Bearer {admin}"},
                {"Authorization": f"Bearer {plain}"})

    return build


async def test_with_access_control_off_the_routes_say_how_to_turn_it_on(client: Any) -> None:
    for method in ("GET", "PUT", "DELETE"):
        off = await client.request(method, "/api/models/service-6cls")
        assert off.status == 403, method
        message = (await off.json())["error"]["message"]
        assert "--admin" in message and "tokens_file" in message


async def test_only_admin_tokens_manage_models(managed: Callable[..., Any],
                                               tiny_weights: Path) -> None:
    app, admin, plain = await managed()
    for method, data in (("GET", None), ("PUT", model_form(tiny_weights)),
                         ("DELETE", None)):
        anonymous = await app.request(method, "/api/models/colours", data=data)
        assert anonymous.status == 401, method
        refused = await app.request(method, "/api/models/colours", headers=plain,
                                    data=model_form(tiny_weights) if data else None)
        assert refused.status == 403, method
        assert "--admin" in (await refused.json())["error"]["message"]
    described = await (await app.get("/api/models/colours", headers=admin)).json()
    check_schema(described, "Model")
    assert described["state"] == "ready" and described["ready"] is True
    assert described["classes"] == ["red", "green"] and len(described["version"]) == 16
    assert described["settings"]["img_size"] == 64 and described["error"] is None
    default = await app.delete("/api/models/service-6cls", headers=admin)
    assert default.status == 409
    assert (await default.json())["error"]["code"] == "default_model"
    unknown = await app.get("/api/models/nosuch", headers=admin)
    assert unknown.status == 404


async def test_bad_uploads_are_400s_and_nothing_is_kept(managed: Callable[..., Any],
                                                        tiny_weights: Path) -> None:
    app, admin, _ = await managed()
    store = app.server.app[keys.servers_key].store
    missing = FormData()
    missing.add_field("cfg", TINY_CFG.read_bytes(), filename="tiny.cfg")
    response = await app.put("/api/models/extra", data=missing, headers=admin)
    assert response.status == 400 and "weights" in (await response.json())["error"]["message"]
    for settings, word in (({"img_size": "65"}, "multiple of 32"),
                           ({"colour": "red"}, "unknown key"),
                           ({"conf_thres": "2"}, "conf_thres")):
        response = await app.put("/api/models/extra", data=model_form(tiny_weights, **settings),
                                 headers=admin)
        assert response.status == 400, settings
        assert word in (await response.json())["error"]["message"]
    bad_cfg = model_form(tiny_weights)
    bad_cfg._fields[0] = (bad_cfg._fields[0][0], bad_cfg._fields[0][1], b"[net]\nwidth=\x00oops")
    response = await app.put("/api/models/extra", data=bad_cfg, headers=admin)
    assert response.status == 400
    bad_name = await app.put("/api/models/list", data=model_form(tiny_weights), headers=admin)
    assert bad_name.status == 400
    assert "extra" not in app.server.app[keys.servers_key]
    assert not any(store.root.glob("*/*/model.cfg")), "nothing kept"


async def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
        managed: Callable[..., Any], portrait_jpeg: bytes) -> None:
    app, admin, _ = await managed()
    servers = app.server.app[keys.servers_key]
    before = servers.get("colours").version
    response = await app.put("/api/models/colours", data=model_form(b"not a checkpoint"),
                             headers=admin)
    assert response.status == 202
    await servers.get("colours").settled()
    described = await (await app.get("/api/models/colours", headers=admin)).json()
    assert described["version"] == before and described["ready"] is True
    assert "could not be loaded" in described["error"]
    detected = await app.post("/detect?model=colours", data=portrait_jpeg,
                              headers={**admin, **JPEG})
    assert detected.status == 200
    assert (await detected.json())["model_version"] == before
    check_schema(await detected.json(), "Record")


async def _stream(app: Any, headers: dict[str, str], model: str, image: bytes,
                  stop: asyncio.Event, outcomes: list[tuple[str, int, str | None]]) -> None:
    """Requests to ``model``, one after another, until ``stop``."""
    while not stop.is_set():
        response = await app.post(f"/detect?model={model}", data=image,
                                  headers={**headers, **JPEG})
        body = await response.json()
        outcomes.append((model, response.status, body.get("model_version")
                         if response.status == 200 else body["error"]["code"]))


async def test_adding_replacing_and_removing_fail_no_other_request(
        managed: Callable[..., Any], other_tiny_weights: Path, tiny_weights: Path,
        portrait_jpeg: bytes, make_config: Callable[..., Any], model_weights: Path,
        aiohttp_client: Any) -> None:
    app, admin, _ = await managed()
    servers = app.server.app[keys.servers_key]
    old_version = servers.get("colours").version
    stop = asyncio.Event()
    outcomes: list[tuple[str, int, str | None]] = []
    streams = [asyncio.create_task(_stream(app, admin, name, portrait_jpeg, stop, outcomes))
               for name in ("service-6cls", "colours")]
    try:
        # Add a model, then stream to it too.
        added = await app.put("/api/models/extra", data=model_form(tiny_weights),
                              headers=admin)
        assert added.status == 202
        check_schema(await added.json(), "Model")
        assert (await added.json())["state"] in ("loading", "new", "starting")
        await servers.get("extra").settled()
        assert servers.get("extra").ready, servers.get("extra").error
        extra: list[tuple[str, int, str | None]] = []
        streams.append(asyncio.create_task(
            _stream(app, admin, "extra", portrait_jpeg, stop, extra)))
        # Replace the colours model: warmed beside, then switched.
        replaced = await app.put("/api/models/colours", data=model_form(other_tiny_weights),
                                 headers=admin)
        assert replaced.status == 202
        await servers.get("colours").settled()
        new_version = servers.get("colours").version
        assert new_version != old_version and servers.get("colours").error is None
        while not any(o[0] == "colours" and o[2] == new_version for o in outcomes):
            await asyncio.sleep(0.05)
        while len(extra) < 3:
            await asyncio.sleep(0.05)
        # Remove the added model while requests go to it.
        removed = await app.delete("/api/models/extra", headers=admin)
        assert removed.status == 200
        assert (await app.get("/api/models/extra", headers=admin)).status == 404
        count = len(outcomes)
        while len(outcomes) < count + 4:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*streams)
    failed = [o for o in outcomes if o[1] != 200]
    assert not failed, failed
    assert {o[2] for o in outcomes if o[0] == "colours"} == {old_version, new_version}
    assert all(status in (200, 404, 503) for _, status, _ in extra), extra  # 503: mid-removal
    assert extra[-1] == ("extra", 404, "unknown_model")

    # Kept across a restart: the replaced colours (it wins over the config's) and no extra.
    store = servers.store
    assert (store.root / "colours" / "model.json").is_file()
    assert not (store.root / "extra").exists()
    await app.close()
    config = app.server.app[keys.config_key]
    again = await aiohttp_client(await init_app(config))
    restarted = again.server.app[keys.servers_key]
    assert restarted.names == ["service-6cls", "colours"]
    await again.server.app[keys.warmup_task_key]
    assert restarted.get("colours").version == new_version
    assert restarted.get("colours").model.conf_thres == 0.05


async def test_the_config_models_are_applied_again(managed: Callable[..., Any],
                                                   model_weights: Path, tiny_weights: Path,
                                                   make_config: Callable[..., Any]) -> None:
    """What SIGHUP does with a re-read config: add, reload, remove; kept models stay."""
    app, admin, _ = await managed()
    servers = app.server.app[keys.servers_key]
    overrides = two_models(model_weights, tiny_weights)
    overrides["models"]["more"] = {**overrides["models"]["colours"], "conf_thres": 0.2}
    del overrides["models"]["colours"]
    fresh = make_config(overrides)
    done = await servers.apply_config(fresh.models)
    assert done == {"added": ["more"], "reloaded": ["service-6cls"], "removed": ["colours"]}
    await servers.get("more").settled()
    assert servers.names == ["service-6cls", "more"] and servers.get("more").ready
    assert servers.get("more").model.conf_thres == 0.2
    assert (await app.get("/api/models/colours", headers=admin)).status == 404


async def test_a_malformed_upload_is_a_400_never_a_500(managed: Callable[..., Any]) -> None:
    app, admin, _ = await managed()
    for content_type, body in (
            ("multipart/form-data", b"no boundary"),
            ("multipart/form-data; boundary=x", b"--x\r\nbroken headers\r\n\r\n"),
            ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n"
                                                b"\r\nvalue\r\n--x--\r\n"),
            ("application/json", b"{}")):
        response = await app.put("/api/models/extra", data=body,
                                 headers={**admin, "Content-Type": content_type})
        assert 400 <= response.status < 500, (content_type, body, await response.text())
        assert (await response.json())["error"]["code"]
