"""Service test fixtures: a real embedded PostgreSQL, a real model, a real process pool
(the service and e2e tiers; ``tests/e2e/conftest.py`` takes them from here, and the unit
tier never imports this module).

- ``pg_server`` (session): an embedded PostgreSQL in a temp directory, started here.
- ``model_weights`` (session): random weights for tests/data/service-6cls.cfg, saved
  with the engine's own ``save_weights``.
- ``database`` (function): a fresh database on that server, dropped after the test.
- ``make_config`` / ``test_config``: config/test.yaml pointed at those.
- ``detector_pool`` (session): one warm worker, shared by the apps of all tests (spawn +
  torch import + warm-up cost seconds; tests of the pool's own lifecycle start their own).
  Every test and fixture runs on one session-wide event loop (``pyproject.toml``), the
  loop such a pool is served from.
- ``client``: an aiohttp test client for ``init_app(test_config, detector_pool=...)``.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import torch

from main import init_app
from service.workers.pool import DetectorPool
from settings import Config, merge
from tests.configs import load_test_config
from tests.paths import DATA_DIR
from utils.embedded_pg import EmbeddedPostgres

SERVICE_CFG = DATA_DIR / "service-6cls.cfg"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    # Its own temp dir, not pytest's numbered ones (which a concurrent pytest run may
    # rotate away). Durability is pointless for throw-away data: fsync off is faster.
    with tempfile.TemporaryDirectory(prefix="yolo-test-pg-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data", settings={
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        server.start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
def model_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.darknet import Darknet
    from model.weights import save_weights

    torch.manual_seed(1234)
    net = Darknet(SERVICE_CFG, img_size=128)
    path = tmp_path_factory.mktemp("weights") / "service-6cls.pt"
    save_weights(net, path)
    return path


async def _admin(server: EmbeddedPostgres) -> asyncpg.Connection:
    return await asyncpg.connect(server.dsn)


@pytest.fixture
async def database(pg_server: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh, empty database name; dropped (connections and all) after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    conn = await _admin(pg_server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield name
    conn = await _admin(pg_server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def make_config(pg_server: EmbeddedPostgres, model_weights: Path, database: str,
                tmp_path: Path) -> Callable[..., Config]:
    """Build a validated Config from config/test.yaml plus overrides (the spool in this
    test's temp dir)."""
    socket_dir = pg_server.dsn.split("host=")[1].split("&")[0]

    def build(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None, *,
              models: dict[str, Any] | None = None) -> Config:
        """``models``: served instead of the test model (see ``load_test_config``)."""
        base: dict[str, Any] = {
            "postgres": {"host": socket_dir, "port": pg_server.port, "database": database},
            "storage": {"spool_dir": str(tmp_path / "spool"),
                        "models_dir": str(tmp_path / "models")},
        }
        return load_test_config(merge(base, overrides or {}), weights=model_weights,
                                models=models, env=env)

    return build


@pytest.fixture
def test_config(make_config: Callable[..., Config]) -> Config:
    return make_config()


def pool_config(model_weights: Path, **workers: Any) -> Config:
    """config/test.yaml with the generated weights and ``workers`` overrides, for tests
    that start a pool of their own (no database settings needed)."""
    return load_test_config({"workers": workers}, weights=model_weights)


async def shared_pool(config: Config, **kwargs: Any) -> AsyncIterator[DetectorPool]:
    """A started pool (of the config's default model, unless ``model=`` says) for a
    session- or module-scoped fixture (served from the session's event loop, which every
    test runs on)."""
    kwargs.setdefault("model", config.default_model)
    pool = DetectorPool(config.workers, max_pixels=config.server.max_pixels, **kwargs)
    await pool.start()
    yield pool
    await pool.close(10)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def detector_pool(model_weights: Path) -> AsyncIterator[DetectorPool]:
    async for pool in shared_pool(pool_config(model_weights)):
        yield pool


@pytest.fixture
async def db_pool(test_config: Config) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on the test database, schema migrated."""
    import db
    from utils.migrate import migrate

    pool = await db.create_pool(test_config.postgres.connect_kwargs(), minsize=1, maxsize=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield pool
    await db.close_pool(pool, 5)


@pytest.fixture
async def client(test_config: Config, detector_pool: DetectorPool, aiohttp_client: Any) -> Any:
    # aiohttp_client comes last: set up after the database, so torn down (app closed) first.
    app = await init_app(test_config, detector_pool=detector_pool)
    return await aiohttp_client(app)


# ---------------------------------------------------------------- two models

TINY_CFG = DATA_DIR / "tiny.cfg"  # a second model: 2 classes (red, green), input 64


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.darknet import Darknet
    from model.weights import save_weights

    torch.manual_seed(99)
    path = tmp_path_factory.mktemp("tiny-weights") / "tiny.pt"
    save_weights(Darknet(TINY_CFG, img_size=64), path)
    return path


def two_models(model_weights: Path, tiny_weights: Path) -> dict[str, Any]:
    """Config overrides that serve the test model (default) and ``colours`` (tiny.cfg)."""
    return {
        "models": {
            "service-6cls": {"cfg": str(SERVICE_CFG), "weights": str(model_weights),
                             "names": str(DATA_DIR / "service-6cls.names")},
            "colours": {"cfg": str(TINY_CFG), "weights": str(tiny_weights),
                        "names": str(DATA_DIR / "tiny.names"), "img_size": 64,
                        "conf_thres": 0.05, "agnostic_nms": True},
        },
    }


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def colours_pool(model_weights: Path, tiny_weights: Path) -> AsyncIterator[DetectorPool]:
    """The ``colours`` model's own warm worker."""
    config = load_test_config(two_models(model_weights, tiny_weights))
    async for pool in shared_pool(config, model=config.model("colours")):
        yield pool


@pytest.fixture
def two_model_config(make_config: Callable[..., Config], model_weights: Path,
                     tiny_weights: Path) -> Config:
    return make_config(two_models(model_weights, tiny_weights))


@pytest.fixture
async def two_model_client(two_model_config: Config, detector_pool: DetectorPool,
                           colours_pool: DetectorPool, aiohttp_client: Any) -> Any:
    """A client of an app serving both models (the default's pool is ``detector_pool``)."""
    pools = {"service-6cls": detector_pool, "colours": colours_pool}
    return await aiohttp_client(await init_app(two_model_config, model_pools=pools))
