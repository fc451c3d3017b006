"""The warm worker pool that runs the model, and keeps running it when workers die.

:class:`DetectorPool` owns one model's ``workers`` worker processes (:mod:`.process`,
running :mod:`.child`), each served by one task that takes jobs from a shared queue
(:mod:`.queue`). ``start()`` returns once every worker is warm. The app's pools, one
per model version, are owned by :class:`service.serving.server.ModelServer`.

Dynamic batching (Triton-style): a worker that becomes free takes the job at the head of
the queue and, with it, up to ``max_batch_size - 1`` more detect jobs; when fewer are
queued it waits up to ``max_queue_delay_ms`` (from taking the first) for more to arrive,
then runs them all as one forward pass. With delay 0 a batch is whatever queued up while
every worker was busy: no added latency at low load, bigger batches under load.

Threads: each worker runs on ``threads_per_worker`` threads (cores / workers when not
configured), except that a batch started while every other worker is idle and nothing is
queued may use all the cores (``lone_threads``): a lone request is as fast as on a
single wide worker, and a busy service keeps one thread per worker.

Faults and load:

- **A worker dies** (killed, out of memory, a native crash) or hangs past
  ``job_timeout``: its jobs (the whole batch) fail with ``WorkerDied``, the slot is
  refilled with a fresh worker (re-warmed, retried with back-off if the model will not
  load) and the pool is ``recovering`` (not ready) until it is; the other workers keep
  serving. ``detect`` retries a job whose worker died once, at the front of the queue
  and alone (never in a batch, so one poisonous image cannot take its batch-mates down
  twice); an image whose job kills a second worker is refused with
  :class:`ImageKilledWorker`, and remembered (by SHA-256) so that sending it again is
  refused without running it.
- **Cancellation**: a job whose caller is cancelled (request timeout, client gone) is
  taken off the queue if no worker has started it.
- **Event loop**: the workers are served from the loop that awaited ``start`` (the
  app's: a request reaches its worker without a hop between threads); every call must
  come from that loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from multiprocessing.context import SpawnContext
from typing import Any, TypeVar

from prometheus_client.core import Metric

from model.tiles import TileSetting
from service.workers import stats
from service.workers.process import WorkerDied, WorkerProcess
from service.workers.protocol import DetectFailure, DetectJob, DetectResult, WorkerInfo, WorkerSpec
from service.workers.queue import Job, JobQueue
from service.workers.threads import lone_threads, threads_per_worker
from settings import ModelConfig, WorkersConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

POISON_MEMORY = 1024  # images remembered as having killed two workers
RESTART_BACKOFF_S = (0.5, 30.0)  # first and longest wait between failed restarts
STOP_TIMEOUT_S = 10.0


class PoolUnavailable(RuntimeError):
    """The pool is not warm yet, has failed or is closed."""


class ImageKilledWorker(RuntimeError):
    """This image's job killed a worker twice; it is refused, not retried again."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"the image (sha256 {sha256[:16]}…) crashed the detector twice and "
                         "is refused")
        self.sha256 = sha256


