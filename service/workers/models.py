"""Every model the service serves: one :class:`~.pool.DetectorPool` per configured model,
found by name (:class:`ModelPools`), opened and closed by :func:`models_context`.

Each pool warms up in a task of its own: a model that cannot be loaded is reported (its
pool ``failed``, with the error) while the others serve. The cores are shared between
the workers of every model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from prometheus_client.core import Metric

from service.workers import stats
from service.workers.pool import DetectorPool
from settings import Config, ModelConfig

log = logging.getLogger(__name__)


class UnknownModel(LookupError):
    """No model of that name is configured (-> 404)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no model named {name!r}; the models are: {', '.join(known)}")
        self.name = name


class ModelPools:
    """The pools by model name, the default model's first."""

    def __init__(self, pools: Mapping[str, DetectorPool]) -> None:
        if not pools:
            raise ValueError("at least one model")
        self._pools = dict(pools)
        self.default_name = next(iter(self._pools))

    @property
    def default(self) -> DetectorPool:
        return self._pools[self.default_name]

    @property
    def names(self) -> list[str]:
        return list(self._pools)

    def __iter__(self) -> Iterator[DetectorPool]:
        return iter(self._pools.values())

    def get(self, name: str | None) -> DetectorPool:
        """The pool of model ``name`` (the default's for None or ""); UnknownModel else."""
        if not name:
            return self.default
        try:
            return self._pools[name]
        except KeyError:
            raise UnknownModel(name, self.names) from None

    def describe(self, pool: DetectorPool) -> dict[str, Any]:
        """What /api/models and /readyz say of one model."""
        model = pool.model
        workers = pool.workers
        return {"name": model.name, "default": model.name == self.default_name,
                "classes": _class_names(model), "img_size": model.img_size,
                "cfg": model.cfg.name, "weights": model.weights.name,
                "conf_thres": model.conf_thres, "iou_thres": model.iou_thres,
                "agnostic_nms": model.agnostic_nms, "max_det": model.max_det,
                "backend": workers[0].backend if workers else None,
                "precision": model.precision,
                "workers": model.workers, "ready": pool.ready, "state": pool.state,
                "error": pool.error}

    def collect(self) -> list[Metric]:
        """Every pool's figures, one family per metric, labelled by model."""
        return stats.merged(pool.collect() for pool in self)


def _class_names(model: ModelConfig) -> list[str]:
    return [line.strip() for line in model.names.read_text(encoding="utf-8").splitlines()
            if line.strip()]


async def _warm_up(pool: DetectorPool) -> None:
    try:
        await pool.start()
    except asyncio.CancelledError:
        raise
    except Exception:  # the pool records the error; /readyz and /detect report it
        log.exception("the workers of model %s could not be started", pool.model.name)


async def _warm_up_all(pools: ModelPools) -> None:
    await asyncio.gather(*(_warm_up(pool) for pool in pools))


@contextlib.asynccontextmanager
async def models_context(config: Config) -> AsyncIterator[tuple[ModelPools, asyncio.Task[Any]]]:
    """The pool of every configured model, warmed in the background, closed on exit.

    Warm-up runs as tasks, so that the server answers /healthz and /readyz (503) while
    the workers load; a model's /detect answers 503 until its workers are warm. Yields
    the pools and the task that warms them all.
    """
    total = sum(model.workers for model in config.models)
    pools = ModelPools({model.name: DetectorPool(config.workers, model=model,
                                                 max_pixels=config.server.max_pixels,
                                                 total_workers=total,
                                                 log_level=config.log_level)
                        for model in config.models})
    task = asyncio.create_task(_warm_up_all(pools), name="worker-warm-up")
    try:
        yield pools, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.gather(*(pool.close(config.server.shutdown_timeout) for pool in pools))
