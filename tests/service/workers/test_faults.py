"""Worker death, poison images, overload, timeouts and clients that leave.

A real service (aiohttp test server, real PostgreSQL) in front of a real pool of one
worker process whose job is ``tests.faults.detect_with_faults``: images marked in a JPEG
comment make the worker sleep or SIGKILL itself; kills from outside are real SIGKILLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from service.web import keys
from main import init_app
from service.workers.pool import DetectorPool, ImageKilledWorker
from settings import BASE_DIR
from tests.service.conftest import pool_config, shared_pool
from tests.faults import detect_with_faults, with_comment

JPEG = {"Content-Type": "image/jpeg"}


def alive(pid: int) -> bool:
    """Running (a zombie left for a parent that never reaps it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``predicate()``; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def faulty_pool(model_weights: Path) -> AsyncIterator[DetectorPool]:
    async for pool in shared_pool(pool_config(model_weights), detect_fn=detect_with_faults):
        yield pool


@pytest.fixture
async def make_client(make_config: Callable[..., Any], faulty_pool: DetectorPool,
                      aiohttp_client: Any) -> Callable[..., Any]:
    # A previous test may have left the pool replacing a worker.
    await wait_until(lambda: faulty_pool.ready, 120, "the pool to be ready")

    async def build(overrides: dict[str, Any] | None = None) -> Any:
        app = await init_app(make_config(overrides), detector_pool=faulty_pool)
        return await aiohttp_client(app)

    return build


async def count_records(client: Any) -> int:
    return int(await client.server.app[keys.db_key].fetchval("SELECT count(*) FROM detections"))


async def test_killed_worker_is_replaced_and_its_request_retried(
        make_client: Callable[..., Any], faulty_pool: DetectorPool, portrait_jpeg: bytes) -> None:
    client = await make_client()
    before = dict(faulty_pool.snapshot())
    old_pid = faulty_pool.workers[0].pid
    slow = with_comment(portrait_jpeg, f"fault:sleep=0.8 {uuid.uuid4()}")
    request = asyncio.create_task(client.post("/detect", data=slow, headers=JPEG))
    await wait_until(lambda: faulty_pool.snapshot()["busy"] == 1, 10, "the job to start")

    os.kill(old_pid, signal.SIGKILL)  # kill -9 while it works on the request
    await wait_until(lambda: faulty_pool.state == "recovering", 5, "the death to be noticed")
    response = await client.get("/readyz")
    assert response.status == 503 and response.headers["Retry-After"]
    body = await response.json()
    assert body["checks"]["workers"] == "recovering"
    assert "died" in body["error"]["message"]

    # The request was retried on the replacement worker and answered normally.
    response = await request
    assert response.status == 200, await response.text()
    record = await response.json()
    assert record["sha256"] == hashlib.sha256(slow).hexdigest()
    assert await count_records(client) == 1

    # The deadline: spawn + torch import + model load + warm-up.
    await wait_until(lambda: faulty_pool.ready, 60, "the pool to be ready again")
    ready = await (await client.get("/readyz")).json()
    assert ready["status"] == "ready"
    new_pid = ready["workers"][0]["pid"]
    assert new_pid != old_pid and alive(new_pid) and not alive(old_pid)
    after = faulty_pool.snapshot()
    assert after["worker_deaths"] == before["worker_deaths"] + 1
    assert after["restarts"] == before["restarts"] + 1
    assert after["retried_jobs"] == before["retried_jobs"] + 1


async def test_image_that_kills_twice_is_refused_not_retried_forever(
        make_client: Callable[..., Any], faulty_pool: DetectorPool, portrait_jpeg: bytes) -> None:
    client = await make_client()
    deaths = faulty_pool.stats.worker_deaths
    poison = with_comment(portrait_jpeg, f"fault:crash {uuid.uuid4()}")
    response = await client.post("/detect", data=poison, headers=JPEG)
    assert response.status == 422, await response.text()
    body = await response.json()
    assert body["error"]["code"] == "image_crashed_worker"
    assert "crashed the detector twice" in body["error"]["message"]
    assert faulty_pool.stats.worker_deaths == deaths + 2

    # Sent again, it is refused without running: no third death.
    response = await client.post("/detect?filename=again.jpg", data=poison, headers=JPEG)
    assert response.status == 422
    assert "again.jpg" in (await response.json())["error"]["message"]
    await wait_until(lambda: faulty_pool.ready, 60, "the pool to be ready again")
    assert faulty_pool.stats.worker_deaths == deaths + 2

    # Other images are served, and the poison left no record behind.
    response = await client.post("/detect", data=portrait_jpeg, headers=JPEG)
    assert response.status == 200
    assert await count_records(client) == 1


async def test_beyond_capacity_is_refused_at_once_with_retry_after(
        make_client: Callable[..., Any], faulty_pool: DetectorPool, portrait_jpeg: bytes) -> None:
    client = await make_client({"workers": {"max_queue": 1}})  # capacity: 1 worker + 1 queued
    admission = client.server.app[keys.servers_key].default.admission
    slow = [with_comment(portrait_jpeg, f"fault:sleep=1.5 {uuid.uuid4()}") for _ in range(2)]
    running = [asyncio.create_task(client.post("/detect", data=image, headers=JPEG))
               for image in slow]
    await wait_until(lambda: admission.in_progress == 2, 10, "two requests to be admitted")

    response = await client.post("/detect", data=portrait_jpeg, headers=JPEG)
    # Refused without waiting: answered while both places are still held.
    assert admission.in_progress == 2 and not any(task.done() for task in running)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "overloaded"

    assert [r.status for r in await asyncio.gather(*running)] == [200, 200]
    assert admission.in_progress == 0 and admission.rejected_total == 1
    ready = await (await client.get("/readyz")).json()
    assert ready["admission"]["limit"] == 2 and ready["admission"]["rejected_total"] == 1
    assert (await client.post("/detect", data=portrait_jpeg, headers=JPEG)).status == 200


async def test_request_waiting_past_its_timeout_gets_504_and_leaves_the_queue(
        make_client: Callable[..., Any], faulty_pool: DetectorPool, portrait_jpeg: bytes) -> None:
    client = await make_client({"server": {"request_timeout": 0.7}})
    long_job = with_comment(portrait_jpeg, f"fault:sleep=1.5 {uuid.uuid4()}")
    first = asyncio.create_task(client.post("/detect", data=long_job, headers=JPEG))
    await wait_until(lambda: faulty_pool.snapshot()["busy"] == 1, 10, "the job to start")
    second = asyncio.create_task(client.post("/detect", data=portrait_jpeg, headers=JPEG))
    await wait_until(lambda: faulty_pool.snapshot()["queued_jobs"] == 1, 5, "a queued job")

    for response in await asyncio.gather(first, second):
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "timeout"
        assert response.headers["Retry-After"]
    # The waiting job was dropped (while the other still runs); nothing is stored.
    await wait_until(lambda: faulty_pool.snapshot()["queued_jobs"] == 0, 0.5,
                     "the queued job to be dropped")
    assert faulty_pool.snapshot()["busy"] == 1
    await wait_until(lambda: faulty_pool.snapshot()["busy"] == 0, 10, "the worker to be idle")
    assert await count_records(client) == 0


async def test_client_that_disconnects_has_its_queued_work_dropped(
        make_client: Callable[..., Any], faulty_pool: DetectorPool, portrait_jpeg: bytes) -> None:
    client = await make_client()
    busy = with_comment(portrait_jpeg, f"fault:sleep=1.2 {uuid.uuid4()}")
    first = asyncio.create_task(client.post("/detect", data=busy, headers=JPEG))
    await wait_until(lambda: faulty_pool.snapshot()["busy"] == 1, 10, "the job to start")

    leaving = with_comment(portrait_jpeg, f"leaving {uuid.uuid4()}")
    with pytest.raises(TimeoutError):
        await client.session.post(client.make_url("/detect"), data=leaving, headers=JPEG,
                                  timeout=aiohttp.ClientTimeout(total=0.3))
    await wait_until(lambda: faulty_pool.snapshot()["queued_jobs"] == 0, 2,
                     "the queued job to be dropped")
    assert faulty_pool.snapshot()["busy"] == 1  # dropped while the worker was still busy

    assert (await first).status == 200
    await asyncio.sleep(0.3)
    pool = client.server.app[keys.db_key]
    assert await pool.fetchval("SELECT count(*) FROM detections") == 1
    assert await pool.fetchval("SELECT count(*) FROM detections WHERE sha256 = $1",
                               hashlib.sha256(leaving).hexdigest()) == 0
    assert client.server.app[keys.servers_key].default.admission.in_progress == 0


def test_workers_exit_when_their_parent_is_killed(model_weights: Path) -> None:
    """kill -9 of the service process takes its workers with it (no orphans)."""
    with subprocess.Popen([sys.executable, "-m", "tests.pool_host", str(model_weights)],
                          cwd=BASE_DIR, stdout=subprocess.PIPE, text=True) as host:
        try:
            assert host.stdout is not None
            line = host.stdout.readline()
            pids = [int(pid) for pid in line.split()]
            assert len(pids) == 2 and all(alive(pid) for pid in pids), line
        finally:
            host.kill()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)


async def test_hung_worker_is_killed_after_job_timeout(model_weights: Path,
                                                       portrait_jpeg: bytes) -> None:
    """A job that outlives ``job_timeout`` costs its worker; twice, and the image is refused."""
    config = pool_config(model_weights, job_timeout=0.5)
    pool = DetectorPool(config.workers, max_pixels=config.server.max_pixels,
                        model=config.default_model, detect_fn=detect_with_faults)
    await pool.start()
    try:
        first_pid = pool.workers[0].pid
        hang = with_comment(portrait_jpeg, "fault:sleep=30")
        with pytest.raises(ImageKilledWorker):
            await pool.detect(hang, conf_thres=0.5, iou_thres=0.5)
        assert pool.stats.worker_deaths == 2 and not alive(first_pid)
        assert "no answer within 0.5s; killed" in (pool.stats.last_death or "")
        await wait_until(lambda: pool.ready, 60, "the replacement worker")
        result = await pool.detect(portrait_jpeg, conf_thres=0.5, iou_thres=0.5)
        assert (result.width, result.height) == (810, 1080)
    finally:
        await pool.close(10)
