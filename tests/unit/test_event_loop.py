"""server.event_loop: validated at start-up; the loop it names is the one created."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from settings import ConfigError, load_config
from tests.paths import DATA_DIR, TEST_CONFIG
from utils.event_loop import new_event_loop, uvloop_available


def config(**server: Any) -> Any:
    weights = str(DATA_DIR / "service-6cls.cfg")  # any existing file passes validation
    return load_config(TEST_CONFIG, env={}, overrides={
        "server": server, "models": {"service-6cls": {"weights": weights}}})


def test_event_loop_setting_is_validated() -> None:
    assert config().server.event_loop == "asyncio"
    assert config(event_loop="AUTO").server.event_loop == "auto"
    with pytest.raises(ConfigError, match="server.event_loop: must be one of auto, asyncio, uvloop"):
        config(event_loop="trio")


def test_the_loop_named_is_the_loop_made() -> None:
    loop = new_event_loop("asyncio")
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    auto = new_event_loop("auto")
    try:
        assert type(auto).__module__.startswith("uvloop" if uvloop_available() else "asyncio")
        assert auto.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        auto.close()


@pytest.mark.skipif(not uvloop_available(), reason="uvloop is not installed")
def test_uvloop_runs_a_server_and_a_client() -> None:
    """aiohttp on uvloop: a real request over a real socket."""
    from aiohttp import ClientSession, web

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def serve_once() -> str:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with ClientSession() as session, session.get(f"http://127.0.0.1:{port}/") as r:
                return await r.text()
        finally:
            await runner.cleanup()

    loop = new_event_loop("uvloop")
    try:
        assert type(loop).__module__.startswith("uvloop")
        assert loop.run_until_complete(serve_once()) == '{"ok": true}'
    finally:
        loop.close()
