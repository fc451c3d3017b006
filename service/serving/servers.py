"""Every served model by name (:class:`ModelServers`), opened and closed by
:func:`servers_context`; models added, replaced and removed while serving.

At start-up the served models are the config's ``models:`` and those kept by
``PUT /api/models/{name}`` (:class:`~.store.ModelStore`): where both name one model, the
kept one wins (it is the later, explicit act; the log says so). ``apply_config`` applies
a re-read config's differences (SIGHUP) the same way as the HTTP routes do: new models
are added, changed ones replaced (warmed beside, then switched), dropped ones removed;
models kept by the API are left as they are. The default model stays the default until
a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import Metric

from service.serving.server import ModelServer
from service.serving.store import ModelStore
from service.workers import stats
from service.workers.pool import DetectorPool
from settings import Config, ConfigError, ModelConfig, load_config

log = logging.getLogger(__name__)


class UnknownModel(LookupError):
    """No model of that name is served (-> 404)."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no model named {name!r}; the models are: {', '.join(known)}")
        self.name = name


class DefaultModelRemoval(RuntimeError):
    """The default model cannot be removed (-> 409)."""


class ModelServers:
    """The model servers by name, the default model's first."""

    def __init__(self, config: Config, store: ModelStore | None = None) -> None:
        self.config = config
        self.store = store
        self._servers: dict[str, ModelServer] = {}
        self._from_config: set[str] = set()
        self.default_name = config.default_model.name

    # ------------------------------------------------------------- lookup

    @property
    def default(self) -> ModelServer:
        return self._servers[self.default_name]

    @property
    def names(self) -> list[str]:
        return list(self._servers)

    def __iter__(self) -> Iterator[ModelServer]:
        return iter(list(self._servers.values()))

    def __len__(self) -> int:
        return len(self._servers)

    def __contains__(self, name: object) -> bool:
        return name in self._servers

    def get(self, name: str | None) -> ModelServer:
        """The server of model ``name`` (the default's for None or ""); UnknownModel."""
        if not name:
            return self.default
        try:
            return self._servers[name]
        except KeyError:
            raise UnknownModel(name, self.names) from None

    __getitem__ = get

    def describe(self, server: ModelServer) -> dict[str, Any]:
        """What /api/models says of one model."""
        return {**server.describe(), "default": server.name == self.default_name}

    def collect(self) -> list[Metric]:
        """Every model's figures, one family per metric, labelled by model."""
        return stats.merged(server.collect() for server in self)

    # ------------------------------------------------------------- changes

    def _server(self, model: ModelConfig, pool: DetectorPool | None = None) -> ModelServer:
        workers = self.config.workers
        return ModelServer(model, make_pool=self._make_pool, pool=pool,
                           max_batch_size=workers.max_batch_size, max_queue=workers.max_queue,
                           drain_timeout=self.config.server.shutdown_timeout,
                           on_switch=self._switched)

    def _make_pool(self, model: ModelConfig, metrics: stats.PoolMetrics) -> DetectorPool:
        others = sum(s.model.workers for s in self if s.name != model.name)
        return DetectorPool(self.config.workers, model=model,
                            max_pixels=self.config.server.max_pixels,
                            total_workers=others + model.workers,
                            log_level=self.config.log_level, metrics=metrics)

    def _switched(self, model: ModelConfig, version: str) -> None:
        if self.store is not None and self.store.holds(model):
            self.store.commit(model)

    def serve(self, model: ModelConfig, pool: DetectorPool | None = None) -> ModelServer:
        """Add a server for ``model`` (not started)."""
        server = self._server(model, pool)
        self._servers[model.name] = server
        return server

    def put(self, model: ModelConfig) -> ModelServer:
        """Create ``model``'s server, or load it as the next version of the one there
        (uploaded: from now on the config's entry of that name is not applied); returns
        at once (the server's :meth:`~ModelServer.settled` waits for the outcome)."""
        self._from_config.discard(model.name)
        return self._load(model)

    def _load(self, model: ModelConfig) -> ModelServer:
        server = self._servers.get(model.name)
        if server is None:
            server = self.serve(model)
        server.load(model)
        return server

    async def remove(self, name: str) -> None:
        """Take ``name`` out of service (its next requests: 404), let its requests in
        flight finish, stop its workers, forget its kept files."""
        server = self.get(name)
        if name == self.default_name:
            raise DefaultModelRemoval(f"{name} is the default model and cannot be removed")
        del self._servers[name]
        self._from_config.discard(name)
        await server.close()
        if self.store is not None:
            self.store.forget(name)
        log.info("model %s removed", name)

    async def apply_config(self, models: Sequence[ModelConfig]) -> dict[str, list[str]]:
        """Apply a re-read ``models:`` section: what was added, reloaded and removed."""
        kept = self.store.models() if self.store is not None else {}
        done: dict[str, list[str]] = {"added": [], "reloaded": [], "removed": []}
        wanted = {m.name: m for m in models}
        for model in models:
            if model.name in kept:
                log.info("model %s: the one added over the API is kept (config ignored)",
                         model.name)
                continue
            done["reloaded" if model.name in self._servers else "added"].append(model.name)
            self._load(model)
            self._from_config.add(model.name)
        for name in sorted(self._from_config - set(wanted)):
            if name == self.default_name:
                log.warning("model %s is the default: it stays until a restart", name)
                continue
            await self.remove(name)
            done["removed"].append(name)
        return done

    async def close(self, timeout: float) -> None:
        await asyncio.gather(*(server.close(timeout) for server in self))

    # ------------------------------------------------------------- start-up

    @classmethod
    def from_config(cls, config: Config, *, store: ModelStore | None = None,
                    pools: Mapping[str, DetectorPool] | None = None) -> ModelServers:
        """The config's models (and the store's, which win), not started; ``pools``:
        warm pools to serve as they are (tests)."""
        servers = cls(config, store)
        if store is not None:
            store.sweep()
        kept = store.models() if store is not None else {}
        for model in config.models:
            chosen = kept.pop(model.name, None)
            if chosen is not None:
                log.warning("model %s: the version added over the API is served, not the "
                            "config's (DELETE /api/models/%s, then restart, to go back)",
                            model.name, model.name)
            else:
                servers._from_config.add(model.name)
            shared = (pools or {}).get(model.name)
            servers.serve(chosen or model, shared if chosen is None else None)
        for model in kept.values():
            servers.serve(model)
        return servers


