"""Dynamic batching in the pool and the ONNX Runtime backend in real worker processes.

One real worker (the small test network, random weights) behind a pool with
``max_batch_size`` 4 and ``max_queue_delay_ms`` 400; its job is
``tests.faults.detect_with_faults`` so that a batch can hold an image that kills it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytest_asyncio

from service.workers import protocol
from model.errors import ImageDecodeError
from service.workers.pool import DetectorPool, ImageKilledWorker
from tests.service.conftest import pool_config, shared_pool
from tests.faults import detect_with_faults, with_comment

DELAY_MS = 400
LOW_CONF = 0.01  # random weights: a low threshold gives plenty of boxes to compare


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def batching_pool(model_weights: Path) -> AsyncIterator[DetectorPool]:
    config = pool_config(model_weights, max_batch_size=4, max_queue_delay_ms=DELAY_MS)
    async for pool in shared_pool(config, detect_fn=detect_with_faults):
        yield pool


def scenes(count: int) -> list[bytes]:
    """Distinct JPEGs of different sizes (the batch letterboxes each its own way)."""
    rng = np.random.default_rng(7)
    images = []
    for i in range(count):
        h, w = 96 + 16 * i, 160 - 8 * i
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.circle(image, (w // 2, h // 2), 10 + i, (0, 0, 255), -1)
        images.append(cv2.imencode(".jpg", image)[1].tobytes())
    return images


async def detect(pool: DetectorPool, data: bytes, conf: float = LOW_CONF,
                 iou: float = 0.6) -> protocol.DetectResult:
    return await pool.detect(data, conf_thres=conf, iou_thres=iou)


def boxes(result: protocol.DetectResult) -> np.ndarray:
    return np.array([[*d.box, d.confidence, d.class_id]
                     for d in result.detections]).reshape(-1, 6)


def by_place(result: protocol.DetectResult) -> np.ndarray:
    rows = boxes(result)
    return rows[np.lexsort((rows[:, 1], rows[:, 0], rows[:, 5]))]


async def test_concurrent_jobs_run_as_one_batch_with_the_same_answers(
        batching_pool: DetectorPool) -> None:
    images = scenes(4)
    alone = [await detect(batching_pool, data) for data in images]
    assert [r.batch_size for r in alone] == [1, 1, 1, 1]

    batched = await asyncio.gather(*(detect(batching_pool, data) for data in images))
    assert [r.batch_size for r in batched] == [4, 4, 4, 4]
    assert len({r.inference_ms for r in batched}) == 1  # one forward pass
    for one, many in zip(alone, batched, strict=True):
        assert (one.width, one.height) == (many.width, many.height)
        assert len(one.detections) > 0
        np.testing.assert_allclose(boxes(one), boxes(many), rtol=1e-4, atol=1e-3)


async def test_a_lone_job_waits_at_most_the_queue_delay(batching_pool: DetectorPool) -> None:
    data = scenes(1)[0]
    started = time.monotonic()
    async with asyncio.timeout(60):  # never waits for a batch that will not fill
        result = await detect(batching_pool, data)
    assert result.batch_size == 1
    assert time.monotonic() - started >= DELAY_MS / 1000  # it waited the delay for more


async def test_batches_never_exceed_max_batch_size(batching_pool: DetectorPool) -> None:
    images = scenes(6)
    results = await asyncio.gather(*(detect(batching_pool, data) for data in images))
    sizes = sorted(r.batch_size for r in results)
    assert max(sizes) <= 4 and sum(1 / s for s in sizes) == pytest.approx(2)  # 4 + 2


async def test_each_job_keeps_its_own_thresholds(batching_pool: DetectorPool) -> None:
    data = scenes(1)[0]
    loose, strict = await asyncio.gather(detect(batching_pool, data, conf=LOW_CONF),
                                         detect(batching_pool, data, conf=0.9))
    assert loose.batch_size == strict.batch_size == 2
    assert len(loose.detections) > len(strict.detections)
    assert all(d.confidence > 0.9 for d in strict.detections)
    np.testing.assert_allclose(boxes(strict), boxes(await detect(batching_pool, data, conf=0.9)),
                               rtol=1e-4, atol=1e-3)


async def test_a_bad_image_spoils_only_its_own_job(batching_pool: DetectorPool) -> None:
    good = scenes(2)
    outcomes = await asyncio.gather(detect(batching_pool, good[0]),
                                    detect(batching_pool, b"\xff\xd8 not a jpeg"),
                                    detect(batching_pool, good[1]), return_exceptions=True)
    assert isinstance(outcomes[1], ImageDecodeError)
    assert [o.batch_size for o in (outcomes[0], outcomes[2])] == [2, 2]


async def test_an_image_that_kills_its_batch_is_refused_and_its_batch_mates_answered(
        batching_pool: DetectorPool) -> None:
    before = dict(batching_pool.snapshot())
    good = scenes(3)
    poison = with_comment(good[0], f"fault:crash {uuid.uuid4()}")
    outcomes = await asyncio.gather(*(detect(batching_pool, data)
                                      for data in (good[0], poison, good[1], good[2])),
                                    return_exceptions=True)
    assert isinstance(outcomes[1], ImageKilledWorker)
    answered = [outcomes[0], outcomes[2], outcomes[3]]
    assert all(isinstance(o, protocol.DetectResult) for o in answered), outcomes
    # The first death took the whole batch of 4; each job was retried alone, so the
    # good images were answered and only the poison killed a second worker.
    assert [o.batch_size for o in answered] == [1, 1, 1]
    after = batching_pool.snapshot()
    assert after["worker_deaths"] == before["worker_deaths"] + 2
    assert after["retried_jobs"] == before["retried_jobs"] + 4
    deadline = time.monotonic() + 120
    while not batching_pool.ready:
        assert time.monotonic() < deadline, "the pool did not recover"
        await asyncio.sleep(0.05)


async def test_onnxruntime_backend_in_a_worker_matches_torch(
        model_weights: Path, detector_pool: DetectorPool, tmp_path: Path) -> None:
    config = pool_config(model_weights, backend="onnxruntime",
                         onnx_cache_dir=str(tmp_path / "onnx"))
    pool = DetectorPool(config.workers, max_pixels=config.server.max_pixels,
                        model=config.default_model)
    await pool.start()
    try:
        assert [w.backend for w in pool.workers] == ["onnxruntime"]
        assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1
        assert [w.backend for w in detector_pool.workers] == ["torch"]
        for data in scenes(2):
            ours, reference = await detect(pool, data), await detect(detector_pool, data)
            assert len(ours.detections) == len(reference.detections) > 0
            # Near-equal confidences may come out in either order: compare as sets.
            np.testing.assert_allclose(by_place(ours), by_place(reference), rtol=1e-3, atol=0.05)
    finally:
        await pool.close(10)


async def test_int8_in_a_worker_finds_what_fp32_finds(
        model_weights: Path, detector_pool: DetectorPool, tmp_path: Path) -> None:
    """workers.precision: int8 in a real worker: the int8 graph is made and cached beside
    the fp32 export, and its boxes are the fp32 network's, give or take quantization."""
    config = pool_config(model_weights, backend="auto", precision="int8",
                         onnx_cache_dir=str(tmp_path / "onnx"))
    pool = DetectorPool(config.workers, max_pixels=config.server.max_pixels,
                        model=config.default_model)
    await pool.start()
    try:
        assert [(w.backend, w.precision) for w in pool.workers] == [("onnxruntime", "int8")]
        graphs = sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx"))
        assert len(graphs) == 2 and "-int8-" in graphs[0] and graphs[0].startswith(graphs[1][:-5])
        for data in scenes(2):
            ours, reference = await detect(pool, data), await detect(detector_pool, data)
            assert reference.detections, "random weights at a low threshold give boxes"
            close = sum(any(abs(a.confidence - b.confidence) < 0.05 and
                            max(abs(u - v) for u, v in zip(a.box, b.box)) < 3.0
                            for b in ours.detections) for a in reference.detections)
            assert close >= 0.8 * len(reference.detections)
    finally:
        await pool.close(10)