class DetectorPool:
    """One model's warm workers (``model.workers`` of them) fed from one queue."""

    def __init__(self, config: WorkersConfig, *, max_pixels: int,
                 model: ModelConfig, total_workers: int | None = None,
                 log_level: str = "INFO", detect_fn: Callable[..., Any] | None = None,
                 metrics: stats.PoolMetrics | None = None) -> None:
        """``model``: what it serves;
        ``total_workers``: the workers of every model, which share the cores (default: this
        pool's). ``detect_fn``: a module-level function run in the workers instead of
        ``child.detect_batch`` (tests inject faults with it). ``metrics``: histograms that
        outlive the pool (its model server's, kept across versions)."""
        self.config = config
        self.model = model
        total = total_workers or self.model.workers
        self.spec = WorkerSpec(
            cfg=str(self.model.cfg), weights=str(self.model.weights),
            names=str(self.model.names), img_size=self.model.img_size, device=config.device,
            threads=threads_per_worker(config, total), max_pixels=max_pixels,
            backend=config.backend, onnx_cache_dir=str(config.onnx_cache_dir),
            precision=self.model.precision,
            max_batch_size=config.max_batch_size, lone_threads=lone_threads(config, total),
            log_level=log_level, detect_fn=detect_fn)
        # new -> starting -> ready <-> recovering; starting -> failed; any -> closed
        self.state = "new"
        self.error: str | None = None
        self.stats = stats.PoolStats()
        self.metrics = metrics if metrics is not None else stats.PoolMetrics(self.model.name)
        self._ctx: SpawnContext = multiprocessing.get_context("spawn")
        self._procs: dict[int, WorkerProcess] = {}
        self._starting: dict[int, WorkerProcess] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._running: dict[int, list[Job]] = {}
        self._queue = JobQueue()
        self._poisoned: OrderedDict[str, None] = OrderedDict()
        self._start_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- state

    @property
    def ready(self) -> bool:
        """Every worker is warm."""
        return self.state == "ready"

    @property
    def accepting(self) -> bool:
        """Jobs are taken (while a dead worker is replaced, the others serve)."""
        return self.state in ("ready", "recovering")

    @property
    def model_name(self) -> str | None:
        infos = self.workers
        return infos[0].model if infos else None

    @property
    def workers(self) -> list[WorkerInfo]:
        """The warm workers, by index."""
        return sorted((p.info for p in self._procs.values() if p.info is not None),
                      key=lambda info: info.index)

    def snapshot(self) -> dict[str, Any]:
        """Queue and fault figures for /readyz."""
        return {"state": self.state, "workers": len(self._procs),
                "max_workers": self.model.workers, "busy": len(self._running),
                "queued_jobs": len(self._queue), **asdict(self.stats)}

    def collect(self) -> Iterator[Metric]:
        """The pool's figures as Prometheus metric families (read at each scrape)."""
        yield from stats.families(self.model.name, self.stats, self.snapshot(), self.ready)
        yield from self.metrics.collect()

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Spawn every worker and return once all of them are warm."""
        if self.state != "new":
            raise RuntimeError(f"pool cannot start from state {self.state!r}")
        self.state = "starting"
        await self._start()

    async def _start(self) -> None:
        self._start_task = asyncio.current_task()
        n = self.model.workers
        log.info("starting %d worker(s), %d torch thread(s) each, device %s",
                 n, self.spec.threads, self.spec.device)
        procs = {i: WorkerProcess(self._ctx, self.spec, i) for i in range(n)}
        self._starting = procs
        for proc in procs.values():
            proc.start()
        outcomes = await asyncio.gather(
            *(proc.wait_ready(self.config.warmup_timeout) for proc in procs.values()),
            return_exceptions=True)
        self._starting = {}
        problem = None
        for index, outcome in zip(procs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                problem = problem or f"workers failed to start: {outcome}"
            elif outcome.error is not None:
                problem = problem or f"worker {index} could not load the model: {outcome.error}"
        if problem is not None:
            self.state = "failed"
            self.error = problem
            log.error("%s", problem)
            await asyncio.gather(*(proc.stop(STOP_TIMEOUT_S) for proc in procs.values()))
            raise PoolUnavailable(problem)
        self._procs = dict(procs)
        for index, proc in procs.items():
            self._serve(index, proc)
            info = proc.info
            assert info is not None
            log.info("worker %d (pid %d) warm on %s in %.0f ms", index, info.pid,
                     info.device, info.warmup_ms)
        if self.state == "starting":  # not closed meanwhile
            self.state = "ready"

    async def close(self, timeout: float = 30.0) -> None:
        """Stop the workers: queued and running jobs fail with PoolUnavailable."""
        self.state = "closed"
        await self._close(timeout)

    async def _close(self, timeout: float) -> None:
        current = asyncio.current_task()
        tasks = [task for task in (self._start_task, *self._tasks.values())
                 if task is not None and task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        closed = PoolUnavailable("the detection workers have stopped")
        running = [job for batch in self._running.values() for job in batch]
        for job in [*self._queue.drain(), *running]:
            if not job.future.done():
                job.future.set_exception(closed)
        self._running.clear()
        procs = [*self._procs.values(), *self._starting.values()]
        self._procs, self._starting = {}, {}
        await asyncio.gather(*(proc.stop(timeout) for proc in procs))
        self.state = "closed"
        if procs:
            log.info("detection workers stopped")

    # ------------------------------------------------------------- jobs

    async def detect(self, data: bytes, *, conf_thres: float | None = None,
                     iou_thres: float | None = None, agnostic: bool | None = None,
                     max_det: int | None = None,
                     tiles: TileSetting | None = None) -> DetectResult:
        """Run the model on one encoded image in a worker (thresholds, NMS settings and
        tiles left out: the model's). The windows of a tiled photo run in the worker as
        one batch, with the other images of its batch.

        Raises the image's ``model.errors.ImageError`` (ImageDecodeError,
        ImageTooLargeError) for bad input, ImageKilledWorker for an image that crashed two
        workers, PoolUnavailable when the pool is not serving.
        """
        if not self.accepting:
            raise PoolUnavailable(self.error or "the detection workers are not ready")
        model = self.model
        job = DetectJob(data, model.conf_thres if conf_thres is None else conf_thres,
                        model.iou_thres if iou_thres is None else iou_thres,
                        model.agnostic_nms if agnostic is None else agnostic,
                        model.max_det if max_det is None else max_det,
                        str(model.tiles if tiles is None else tiles))
        answer = await self._detect(job)
        if isinstance(answer, DetectFailure):
            raise answer.error()
        return answer

    async def _detect(self, job: DetectJob) -> DetectResult | DetectFailure:
        data = job.data
        if self._poisoned:
            digest = hashlib.sha256(data).hexdigest()
            if digest in self._poisoned:
                self.stats.refused_images += 1
                raise ImageKilledWorker(digest)
        try:
            return await self._submit(job)
        except WorkerDied as first:
            self.stats.retried_jobs += 1
            log.warning("%s; retrying its job once, alone", first)
            try:
                return await self._submit(job, solo=True)
            except WorkerDied as second:
                digest = hashlib.sha256(data).hexdigest()
                self._poisoned[digest] = None
                while len(self._poisoned) > POISON_MEMORY:
                    self._poisoned.popitem(last=False)
                self.stats.refused_images += 1
                log.error("image sha256=%s (%d bytes) killed two workers, refusing it: %s",
                          digest, len(data), second)
                raise ImageKilledWorker(digest) from second

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a module-level function in one of the workers (diagnostics, tests)."""
        result: T = await self._submit(("call", fn, args))
        return result

    async def _submit(self, work: DetectJob | tuple[Any, ...], *,
                      solo: bool = False) -> Any:
        """Queue one job and wait for its answer; a ``solo`` job (a retry) goes to the
        front of the queue and runs alone."""
        if not self.accepting:
            raise PoolUnavailable(self.error or "the detection workers are not ready")
        job = Job(work, asyncio.get_running_loop().create_future(), solo=solo)
        self._queue.put(job, front=solo)
        try:
            return await job.future
        finally:
            if not job.future.done():  # our caller gave up (timeout, client gone)
                job.future.cancel()
            self._queue.discard(job)  # drops it unless a worker has started it

    # ------------------------------------------------------------- workers

    def _serve(self, index: int, proc: WorkerProcess) -> None:
        task = asyncio.create_task(self._serve_slot(index, proc), name=f"worker-slot-{index}")
        task.add_done_callback(self._slot_ended)
        self._tasks[index] = task

    def _slot_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("a worker slot stopped unexpectedly", exc_info=task.exception())

    async def _serve_slot(self, index: int, proc: WorkerProcess) -> None:
        """Feed one worker from the queue, a batch at a time; replace it when it dies."""
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self._running[index] = batch
            try:
                answers = await self._run_batch(proc, batch)
            except WorkerDied as exc:
                _fail(batch, exc)
                proc = await self._replace(index, exc)
                continue
            except asyncio.CancelledError:
                _fail(batch, PoolUnavailable("the detection workers stopped"))
                raise
            except Exception as exc:  # noqa: BLE001 - WorkerCallError and the like: the callers'
                _fail(batch, exc)
                continue
            finally:
                self._running.pop(index, None)
            for job, answer in zip(batch, answers, strict=True):
                if not job.future.done():
                    job.future.set_result(answer)

    async def _next_batch(self) -> list[Job]:
        """The head job plus, if it is batchable, the batch that forms behind it."""
        first = await self._queue.get()
        if first.future.done():
            return []
        batch = [first]
        limit = self.config.max_batch_size
        if not first.batchable or limit == 1:
            return batch
        batch += self._queue.take_batchable(limit - 1)
        deadline = time.monotonic() + self.config.max_queue_delay_ms / 1000.0
        try:
            while len(batch) < limit and (left := deadline - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(left):
                        await self._queue.wait()
                except TimeoutError:
                    break
                more = self._queue.take_batchable(limit - len(batch))
                if not more:  # the head job must run alone: send what we have
                    break
                batch += more
        except asyncio.CancelledError:  # the pool is closing
            _fail(batch, PoolUnavailable("the detection workers stopped"))
            raise
        return [job for job in batch if not job.future.done()]

    async def _run_batch(self, proc: WorkerProcess, batch: list[Job]) -> list[Any]:
        """One message to the worker: a ``call``, or the batch's detect jobs."""
        started = time.monotonic()
        for job in batch:
            self.metrics.observe_queue(started - job.queued_at)
        head = batch[0].work
        if not isinstance(head, DetectJob):
            return [await proc.call(head, self.config.job_timeout)]
        # Alone at work (no other worker busy, nothing queued): the worker may use every
        # core; a job that arrives meanwhile shares them for the rest of this pass.
        lone = len(self._running) == 1 and len(self._queue) == 0
        answers = await proc.call(("detect", [job.work for job in batch], lone),
                                  self.config.job_timeout)
        results = [a for a in answers if isinstance(a, DetectResult)]
        if results:
            self.metrics.observe_batch(len(results), results[0].inference_ms / 1000.0,
                                       [r.passes for r in results])
        return list(answers)

    async def _replace(self, index: int, reason: WorkerDied) -> WorkerProcess:
        """Start a fresh worker in slot ``index``; retry with back-off until one is warm."""
        self._procs.pop(index, None)
        self.stats.worker_deaths += 1
        self.stats.last_death = str(reason)
        self.state = "recovering"
        self.error = str(reason)
        log.error("%s; starting a replacement", reason)
        delay, longest = RESTART_BACKOFF_S
        while True:
            proc = WorkerProcess(self._ctx, self.spec, index)
            self._starting[index] = proc
            try:
                proc.start()
                info = await proc.wait_ready(self.config.warmup_timeout)
                if info.error is not None:
                    raise WorkerDied(f"worker {index} could not load the model: {info.error}")
            except WorkerDied as exc:
                self.error = f"worker {index} could not be restarted: {exc}"
                log.error("%s; next try in %.1fs", self.error, delay)
                await proc.stop(STOP_TIMEOUT_S)
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
                continue
            except asyncio.CancelledError:  # the pool is closing
                proc.kill()
                await proc.stop(STOP_TIMEOUT_S)
                raise
            finally:
                self._starting.pop(index, None)
            break
        self._procs[index] = proc
        self.stats.restarts += 1
        log.info("worker %d replaced by pid %d, warm in %.0f ms", index, info.pid,
                 info.warmup_ms)
        if len(self._procs) == self.model.workers and self.state == "recovering":
            self.state = "ready"
            self.error = None
        return proc


def _fail(batch: list[Job], exc: BaseException) -> None:
    for job in batch:
        if not job.future.done():
            job.future.set_exception(exc)
