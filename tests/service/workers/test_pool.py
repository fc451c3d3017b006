"""The process pool: every worker warm before ready, typed errors, SIGINT, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from service.web import keys
from service.workers import child
from main import init_app
from model.errors import ImageDecodeError, ImageTooLargeError
from service.workers.pool import DetectorPool, PoolUnavailable
from service.workers.threads import available_cores, threads_per_worker
from settings import Config
from tests.helpers import alive, ignores


async def wait_ready(client: Any, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get("/readyz")
        if response.status == 200:
            return await response.json()
        assert response.status == 503
        await asyncio.sleep(0.2)
    raise AssertionError("the app did not become ready")


def test_threads_default_to_cores_per_worker(test_config: Config) -> None:
    workers = test_config.workers
    auto = dataclasses.replace(workers, threads_per_worker=None, max_workers=1)
    assert threads_per_worker(auto) == available_cores()
    many = dataclasses.replace(auto, max_workers=available_cores() * 4)
    assert threads_per_worker(many) == 1
    assert threads_per_worker(dataclasses.replace(workers, threads_per_worker=3)) == 3


async def test_app_owned_pool_warms_every_worker_then_stops_them(
        make_config: Any, portrait_jpeg: bytes, aiohttp_client: Any) -> None:
    config = make_config({"workers": {"max_workers": 2, "threads_per_worker": None}})
    client = await aiohttp_client(await init_app(config))
    server = client.server.app[keys.servers_key].default

    first = await client.get("/readyz")  # spawning and loading takes seconds
    assert first.status == 503
    assert (await first.json())["checks"]["workers"] in ("loading", "starting")
    assert (await client.post("/detect", data=portrait_jpeg,
                              headers={"Content-Type": "image/jpeg"})).status == 503

    body = await wait_ready(client)
    pool = server.pool
    pids = [w["pid"] for w in body["workers"]]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert sorted(w.index for w in pool.workers) == [0, 1]
    assert all(w["device"] == "cpu" and w["warmup_ms"] > 0 for w in body["workers"])
    expected_threads = max(1, available_cores() // 2)
    assert all(w["threads"] == expected_threads for w in body["workers"])
    assert await pool.run(child.torch_threads) == expected_threads

    # Ctrl-C reaches the whole process group (and a service manager may send SIGTERM to
    # every process): workers leave shutdown to the parent.
    # Ignored signals are discarded when sent (nothing to wait for), so: ignored, then sent.
    for pid in pids:
        assert ignores(pid, signal.SIGINT) and ignores(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    assert all(alive(pid) for pid in pids)

    # Both workers serve; bad input comes back as a 400, and nobody dies.
    jpeg = {"Content-Type": "image/jpeg"}
    responses = await asyncio.gather(
        *(client.post("/detect", data=portrait_jpeg, headers=jpeg) for _ in range(4)),
        client.post("/detect", data=portrait_jpeg[:3000], headers=jpeg))
    assert [r.status for r in responses] == [200, 200, 200, 200, 400]
    assert all(alive(pid) for pid in pids) and pool.ready

    await client.close()
    assert pool.state == "closed"
    assert not any(alive(pid) for pid in pids)


async def test_unloadable_model_fails_start_with_the_reason(test_config: Config,
                                                            tmp_path: Path) -> None:
    garbage = tmp_path / "broken.pt"
    garbage.write_bytes(os.urandom(4096))
    model = dataclasses.replace(test_config.default_model, weights=garbage)
    pool = DetectorPool(test_config.workers, max_pixels=1000, model=model)
    with pytest.raises(PoolUnavailable, match="worker 0 could not load the model: .*broken.pt"):
        await pool.start()
    assert pool.state == "failed" and not pool.ready
    assert "broken.pt" in (pool.error or "")
    with pytest.raises(PoolUnavailable):
        await pool.detect(b"\xff\xd8\xff", conf_thres=0.5, iou_thres=0.5)
    await pool.close(10)
    assert not any(alive(w.pid) for w in pool.workers)


async def test_detect_before_start_is_refused(test_config: Config) -> None:
    pool = DetectorPool(test_config.workers, max_pixels=1000, model=test_config.default_model)
    with pytest.raises(PoolUnavailable):
        await pool.detect(b"", conf_thres=0.5, iou_thres=0.5)
    await pool.close()
    with pytest.raises(RuntimeError, match="cannot start"):
        await pool.start()


async def test_shared_pool_reports_typed_errors(detector_pool: DetectorPool, portrait_jpeg: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        await detector_pool.detect(b"not an image", conf_thres=0.5, iou_thres=0.5)
    huge = cv2.imencode(".png", np.zeros((2100, 2100, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageTooLargeError, match="more than the 4000000 allowed"):
        await detector_pool.detect(huge, conf_thres=0.5, iou_thres=0.5)
    result = await detector_pool.detect(portrait_jpeg, conf_thres=0.5, iou_thres=0.5)
    assert (result.width, result.height) == (810, 1080)
    assert all(type(v) is float for d in result.detections for v in d.box)