async def _start(server: ModelServer) -> None:
    try:
        await server.start()
        await server.settled()
    except asyncio.CancelledError:
        raise
    except Exception:  # noqa: BLE001 - the server records the error; /readyz reports it
        log.exception("model %s could not be started", server.name)


@contextlib.asynccontextmanager
async def servers_context(config: Config, *, pools: Mapping[str, DetectorPool] | None = None,
                          reload_signal: bool = False,
                          ) -> AsyncIterator[tuple[ModelServers, asyncio.Task[Any]]]:
    """Every model's server, warmed in the background, closed on exit. Yields the
    servers and the task that warms them all. ``pools``: warm pools served as they are
    and left open. ``reload_signal``: SIGHUP re-reads ``config.source``'s models."""
    store = ModelStore(config.storage.models_dir, config.workers)
    servers = ModelServers.from_config(config, store=store, pools=pools)
    # Pools handed in are served as they are, from the first request on.
    await asyncio.gather(*(server.start() for server in servers if server.shares_pool))
    task = asyncio.create_task(_start_all([s for s in servers if not s.shares_pool]),
                               name="model-warm-up")
    loop = asyncio.get_running_loop()
    if reload_signal and config.source is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload_soon(servers, config))
    try:
        yield servers, task
    finally:
        if reload_signal and config.source is not None:
            loop.remove_signal_handler(signal.SIGHUP)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await servers.close(config.server.shutdown_timeout)


async def _start_all(servers: Sequence[ModelServer]) -> None:
    await asyncio.gather(*(_start(server) for server in servers))


def _reload_soon(servers: ModelServers, config: Config) -> Callable[[], None]:
    tasks: set[asyncio.Task[None]] = set()

    def on_signal() -> None:
        task = asyncio.create_task(reload_models(servers, config))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return on_signal


async def reload_models(servers: ModelServers, config: Config) -> None:
    """Re-read the config file's ``models:`` and apply the differences (SIGHUP)."""
    try:
        fresh = await asyncio.to_thread(load_config, config.source)
    except ConfigError as exc:
        log.error("SIGHUP: the config is not re-read: %s", exc)
        return
    done = await servers.apply_config(fresh.models)
    log.info("SIGHUP: models added %s, reloaded %s, removed %s", done["added"] or "none",
             done["reloaded"] or "none", done["removed"] or "none")
