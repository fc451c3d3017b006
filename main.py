"""Entry point: ``python main.py [--config PATH]`` serves the detection service.

``init_app(config)`` builds the application in a fixed order: config, metrics,
templates, resources (``cleanup_ctx``: PostgreSQL, the record writer with its spool, replay
and image-sweep tasks, the warm worker pool), routes, middlewares (metrics, JSON errors, access
control: outermost first).

On SIGTERM or SIGINT, ``web.run_app`` stops listening, lets in-flight requests finish
(their records durable) for up to ``server.shutdown_timeout`` seconds, then closes the
resources in reverse order: workers, spool, database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web

import db
import keys
from handlers import pages
from pool import DetectorPool
from recorder import SWEEP_GRACE_S, SWEEP_INTERVAL_S, RecordWriter
from routes import setup_routes
from settings import BASE_DIR, Config, ConfigError, load_config
from utils.admission import Admission
from utils.auth import Auth
from utils.auth import middleware as auth_middleware
from utils.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
from utils.metrics import MetricSources, ServiceMetrics
from utils.metrics import middleware as metrics_middleware
from utils.migrate import MigrationError, migrate
from utils.spool import Spool
from utils.tokens import TokenError, TokenStore
from utils.web_errors import error_middleware

log = logging.getLogger("yolo_service")

TEMPLATES_DIR = BASE_DIR / "system" / "templates"


async def pg_context(app: web.Application) -> AsyncIterator[None]:
    """PostgreSQL: embedded server (when configured), asyncpg pool, migrations."""
    config = app[keys.config_key].postgres
    embedded: EmbeddedPostgres | None = None
    if config.embedded:
        embedded = EmbeddedPostgres(config.data_dir)
        await asyncio.to_thread(embedded.start)
        app[keys.embedded_pg_key] = embedded
    try:
        if embedded is not None:
            await db.ensure_database(embedded.dsn, config.database)
            connect: dict[str, Any] = {"dsn": embedded.dsn_for(config.database)}
        else:
            connect = config.connect_kwargs()
        pool = await db.create_pool(connect, minsize=config.minsize, maxsize=config.maxsize)
        try:
            async with pool.acquire() as conn:
                applied = await migrate(conn)
            log.info("database ready%s", f"; applied migrations {applied}" if applied else "")
            app[keys.db_key] = pool
            yield
        finally:
            await db.close_pool(pool, config.close_timeout)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel a background task and wait until it has stopped."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def records_context(app: web.Application) -> AsyncIterator[None]:
    """The record writer: the spool (records already in it are replayed first), the
    background task that replays it into PostgreSQL, and the one that sweeps away
    images no record refers to."""
    config = app[keys.config_key]
    spool = await asyncio.to_thread(Spool.open, config.storage.spool_dir,
                                    max_bytes=config.storage.spool_max_bytes)
    try:
        writer = RecordWriter(app[keys.db_key], spool,
                              write_timeout=config.postgres.write_timeout)
        app[keys.records_key] = writer
        task = asyncio.create_task(writer.replay_forever(), name="spool-replay")
        # Long after any request that could still save a record for the image.
        grace = max(SWEEP_GRACE_S, 4 * (config.server.request_timeout
                                         + config.postgres.write_timeout))
        sweeper = asyncio.create_task(writer.sweep_forever(SWEEP_INTERVAL_S, grace),
                                      name="image-sweep")
        try:
            yield
        finally:
            await _cancel(sweeper)
            await _cancel(task)
            await _final_replay(writer, config.postgres.close_timeout)
    finally:
        spool.close()


async def _final_replay(writer: RecordWriter, timeout: float) -> None:
    """On shutdown, empty the spool into the database if it answers; else keep it."""
    if writer.spool.pending_entries == 0:
        return
    try:
        async with asyncio.timeout(timeout):
            await writer.replay_pending()
    except db.UNAVAILABLE_ERRORS as exc:
        log.warning("%d record(s) stay in the spool (%s); they are replayed at the next "
                    "start", writer.spool.pending_items, type(exc).__name__)


async def _warm_up(pool: DetectorPool) -> None:
    try:
        await pool.start()
    except asyncio.CancelledError:
        raise
    except Exception:  # the pool records the error; /readyz and /detect report it
        log.exception("the detection workers could not be started")


def detector_pool_context(
        shared: DetectorPool | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """The worker pool: created and warmed in the background, closed on shutdown.

    Warm-up runs as a task so that the server answers /healthz and /readyz (503) while
    the workers load; /detect answers 503 until every worker is warm. A ``shared`` pool
    (tests) is used as it is and left open.
    """
    async def context(app: web.Application) -> AsyncIterator[None]:
        if shared is not None:
            app[keys.detector_pool_key] = shared
            yield
            return
        config = app[keys.config_key]
        pool = DetectorPool(config.workers, max_pixels=config.server.max_pixels,
                            log_level=config.log_level)
        app[keys.detector_pool_key] = pool
        task = asyncio.create_task(_warm_up(pool), name="worker-warm-up")
        app[keys.warmup_task_key] = task
        try:
            yield
        finally:
            await _cancel(task)
            await pool.close(config.server.shutdown_timeout)

    return context


def metric_sources(app: web.Application) -> MetricSources:
    """What /metrics reads at each scrape (resources appear once started)."""
    return MetricSources(pool=app.get(keys.detector_pool_key), records=app.get(keys.records_key),
                         admission=app.get(keys.admission_key))


async def init_app(config: Config, *, detector_pool: DetectorPool | None = None) -> web.Application:
    """Build the application; resources start when the app starts (cleanup_ctx)."""
    auth = None
    if config.auth.tokens_file is not None:
        auth = Auth(TokenStore(config.auth.tokens_file),
                    session_seconds=config.auth.session_hours * 3600.0,
                    cookie_secure=config.auth.cookie_secure)
    app = web.Application(client_max_size=config.server.max_upload_bytes)
    app[keys.config_key] = config
    app[keys.admission_key] = Admission(config.workers.running_capacity + config.workers.max_queue)
    metrics = ServiceMetrics(partial(metric_sources, app))
    app[keys.metrics_key] = metrics
    if auth is not None:
        app[keys.auth_key] = auth
        log.info("access control on: tokens in %s", config.auth.tokens_file)
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                         autoescape=jinja2.select_autoescape(["html", "xml"]))
    app[aiohttp_jinja2.static_root_key] = "/static"
    app.cleanup_ctx.append(pg_context)
    app.cleanup_ctx.append(records_context)
    app.cleanup_ctx.append(detector_pool_context(detector_pool))
    setup_routes(app)
    # Outermost first: metrics count the status the client gets (errors already JSON).
    app.middlewares.extend([metrics_middleware(metrics), error_middleware(pages.render_error)])
    if auth is not None:
        app.middlewares.append(auth_middleware(auth))
    return app


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="YOLO object detection service")
    parser.add_argument("--config", help="config file (default: $YOLO_CONFIG or "
                                         "config/config.yaml)")
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port", type=int, help="override server.port")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides.setdefault("server", {})["host"] = args.host
    if args.port is not None:
        overrides.setdefault("server", {})["port"] = args.port
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        return 2
    logging.getLogger().setLevel(config.log_level)
    log.info("configuration: %s", config.source)
    try:
        web.run_app(init_app(config), host=config.server.host, port=config.server.port,
                    shutdown_timeout=config.server.shutdown_timeout)
    except (OSError, asyncpg.PostgresError, EmbeddedPostgresError, MigrationError,
            TokenError) as exc:
        # The database, the spool directory, the port or the tokens file cannot be used
        # (SpoolError is an OSError): one line that says why, not a traceback.
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
