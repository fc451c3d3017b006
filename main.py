"""Entry point: ``python main.py [--config PATH]`` serves the detection service.

``init_app(config)`` builds the application in a fixed order: config, metrics,
templates, resources (``cleanup_ctx``, each opened and closed by the module that owns it:
PostgreSQL in ``db``, the record writer in ``service.recorder``, the warm worker pool in
``service.workers.pool``), routes, middlewares (metrics, JSON errors, access control:
outermost first).

On SIGTERM or SIGINT, ``web.run_app`` stops listening, lets in-flight requests finish
(their records durable) for up to ``server.shutdown_timeout`` seconds, then closes the
resources in reverse order: workers, spool, database.
"""

from __future__ import annotations

import argparse
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
from routes import setup_routes
from service.metrics import MetricSources, ServiceMetrics
from service.recorder import records_context
from service.web import keys
from service.web.auth import Auth
from service.web.handlers import pages
from service.web.middlewares import auth_middleware, error_middleware, metrics_middleware
from service.web.tokens import TokenError, TokenStore
from service.workers.pool import DetectorPool, pool_context
from settings import BASE_DIR, Config, ConfigError, load_config
from utils.admission import Admission
from utils.embedded_pg import EmbeddedPostgresError
from utils.migrate import MigrationError

log = logging.getLogger("yolo_service")

TEMPLATES_DIR = BASE_DIR / "system" / "templates"


async def _database(app: web.Application) -> AsyncIterator[None]:
    async with db.pg_context(app[keys.config_key].postgres) as (pool, embedded):
        app[keys.db_key] = pool
        if embedded is not None:
            app[keys.embedded_pg_key] = embedded
        yield


async def _records(app: web.Application) -> AsyncIterator[None]:
    async with records_context(app[keys.config_key], app[keys.db_key]) as writer:
        app[keys.records_key] = writer
        yield


def _workers(shared: DetectorPool | None) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's own pool, or a ``shared`` one (tests) used as it is and left open."""
    async def context(app: web.Application) -> AsyncIterator[None]:
        if shared is not None:
            app[keys.detector_pool_key] = shared
            yield
            return
        async with pool_context(app[keys.config_key]) as (pool, warm_up):
            app[keys.detector_pool_key] = pool
            app[keys.warmup_task_key] = warm_up
            yield

    return context


def metric_sources(app: web.Application) -> MetricSources:
    """What /metrics reads at each scrape (resources appear once started)."""
    return MetricSources(pool=app.get(keys.detector_pool_key), records=app.get(keys.records_key),
                         admission=app.get(keys.admission_key))


async def init_app(config: Config, *, detector_pool: DetectorPool | None = None) -> web.Application:
    """Build the application; resources start when the app starts (cleanup_ctx)."""
    app = web.Application(client_max_size=config.server.max_upload_bytes)
    app[keys.config_key] = config
    app[keys.admission_key] = Admission(config.workers.running_capacity + config.workers.max_queue)
    metrics = ServiceMetrics(partial(metric_sources, app))
    app[keys.metrics_key] = metrics
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                         autoescape=jinja2.select_autoescape(["html", "xml"]))
    app[aiohttp_jinja2.static_root_key] = "/static"
    app.cleanup_ctx.extend([_database, _records, _workers(detector_pool)])
    setup_routes(app)
    # Outermost first: metrics count the status the client gets (errors already JSON).
    app.middlewares.extend([metrics_middleware(metrics), error_middleware(pages.render_error)])
    if config.auth.tokens_file is not None:
        auth = Auth(TokenStore(config.auth.tokens_file),
                    session_seconds=config.auth.session_hours * 3600.0,
                    cookie_secure=config.auth.cookie_secure)
        app[keys.auth_key] = auth
        app.middlewares.append(auth_middleware(auth))
        log.info("access control on: tokens in %s", config.auth.tokens_file)
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
