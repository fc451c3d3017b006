"""One server per model: a model at capacity refuses only its own requests, and the
other's latency does not move; a request is counted in images; every record carries the
version that made it."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio

from main import init_app
from service.web import keys
from service.workers.pool import DetectorPool
from tests.helpers import form
from tests.service.conftest import pool_config, shared_pool, two_models
from tests.faults import detect_with_faults, with_comment

JPEG = {"Content-Type": "image/jpeg"}
SAMPLES = 15


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def slow_pool(model_weights: Path) -> AsyncIterator[DetectorPool]:
    """The default model's worker, able to sleep on images marked fault:sleep=S (no CPU
    taken: the other model's latency is about queues, not cores)."""
    async for pool in shared_pool(pool_config(model_weights), detect_fn=detect_with_faults):
        yield pool


async def _client(make_config: Any, model_weights: Path, tiny_weights: Path,
                  slow_pool: DetectorPool, colours_pool: DetectorPool, aiohttp_client: Any,
                  **workers: Any) -> Any:
    overrides = two_models(model_weights, tiny_weights)
    overrides.setdefault("workers", {}).update(workers)
    config = make_config(overrides)
    pools = {"service-6cls": slow_pool, "colours": colours_pool}
    return await aiohttp_client(await init_app(config, model_pools=pools))


async def _latencies(client: Any, image: bytes) -> list[float]:
    latencies = []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        response = await client.post("/detect?model=colours", data=image, headers=JPEG)
        latencies.append(time.perf_counter() - started)
        assert response.status == 200, await response.text()
    return latencies


async def test_a_model_at_capacity_refuses_its_own_requests_only(
        make_config: Any, model_weights: Path, tiny_weights: Path, slow_pool: DetectorPool,
        colours_pool: DetectorPool, aiohttp_client: Any, portrait_jpeg: bytes) -> None:
    client = await _client(make_config, model_weights, tiny_weights, slow_pool, colours_pool,
                           aiohttp_client, max_queue=2)
    servers = client.server.app[keys.servers_key]
    busy = servers.get("service-6cls").admission
    assert busy.limit == 3  # 1 worker x batch 1 + 2 queued, in images

    await _latencies(client, portrait_jpeg)  # warm the path
    alone = statistics.median(await _latencies(client, portrait_jpeg))

    # One request of three slow images takes every place of the default model.
    slow = [with_comment(portrait_jpeg, f"fault:sleep=4 {uuid.uuid4()}") for _ in range(3)]
    holder = asyncio.create_task(client.post("/detect", data=form(
        *((f"s{n}.jpg", data, "image/jpeg") for n, data in enumerate(slow)))))
    deadline = time.monotonic() + 10
    while busy.in_progress < 3:
        assert time.monotonic() < deadline, "the slow request was never admitted"
        await asyncio.sleep(0.02)
    refused = await client.post("/detect", data=portrait_jpeg, headers=JPEG)
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert (await refused.json())["error"]["code"] == "overloaded"

    loaded = await _latencies(client, portrait_jpeg)
    assert busy.in_progress == 3, "the default model was saturated all along"
    assert statistics.median(loaded) <= 1.5 * alone + 0.005, (alone, loaded)
    response = await holder
    assert response.status == 200, await response.text()
    assert busy.in_progress == 0 and servers.get("colours").admission.rejected_total == 0


async def test_records_carry_their_model_version_into_history_and_pages(
        two_model_client: Any, portrait_jpeg: bytes) -> None:
    servers = two_model_client.server.app[keys.servers_key]
    version = servers.get("colours").version
    record = await (await two_model_client.post("/detect?model=colours", data=portrait_jpeg,
                                                headers=JPEG)).json()
    assert record["model_version"] == version and len(version) == 16
    history = await (await two_model_client.get("/api/detections?model=colours")).json()
    assert history["items"][0]["model_version"] == version
    assert version in await (await two_model_client.get(f"/detections/{record['id']}")).text()
    assert version in await (await two_model_client.get("/history?model=colours")).text()
    described = (await (await two_model_client.get("/api/models")).json())["models"]
    assert {m["name"]: m["version"] for m in described}["colours"] == version
    assert {m["name"]: m["classes"] for m in described}["colours"] == ["red", "green"]
