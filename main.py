"""Entry point: ``python main.py [--config PATH]`` serves the detection service.

``init_app(config)`` builds the application in a fixed order: config, metrics,
templates, resources (``cleanup_ctx``, each opened and closed by the module that owns it:
PostgreSQL in ``db`` and its health in ``service.database_health``, the record writer in
``service.recorder``, the model servers in ``service.serving.servers``), routes,
middlewares (metrics, JSON errors, the Host allowlist, the same-origin check of POSTs,
access control: outermost first). SIGHUP re-reads the config's ``models:``.

On SIGTERM or SIGINT, ``web.run_app`` stops listening, lets in-flight requests finish
(their records durable) for up to ``server.shutdown_timeout`` seconds, then closes the
resources in reverse order: workers, spool, database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import Any

import aiohttp_jinja2
import asyncpg
import jinja2
from aiohttp import web

import db
from routes import setup_routes
from service.metrics import MetricSources, ServiceMetrics
from service.counts import counts_context
from service.database_health import health_context
from service.events.context import events_context
from service.recorder import records_context
from service.renditions import renditions_context
from service.web import keys
from service.web.auth import Auth
from service.web.budget import trim_after_bursts
from service.web.connections import listen
from service.web.handlers import pages
from service.web.handlers.docs import load_openapi
from service.web.middlewares import (
    auth_middleware,
    error_middleware,
    host_middleware,
    metrics_middleware,
    same_origin_middleware,
    security_headers,
)
from service.web.origin import allowed_hosts
from service.web.tokens import TokenError, TokenStore
from service.web.uploads import max_parts
from service.serving.servers import servers_context
from service.workers.pool import DetectorPool
from settings import BASE_DIR, Config, ConfigError, load_config
from utils.admission import Receiving
from utils.allocator import keep_large_buffers_mapped
from utils.embedded_pg import EmbeddedPostgresError
from utils.event_loop import new_event_loop
from utils.migrate import MigrationError

log = logging.getLogger("yolo_service")

TEMPLATES_DIR = BASE_DIR / "system" / "templates"


async def _database(app: web.Application) -> AsyncIterator[None]:
    async with db.pg_context(app[keys.config_key].postgres) as database, \
            health_context(database) as health:
        app[keys.db_key] = database.pool
        app[keys.db_health_key] = health
        if database.embedded is not None:
            app[keys.embedded_pg_key] = database.embedded
        yield


async def _events(app: web.Application) -> AsyncIterator[None]:
    async with events_context(app[keys.config_key], app[keys.db_key]) as events:
        app[keys.events_key] = events
        yield


async def _records(app: web.Application) -> AsyncIterator[None]:
    async with records_context(app[keys.config_key], app[keys.db_key],
                               app[keys.db_health_key],
                               in_transaction=app[keys.events_key].in_transaction) as writer:
        app[keys.records_key] = writer
        yield


async def _counts(app: web.Application) -> AsyncIterator[None]:
    async with counts_context(app[keys.db_key]):
        yield


async def _renditions(app: web.Application) -> AsyncIterator[None]:
    async with renditions_context(app[keys.db_key]) as renditions:
        app[keys.renditions_key] = renditions
        yield


async def _memory(app: web.Application) -> AsyncIterator[None]:
    async with trim_after_bursts((app[keys.receiving_key], app[keys.anonymous_receiving_key])):
        yield


def _servers(shared: Mapping[str, DetectorPool] | None,
             reload_signal: bool) -> Callable[[web.Application], AsyncIterator[None]]:
    """Every model's server; ``shared``: warm pools (tests), served as they are and left
    open."""
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with servers_context(app[keys.config_key], pools=shared,
                                   reload_signal=reload_signal) as (servers, warm_up):
            app[keys.servers_key] = servers
            app[keys.warmup_task_key] = warm_up
            yield

    return context


def metric_sources(app: web.Application) -> MetricSources:
    """What /metrics reads at each scrape (resources appear once started)."""
    return MetricSources(pool=app.get(keys.servers_key), records=app.get(keys.records_key),
                         admission=app.get(keys.receiving_key),
                         database=app.get(keys.db_health_key), events=app.get(keys.events_key))


async def init_app(config: Config, *, detector_pool: DetectorPool | None = None,
                   model_pools: Mapping[str, DetectorPool] | None = None,
                   reload_signal: bool = False) -> web.Application:
    """Build the application; resources start when the app starts (cleanup_ctx).

    Tests hand in warm pools that outlive the app: ``detector_pool`` (the one model), or
    ``model_pools`` by model name. ``reload_signal``: SIGHUP re-reads the models."""
    if detector_pool is not None:
        model_pools = {detector_pool.model.name: detector_pool}
    app = web.Application(client_max_size=config.server.max_upload_bytes,
                          client_max_fields=max_parts(config.server.max_files))
    app[keys.config_key] = config
    server = config.server
    app[keys.receiving_key] = Receiving(server.max_uploads, server.max_receiving_bytes)
    app[keys.anonymous_receiving_key] = Receiving(server.anonymous_uploads,
                                                  server.max_receiving_bytes,
                                                  name="anonymous")
    metrics = ServiceMetrics(partial(metric_sources, app))
    app[keys.metrics_key] = metrics
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                         autoescape=jinja2.select_autoescape(["html", "xml"]))
    app[aiohttp_jinja2.static_root_key] = "/static"
    app[keys.openapi_key] = load_openapi()
    app.cleanup_ctx.extend([_database, _events, _records, _counts, _renditions,
                            _servers(model_pools, reload_signal), _memory])
    setup_routes(app)
    # Outermost first: metrics count the status the client gets (errors already JSON);
    # then hosts, origins and credentials, all from the headers, before any body is read.
    hosts = allowed_hosts(config.server.allowed_hosts, config.server.host)
    app.middlewares.extend([metrics_middleware(metrics), error_middleware(pages.render_error),
                            host_middleware(hosts), same_origin_middleware])
    app.on_response_prepare.append(security_headers)
    if config.auth.tokens_file is not None:
        auth = Auth(TokenStore(config.auth.tokens_file),
                    session_seconds=config.auth.session_hours * 3600.0,
                    cookie_secure=config.auth.cookie_secure,
                    per_token=config.auth.max_sessions_per_token)
        app[keys.auth_key] = auth
        app.middlewares.append(auth_middleware(auth))
        log.info("access control on: tokens in %s", config.auth.tokens_file)
    return app


def server_options(config: Config) -> dict[str, Any]:
    """Connection options of the HTTP server (``web.run_app``, ``web.AppRunner``).

    aiohttp's keep-alive timer runs from the connection's start and from the end of each
    response until the next request head is complete, whatever bytes arrive: so
    ``server.idle_timeout`` closes idle connections and half-sent (or trickled) request
    heads alike."""
    return {"keepalive_timeout": config.server.idle_timeout}


async def serve(config: Config, sock: socket.socket) -> None:
    """Serve until SIGTERM or SIGINT (``GracefulExit``), as ``web.run_app`` does, on a
    listener capped at ``server.max_connections`` (``service.web.connections``); then stop
    listening, finish in-flight requests (``server.shutdown_timeout``) and close the
    resources."""
    runner = web.AppRunner(await init_app(config, reload_signal=True), handle_signals=True,
                           shutdown_timeout=config.server.shutdown_timeout,
                           **server_options(config))
    await runner.setup()
    listener = None
    try:
        listener = await listen(runner, sock, config.server.max_connections)
        host, port = sock.getsockname()[:2]
        log.info("serving on http://%s:%s (at most %d connections)", host, port,
                 config.server.max_connections)
        await asyncio.Event().wait()  # until cancelled (a signal ends the loop)
    finally:
        if listener is not None:
            listener.close()
        await runner.cleanup()


def run(main_coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
    """Run ``main_coro`` on ``loop`` until it ends or a signal stops it (GracefulExit),
    then cancel what is left and close the loop (``web.run_app``'s ending)."""
    task = loop.create_task(main_coro)
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(task)
        finally:
            rest = asyncio.all_tasks(loop)
            for leftover in rest:
                leftover.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


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
    keep_large_buffers_mapped()  # uploads' buffers go back to the system after a burst
    try:
        # The port first: taken, it is reported at once, before PostgreSQL and the workers
        # start (seconds); the server then listens on this very socket.
        with socket.create_server((config.server.host, config.server.port)) as sock:
            run(serve(config, sock), new_event_loop(config.server.event_loop))
    except (OSError, asyncpg.PostgresError, EmbeddedPostgresError, MigrationError,
            TokenError) as exc:
        # The database, the spool directory, the port or the tokens file cannot be used
        # (SpoolError is an OSError): one line that says why, not a traceback.
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