class _NoRepr:
    def __repr__(self) -> str:
        raise AssertionError("formatted the job's payload")


async def test_finished_jobs_leave_the_queue_without_formatting_their_image() -> None:
    # deque.remove of a missing item formats repr(item) into its ValueError: the queue
    # did that for every answered job (8 ms for a 500 KB image) until it tested first.
    from service.workers.queue import Job as _Job
    from service.workers.queue import JobQueue as _JobQueue

    queue = _JobQueue()
    taken = _Job(_NoRepr(), asyncio.get_running_loop().create_future())  # type: ignore[arg-type]
    waiting = _Job(_NoRepr(), asyncio.get_running_loop().create_future())  # type: ignore[arg-type]
    queue.put(waiting)
    queue.discard(taken)
    assert len(queue) == 1
    queue.discard(waiting)
    assert len(queue) == 0
    assert len(repr(protocol.DetectJob(b"\xff" * 500_000, 0.5, 0.5))) < 100


async def test_a_lone_job_uses_every_core_and_busy_workers_one_each(
        model_weights: Path, tmp_path: Path) -> None:
    from service.workers.threads import available_cores

    cores = available_cores()
    if cores < 2:
        pytest.skip("needs 2 cores to have more threads for a lone job")  # CI has 2+
    config = pool_config(model_weights, max_workers=2, threads_per_worker=None,
                         backend="onnxruntime", onnx_cache_dir=str(tmp_path / "onnx"))
    pool = DetectorPool(config.workers, max_pixels=config.server.max_pixels,
                        model=config.default_model)
    await pool.start()
    try:
        assert [(w.threads, w.lone_threads) for w in pool.workers] == [(cores // 2, cores)] * 2
        images = scenes(2)
        lone = await detect(pool, images[0])
        assert lone.threads == cores
        both = await asyncio.gather(*(detect(pool, data) for data in images * 3))
        assert min(r.threads for r in both) == cores // 2  # some ran while another was busy
        for result, data in zip(both, images * 3, strict=True):  # same answers either way
            if data == images[0]:
                np.testing.assert_allclose(by_place(result), by_place(lone), rtol=1e-4, atol=1e-3)
    finally:
        await pool.close(10)
