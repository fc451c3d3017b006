"""The worker pool on uvloop (``server.event_loop: uvloop``): images larger than the
pipe's buffer go to the workers and back, again and again.

uvloop leaves a file descriptor it watched non-blocking; the next job's send (a
blocking send in a thread) then failed with EAGAIN, which the pool took for a dead
worker. The test suite otherwise runs on asyncio's own loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.workers.pool import DetectorPool
from tests.service.conftest import pool_config
from tests.faults import with_comment
from utils.event_loop import new_event_loop, uvloop_available

pytestmark = pytest.mark.skipif(not uvloop_available(), reason="uvloop is not installed")


def test_large_images_pass_the_worker_pipe_on_uvloop(model_weights: Path,
                                                     portrait_jpeg: bytes) -> None:
    config = pool_config(model_weights)
    large = portrait_jpeg
    for _ in range(24):  # a COM segment holds < 64 KiB
        large = with_comment(large, "x" * 60000)
    assert len(large) > 1 << 20  # more than a Unix socket's send buffer

    async def detect_several() -> list[int]:
        pool = DetectorPool(config.workers, max_pixels=config.server.max_pixels,
                        model=config.default_model)
        await pool.start()
        try:
            return [(await pool.detect(large)).width for _ in range(4)]
        finally:
            await pool.close(10)

    loop = new_event_loop("uvloop")
    try:
        assert type(loop).__module__.startswith("uvloop")
        widths = loop.run_until_complete(detect_several())
    finally:
        loop.close()
    assert len(set(widths)) == 1 and widths[0] > 0
