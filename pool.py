"""The warm process pool that runs the model.

:class:`DetectorPool` owns a ``ProcessPoolExecutor`` (spawn context, ``worker.init`` as
initializer). ``start()`` makes every worker start and waits until all are warm;
``detect()`` sends encoded bytes to a worker and maps its plain answer back to data or a
typed error; ``close()`` stops the workers, bounded in time.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import SpawnContext
from multiprocessing.synchronize import Barrier
from typing import Any, TypeVar

import worker
from model.errors import ImageDecodeError, ImageTooLargeError
from settings import WorkersConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


class PoolUnavailable(RuntimeError):
    """The pool is not warm yet, has failed or is closed."""


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware where the OS supports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(config: WorkersConfig) -> int:
    """The configured torch thread count, else cores shared evenly between workers."""
    if config.threads_per_worker is not None:
        return config.threads_per_worker
    return max(1, available_cores() // config.max_workers)


class DetectorPool:
    """A fixed number of warm model workers."""

    def __init__(self, config: WorkersConfig, *, max_pixels: int, log_level: str = "INFO") -> None:
        self.config = config
        self.spec = worker.WorkerSpec(
            cfg=str(config.model_path.cfg), weights=str(config.model_path.weights),
            names=str(config.model_path.data), img_size=config.img_size, device=config.device,
            threads=threads_per_worker(config), max_pixels=max_pixels, log_level=log_level)
        self.state = "new"  # new -> starting -> ready | failed -> closed
        self.error: str | None = None
        self.workers: list[worker.WorkerInfo] = []
        self._ctx: SpawnContext = multiprocessing.get_context("spawn")
        self._executor: ProcessPoolExecutor | None = None
        self._barrier: Barrier | None = None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def model_name(self) -> str | None:
        return self.workers[0].model if self.workers else None

    async def start(self) -> None:
        """Spawn every worker and return once all of them are warm."""
        if self.state != "new":
            raise RuntimeError(f"pool cannot start from state {self.state!r}")
        self.state = "starting"
        n = self.config.max_workers
        loop = asyncio.get_running_loop()
        log.info("starting %d worker(s), %d torch thread(s) each, device %s",
                 n, self.spec.threads, self.spec.device)
        self._barrier = self._ctx.Barrier(n)
        self._executor = ProcessPoolExecutor(
            max_workers=n, mp_context=self._ctx, initializer=worker.init,
            initargs=(self.spec, self._ctx.Value("i", 0), self._barrier))
        timeout = self.config.warmup_timeout
        # One ping per worker: they meet at the barrier, so each runs in its own process
        # and completes only when all n workers have passed the initializer (warm).
        pings = [loop.run_in_executor(self._executor, worker.ping, timeout) for _ in range(n)]
        try:
            infos = await asyncio.wait_for(asyncio.gather(*pings), timeout + 5.0)
        except asyncio.CancelledError:
            self._barrier.abort()
            raise
        except Exception as exc:  # BrokenProcessPool, BrokenBarrierError, TimeoutError, ...
            self._barrier.abort()
            self.state = "failed"
            self.error = f"workers failed to start: {type(exc).__name__}: {exc}"
            log.error("%s", self.error)
            raise PoolUnavailable(self.error) from exc
        self.workers = sorted(infos, key=lambda info: info.index)
        failed = [info for info in self.workers if info.error is not None]
        if failed:
            self.state = "failed"
            self.error = f"worker {failed[0].index} could not load the model: {failed[0].error}"
            log.error("%s", self.error)
            raise PoolUnavailable(self.error)
        if len({info.pid for info in self.workers}) != n:  # cannot happen with the barrier
            raise RuntimeError("worker warm-up reached fewer processes than max_workers")
        self.state = "ready"
        for info in self.workers:
            log.info("worker %d (pid %d) warm on %s in %.0f ms", info.index, info.pid,
                     info.device, info.warmup_ms)

    async def detect(self, data: bytes, *, conf_thres: float, iou_thres: float) -> worker.DetectResult:
        """Run the model on one encoded image in a worker.

        Raises ImageDecodeError / ImageTooLargeError for bad input, PoolUnavailable when no
        warm worker can take the job.
        """
        if self._executor is None or not self.ready:
            raise PoolUnavailable(self.error or "the detection workers are not ready")
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._executor, worker.detect, data,
                                                conf_thres, iou_thres)
        except BrokenProcessPool as exc:
            self.state = "failed"
            self.error = "a detection worker died"
            log.error("%s: %s", self.error, exc)
            raise PoolUnavailable(self.error) from exc
        if isinstance(answer, worker.DetectFailure):
            if answer.kind == "too_large":
                raise ImageTooLargeError(answer.message)
            raise ImageDecodeError(answer.message)
        return answer

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a module-level function of ``worker`` in the pool (diagnostics, tests)."""
        if self._executor is None:
            raise PoolUnavailable("the pool has not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop the workers: queued jobs are cancelled, running ones may finish."""
        executor, self._executor = self._executor, None
        self.state = "closed"
        if executor is None:
            return
        if self._barrier is not None:
            self._barrier.abort()  # release pings still waiting for a worker that never came
        try:
            await asyncio.wait_for(
                asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True), timeout)
        except TimeoutError:
            log.warning("workers did not stop within %.0fs; terminating them", timeout)
            for info in self.workers:
                try:
                    os.kill(info.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        log.info("detection workers stopped")
