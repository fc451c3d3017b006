"""A process that starts a two-worker pool, prints the worker pids and waits to be killed
(``test_workers_exit_when_their_parent_is_killed``)."""

from __future__ import annotations

import asyncio
import sys

from service.workers.pool import DetectorPool
from settings import load_config
from tests.paths import TEST_CONFIG


async def host(weights: str) -> None:
    config = load_config(TEST_CONFIG, env={}, overrides={
        "workers": {"max_workers": 2}, "models": {"service-6cls": {"weights": weights}}})
    pool = DetectorPool(config.workers, max_pixels=config.server.max_pixels,
                        model=config.default_model)
    await pool.start()
    sys.stdout.write(" ".join(str(info.pid) for info in pool.workers) + "\n")
    sys.stdout.flush()
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(host(sys.argv[1]))
