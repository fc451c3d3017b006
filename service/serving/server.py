"""One served model: the one object every API's detect work goes through.

A :class:`ModelServer` owns, for its model: the bounded queue (an
:class:`~utils.admission.Admission` counted in images: ``workers x max_batch_size +
workers.max_queue``), the version that serves (a warm :class:`~service.workers.pool.DetectorPool`,
which batches and runs the workers), warm-up, readiness, the version's content hash and
class names, and its metrics. A model at capacity refuses its own requests (503,
Retry-After) while the other models keep serving.

A new version (:meth:`ModelServer.load`) warms up in a pool of its own beside the one
that serves; once it is warm the switch is one assignment, so every request runs wholly
on one version. Requests in flight finish on the old version, whose workers stop once
it has drained. A version that fails to load leaves the old one serving; :attr:`error`
says why.

The path of one request: ``admit(n)`` (places for its n images, or QueueFull /
PoolUnavailable at once), then ``await detect(images, options)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from model.errors import ImageError
from model.tiles import TileSetting
from service.serving.options import DetectOptions
from service.serving.version import ModelVersion, read_version
from service.workers import stats
from service.workers.pool import DetectorPool, ImageKilledWorker, PoolUnavailable
from service.workers.protocol import DetectResult, WorkerInfo
from settings import ModelConfig
from utils.admission import Admission, Place

log = logging.getLogger(__name__)

# model settings, and the histograms kept across versions -> a pool not yet started
PoolFactory = Callable[[ModelConfig, stats.PoolMetrics], DetectorPool]
# called when a version starts serving (to keep it across restarts)
SwitchHook = Callable[[ModelConfig, str], None]


@dataclass(frozen=True)
class Detected:
    """What one request's images gave: the model, the version that ran every one of
    them, and a result per image in order."""

    model: str
    version: str
    results: list[DetectResult]


@dataclass(eq=False)
class _Loaded:
    """A warm version and the requests running on it."""

    model: ModelConfig
    version: ModelVersion
    pool: DetectorPool
    owned: bool  # closed with the server (False: a pool handed in by tests)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class ModelServer:
    """One model: its bounded queue, versions, warm-up, readiness and metrics."""

    def __init__(self, model: ModelConfig, *, make_pool: PoolFactory, max_batch_size: int,
                 max_queue: int, drain_timeout: float = 30.0,
                 pool: DetectorPool | None = None, on_switch: SwitchHook | None = None) -> None:
        """``pool``: serve this pool (already made, maybe warm) as the first version,
        left open on close (tests share warm pools between apps)."""
        self.name = model.name
        self._requested = model  # the settings last asked for
        self._make_pool = make_pool
        self._max_batch_size = max_batch_size
        self._max_queue = max_queue
        self._drain_timeout = drain_timeout
        self._shared_pool = pool
        self._on_switch = on_switch
        self.metrics = stats.PoolMetrics(model.name)
        self.admission = Admission(self._capacity(model), name=model.name)
        self._serving: _Loaded | None = None
        self._pending: str | None = None  # the version warming up beside
        self._load_task: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._load_error: str | None = None
        self._closing = False

    @property
    def shares_pool(self) -> bool:
        """It serves a pool handed in (already warm: started at once)."""
        return self._shared_pool is not None

    def _capacity(self, model: ModelConfig) -> int:
        return model.workers * self._max_batch_size + self._max_queue

    # ------------------------------------------------------------- state (the one place)

    @property
    def model(self) -> ModelConfig:
        """The settings of the version that serves (else of the one asked for)."""
        return self._serving.model if self._serving is not None else self._requested

    @property
    def version(self) -> str | None:
        return self._serving.version.version if self._serving is not None else None

    @property
    def classes(self) -> tuple[str, ...]:
        return self._serving.version.classes if self._serving is not None else ()

    @property
    def pool(self) -> DetectorPool | None:
        """The pool of the version that serves."""
        return self._serving.pool if self._serving is not None else None

    @property
    def state(self) -> str:
        """``loading`` (reading the first version's files), the serving version's pool's
        (``new``, ``starting``, ``ready``, ``recovering``, ``failed``), ``failed`` (its
        files could not be read), ``draining`` (being removed) or ``closed``."""
        if self._closing:
            return "draining" if self._serving is not None else "closed"
        if self._serving is None:
            if self._load_task is not None and not self._load_task.done():
                return "loading"
            return "failed" if self._load_error else "new"
        return self._serving.pool.state

    @property
    def ready(self) -> bool:
        """Every worker of the serving version is warm."""
        return not self._closing and self._serving is not None and self._serving.pool.ready

    @property
    def accepting(self) -> bool:
        """Requests are taken (while a dead worker is replaced, the others serve)."""
        return not self._closing and self._serving is not None \
            and self._serving.pool.accepting

    @property
    def error(self) -> str | None:
        """Why the last version asked for is not serving, or why the workers are not."""
        if self._load_error is not None:
            return self._load_error
        return self._serving.pool.error if self._serving is not None else None

    @property
    def pending(self) -> str | None:
        """The version warming up beside the one that serves, if any."""
        return self._pending

    @property
    def workers(self) -> list[WorkerInfo]:
        return self._serving.pool.workers if self._serving is not None else []

    def snapshot(self) -> dict[str, Any]:
        """Queue and fault figures (/readyz)."""
        pool = self._serving.pool.snapshot() if self._serving is not None else {}
        return {**pool, "state": self.state, "version": self.version,
                "admission": self.admission.snapshot()}

    def describe(self) -> dict[str, Any]:
        """What /api/models says of this model."""
        model = self.model
        workers = self.workers
        return {"name": self.name, "state": self.state, "ready": self.ready,
                "error": self.error, "version": self.version, "pending_version": self.pending,
                "classes": list(self.classes), "cfg": model.cfg.name,
                "weights": model.weights.name,
                "backend": workers[0].backend if workers else None,
                "settings": model_settings(model), **model_settings(model)}

    def collect(self) -> Iterator[Metric]:
        """The serving pool's figures, the admission's and the version (labelled)."""
        if self._serving is not None:
            yield from self._serving.pool.collect()
        else:
            yield from self.metrics.collect()
        yield from self.admission.collect()
        info = GaugeMetricFamily("yolo_model_version", "1 for the version that serves",
                                 labels=["model", "version"])
        if self.version is not None:
            info.add_metric([self.name, self.version], 1.0)
        yield info

    # ------------------------------------------------------------- requests

    def check(self) -> None:
        """Raise PoolUnavailable (not serving) or QueueFull (at capacity) at once: before
        a request body is read."""
        self._check_serving()
        self.admission.check()

    def admit(self, count: int) -> Place:
        """Places for ``count`` images (``with place:``), or PoolUnavailable / QueueFull."""
        self._check_serving()
        return self.admission.enter(count)

    def _check_serving(self) -> None:
        if not self.accepting:
            raise PoolUnavailable(self.error or f"the workers of model {self.name} are "
                                  f"{'warming up' if not self._closing else 'stopping'}")

    async def detect(self, images: Sequence[bytes], options: DetectOptions, *,
                     names: Sequence[str] | None = None) -> Detected:
        """Run every image on the version that serves now (all on that one, whatever
        switch happens meanwhile). The first failure in order is raised, its message
        prefixed with the image's name from ``names``."""
        self._check_serving()
        loaded = self._serving
        assert loaded is not None
        loaded.in_flight += 1
        loaded.idle.clear()
        try:
            results = await _detect_all(loaded.pool, images, options, names)
        finally:
            loaded.in_flight -= 1
            if loaded.in_flight == 0:
                loaded.idle.set()
        return Detected(self.name, loaded.version.version, results)

    # ------------------------------------------------------------- versions

    async def start(self) -> None:
        """Serve the first version: the pool handed in, as it is, or a new one, warm."""
        if self._shared_pool is not None:
            version = await asyncio.to_thread(read_version, self._requested)
            self._serving = _Loaded(self._requested, version, self._shared_pool, owned=False)
            return
        await self.load(self._requested)

    def load(self, model: ModelConfig) -> asyncio.Task[None]:
        """Warm ``model`` (same name, new files or settings) beside the version that
        serves and switch to it once warm; a load still warming is given up for this one.
        Returns the task (awaiting it waits for the outcome; it never raises)."""
        if model.name != self.name:
            raise ValueError(f"model {model.name} given to the server of {self.name}")
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        self._requested = model
        self._load_task = asyncio.create_task(self._load(model), name=f"load-{self.name}")
        return self._load_task

    async def settled(self) -> None:
        """Wait until no version is warming up."""
        while self._load_task is not None and not self._load_task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._load_task)

    async def _load(self, model: ModelConfig) -> None:
        try:
            version = await asyncio.to_thread(read_version, model)
        except (OSError, UnicodeDecodeError) as exc:
            self._load_error = f"cannot read the model's files: {exc}"
            log.error("model %s: %s", self.name, self._load_error)
            return
        current = self._serving
        if current is not None and current.version == version and current.model == model \
                and current.pool.accepting:  # nothing new (a failed one is tried again)
            self._load_error = None
            return
        pool = self._make_pool(model, self.metrics)
        loaded = _Loaded(model, version, pool, owned=True)
        first = current is None or not current.pool.accepting
        if first:  # nothing serves: this version is the model's state while it warms
            self._switch(loaded)
        else:
            self._pending = version.version
        try:
            log.info("model %s: version %s warming up", self.name, version.version)
            await pool.start()
        except asyncio.CancelledError:
            await pool.close(self._drain_timeout)
            raise
        except Exception as exc:  # noqa: BLE001 - any load failure: the old version serves on
            if not first:
                self._load_error = f"version {version.version} could not be loaded: {exc}"
            log.error("model %s: version %s could not be loaded: %s", self.name,
                      version.version, exc)
            if not first:
                await pool.close(self._drain_timeout)
            return
        finally:
            self._pending = None
        if not first:
            self._switch(loaded)
        if self._on_switch is not None:  # warm and serving
            self._on_switch(model, version.version)

    def _switch(self, loaded: _Loaded) -> None:
        old, self._serving = self._serving, loaded
        self.admission.limit = self._capacity(loaded.model)
        self._load_error = None
        log.info("model %s: version %s serves", self.name, loaded.version.version)
        if old is not None:
            task = asyncio.create_task(self._retire(old), name=f"retire-{self.name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: _Loaded) -> None:
        """Let the requests on ``old`` finish, then stop its workers."""
        try:
            async with asyncio.timeout(self._drain_timeout):
                await old.idle.wait()
        except TimeoutError:
            log.warning("model %s: version %s still had %d request(s) after %.0f s; "
                        "stopping it", self.name, old.version.version, old.in_flight,
                        self._drain_timeout)
        if old.owned:
            await old.pool.close(self._drain_timeout)
        log.info("model %s: version %s stopped", self.name, old.version.version)

    async def close(self, timeout: float | None = None) -> None:
        """Take no more requests, let those in flight finish (up to ``timeout``), stop
        the workers of every version."""
        timeout = self._drain_timeout if timeout is None else timeout
        self._closing = True
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            await asyncio.gather(self._load_task, return_exceptions=True)
        serving = self._serving
        if serving is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await serving.idle.wait()
            if serving.owned:
                await serving.pool.close(timeout)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self._serving = None


def model_settings(model: ModelConfig) -> dict[str, Any]:
    """Every setting of ``model`` but its name and files (the defaults of a request's
    options, the workers it runs on): each field of ModelConfig, so a new one is here."""
    return {f.name: _plain(getattr(model, f.name)) for f in fields(model)
            if f.name not in _FILES}


def _plain(value: Any) -> Any:
    """A setting as JSON and the config's YAML write it (tiles: ``auto``, ``640:0.2``)."""
    return str(value) if isinstance(value, TileSetting) else value


_FILES = ("name", "cfg", "weights", "names")


async def _detect_all(pool: DetectorPool, images: Sequence[bytes], options: DetectOptions,
                      names: Sequence[str] | None) -> list[DetectResult]:
    """Every image in the pool at once; the first failure (in order) is raised, its
    message prefixed with the image's name."""
    outcomes = await asyncio.gather(
        *(pool.detect(data, conf_thres=options.conf_thres, iou_thres=options.iou_thres,
                      agnostic=options.agnostic, max_det=options.max_det,
                      tiles=options.tiles) for data in images),
        return_exceptions=True)
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            name = names[index] if names is not None else f"image {index + 1}"
            if isinstance(outcome, ImageKilledWorker):
                log.error("refused %r (sha256 %s): it crashed the detector twice", name,
                          outcome.sha256)
            if isinstance(outcome, ImageError | ImageKilledWorker):  # about this file
                outcome.args = (f"{name}: {outcome}",)
            raise outcome
    return list(outcomes)  # type: ignore[arg-type]
