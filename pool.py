"""The warm worker pool that runs the model, and keeps running it when workers die.

:class:`DetectorPool` owns ``max_workers`` worker processes (:mod:`worker_process`), each
served by one task that takes jobs from a shared queue. ``start()`` returns once every
worker is warm.

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
- **Event loops**: the workers are served from the loop that awaited ``start`` (the
  app's: a request reaches its worker without a hop between threads), or, with
  ``own_loop=True``, from the pool's own loop in a thread it owns. Either way
  ``start``/``detect``/``run``/``close`` may be awaited from any loop (a pool shared by
  tests that each run their own loop) and cancelling the caller cancels the job.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from multiprocessing.context import SpawnContext
from typing import Any, TypeVar

import worker
from model.errors import ImageDecodeError, ImageTooLargeError
from settings import WorkersConfig
from utils.metrics import PoolMetrics
from worker_process import WorkerDied, WorkerProcess

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


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware where the OS supports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(config: WorkersConfig) -> int:
    """The configured thread count, else cores shared evenly between workers."""
    if config.threads_per_worker is not None:
        return config.threads_per_worker
    return max(1, available_cores() // config.max_workers)


def lone_threads(config: WorkersConfig) -> int:
    """Threads for a job that runs while every other worker is idle: all the cores when
    the thread count is automatic (0 when configured: then a worker keeps its own)."""
    if config.threads_per_worker is not None or config.max_workers == 1:
        return 0
    return available_cores()


@dataclass(eq=False)  # identity: jobs are found in the queue by ``is``, never by value
class _Job:
    """A detect job (batchable unless ``solo``) or a ``("call", fn, args)`` message."""

    work: worker.DetectJob | tuple[Any, ...]
    future: asyncio.Future[Any]
    solo: bool = False
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def batchable(self) -> bool:
        return isinstance(self.work, worker.DetectJob) and not self.solo


class _JobQueue:
    """FIFO of jobs waiting for a worker; a job can be pushed to the front or withdrawn."""

    def __init__(self) -> None:
        self._jobs: deque[_Job] = deque()
        self._waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: _Job, *, front: bool = False) -> None:
        if front:
            self._jobs.appendleft(job)
        else:
            self._jobs.append(job)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def discard(self, job: _Job) -> None:
        # A membership test first: deque.remove of a missing item formats repr(item) into
        # its ValueError, and a job's repr holds the image (8 ms for a 500 KB JPEG).
        if job in self._jobs:  # not yet taken by a worker
            self._jobs.remove(job)

    def drain(self) -> list[_Job]:
        jobs = list(self._jobs)
        self._jobs.clear()
        return jobs

    async def wait(self) -> None:
        """Return once a job is queued."""
        while not self._jobs:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def get(self) -> _Job:
        await self.wait()
        return self._jobs.popleft()

    def take_batchable(self, limit: int) -> list[_Job]:
        """Up to ``limit`` batchable jobs from the head of the queue (stops at the first
        job that must run alone; skips jobs whose caller has gone)."""
        taken: list[_Job] = []
        while self._jobs and len(taken) < limit and self._jobs[0].batchable:
            job = self._jobs.popleft()
            if not job.future.done():
                taken.append(job)
        return taken


@dataclass
class PoolStats:
    """Counters since start (readiness, metrics and the reliability script read them)."""

    worker_deaths: int = 0
    restarts: int = 0
    retried_jobs: int = 0
    refused_images: int = 0
    last_death: str | None = field(default=None)


class DetectorPool:
    """``max_workers`` warm model workers fed from one queue."""

    def __init__(self, config: WorkersConfig, *, max_pixels: int, log_level: str = "INFO",
                 detect_fn: Callable[..., Any] | None = None, own_loop: bool = False) -> None:
        """``detect_fn``: a module-level function run in the workers instead of
        ``worker.detect_batch`` (tests inject faults with it). ``own_loop``: serve the
        workers from a loop in a thread of the pool's own, not from the caller's."""
        self.config = config
        self._own_loop = own_loop
        self.spec = worker.WorkerSpec(
            cfg=str(config.model_path.cfg), weights=str(config.model_path.weights),
            names=str(config.model_path.data), img_size=config.img_size, device=config.device,
            threads=threads_per_worker(config), max_pixels=max_pixels,
            backend=config.backend, onnx_cache_dir=str(config.onnx_cache_dir),
            max_batch_size=config.max_batch_size, lone_threads=lone_threads(config),
            log_level=log_level, detect_fn=detect_fn)
        # new -> starting -> ready <-> recovering; starting -> failed; any -> closed
        self.state = "new"
        self.error: str | None = None
        self.stats = PoolStats()
        self.metrics = PoolMetrics()
        self._ctx: SpawnContext = multiprocessing.get_context("spawn")
        self._procs: dict[int, WorkerProcess] = {}
        self._starting: dict[int, WorkerProcess] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._running: dict[int, list[_Job]] = {}
        self._queue = _JobQueue()
        self._poisoned: OrderedDict[str, None] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
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
    def workers(self) -> list[worker.WorkerInfo]:
        """The warm workers, by index."""
        return sorted((p.info for p in self._procs.values() if p.info is not None),
                      key=lambda info: info.index)

    def snapshot(self) -> dict[str, Any]:
        """Queue and fault figures for /readyz."""
        return {"state": self.state, "workers": len(self._procs),
                "max_workers": self.config.max_workers, "busy": len(self._running),
                "queued_jobs": len(self._queue), **asdict(self.stats)}

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Spawn every worker and return once all of them are warm."""
        if self.state != "new":
            raise RuntimeError(f"pool cannot start from state {self.state!r}")
        self.state = "starting"
        if not self._own_loop:
            self._loop = asyncio.get_running_loop()
            await self._start()
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="detector-pool",
                                        daemon=True)
        self._thread.start()
        await self._call(self._start())

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the pool's loop; cancelling the caller cancels it there."""
        if self._loop is None:
            coro.close()
            raise PoolUnavailable(self.error or "the detection workers are not running")
        if self._loop is asyncio.get_running_loop():
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    async def _start(self) -> None:
        self._start_task = asyncio.current_task()
        n = self.config.max_workers
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
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        if thread is None:  # served from the caller's loop
            try:
                await self._call(self._close(timeout))
            finally:
                self._loop = None
            return
        try:
            await self._call(self._close(timeout))
        finally:
            self._loop = None
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, timeout)
            if not thread.is_alive():
                loop.close()

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
        if self._thread is None:
            return  # the default executor is the loop owner's
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().shutdown_default_executor()
        except TimeoutError:
            log.warning("a write to a worker pipe is still blocked; leaving it behind")

    # ------------------------------------------------------------- jobs

    async def detect(self, data: bytes, *, conf_thres: float,
                     iou_thres: float) -> worker.DetectResult:
        """Run the model on one encoded image in a worker.

        Raises ImageDecodeError / ImageTooLargeError for bad input, ImageKilledWorker for
        an image that crashed two workers, PoolUnavailable when the pool is not serving.
        """
        if not self.accepting:
            raise PoolUnavailable(self.error or "the detection workers are not ready")
        answer = await self._call(self._detect(data, conf_thres, iou_thres))
        if isinstance(answer, worker.DetectFailure):
            if answer.kind == "too_large":
                raise ImageTooLargeError(answer.message)
            raise ImageDecodeError(answer.message)
        return answer

    async def _detect(self, data: bytes, conf_thres: float,
                      iou_thres: float) -> worker.DetectResult | worker.DetectFailure:
        if self._poisoned:
            digest = hashlib.sha256(data).hexdigest()
            if digest in self._poisoned:
                self.stats.refused_images += 1
                raise ImageKilledWorker(digest)
        job = worker.DetectJob(data, conf_thres, iou_thres)
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
        result: T = await self._call(self._submit(("call", fn, args)))
        return result

    async def _submit(self, work: worker.DetectJob | tuple[Any, ...], *,
                      solo: bool = False) -> Any:
        """Queue one job and wait for its answer; a ``solo`` job (a retry) goes to the
        front of the queue and runs alone."""
        if not self.accepting:
            raise PoolUnavailable(self.error or "the detection workers are not ready")
        job = _Job(work, asyncio.get_running_loop().create_future(), solo=solo)
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

    async def _next_batch(self) -> list[_Job]:
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

    async def _run_batch(self, proc: WorkerProcess, batch: list[_Job]) -> list[Any]:
        """One message to the worker: a ``call``, or the batch's detect jobs."""
        started = time.monotonic()
        for job in batch:
            self.metrics.observe_queue(started - job.queued_at)
        head = batch[0].work
        if not isinstance(head, worker.DetectJob):
            return [await proc.call(head, self.config.job_timeout)]
        # Alone at work (no other worker busy, nothing queued): the worker may use every
        # core; a job that arrives meanwhile shares them for the rest of this pass.
        lone = len(self._running) == 1 and len(self._queue) == 0
        answers = await proc.call(("detect", [job.work for job in batch], lone),
                                  self.config.job_timeout)
        timings = [a.inference_ms for a in answers if isinstance(a, worker.DetectResult)]
        if timings:
            self.metrics.observe_batch(len(timings), timings[0] / 1000.0)
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
        if len(self._procs) == self.config.max_workers and self.state == "recovering":
            self.state = "ready"
            self.error = None
        return proc


def _fail(batch: list[_Job], exc: BaseException) -> None:
    for job in batch:
        if not job.future.done():
            job.future.set_exception(exc)
