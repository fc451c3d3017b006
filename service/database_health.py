"""The database's health, one object, and the supervisor that keeps it.

:class:`DatabaseHealth` is the one place the service knows whether its database answers:
``/readyz`` reads it, the record writer reads it (whether to write images ahead) and
reports into it what its writes find, and ``/metrics`` reads it (``yolo_database_up``,
``yolo_database_restarts``). :func:`health_context` opens it beside the pool that
:func:`db.pg_context` opened, with a watcher task (:func:`watch`) that pings the
database every second and starts a dead embedded server again (:func:`restart`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import db
from utils.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 1.0  # how often the database is looked at
WATCH_PING_TIMEOUT_S = 2.0
RESTART_BACKOFF_S = (0.5, 8.0)  # first and longest wait between restarts of a dead server


class DatabaseHealth:
    """What the service knows of its database.

    ``state``: ``ok``; ``unavailable`` (it does not answer: stopped, hung, unreachable);
    ``restarting`` (the embedded server died: it is being started again, with
    back-off); ``recovering`` (it runs again: crash recovery, and the pool reconnects).
    The watcher sets every state; a write that finds the database away (:meth:`lost`)
    or answering again (:meth:`answered`) reports it at once, between two looks.
    """

    def __init__(self, *, embedded: bool) -> None:
        self.embedded = embedded
        self.state = "ok"
        self.detail: str | None = None
        self.restarts = 0  # of the embedded server, since start-up
        self.changed_at = time.monotonic()

    @property
    def up(self) -> bool:
        return self.state == "ok"

    def set(self, state: str, detail: str | None = None) -> None:
        if state != self.state:
            self.changed_at = time.monotonic()
        self.state, self.detail = state, detail

    def lost(self, exc: BaseException) -> bool:
        """A statement found the database away; True when that is news (it was ``ok``).
        ``restarting`` and ``recovering`` stay: the watcher knows more."""
        if self.state != "ok":
            return False
        self.set("unavailable", f"{type(exc).__name__}: {exc}".rstrip(": "))
        return True

    def answered(self) -> bool:
        """A statement went through; True when that is news (it was ``unavailable``)."""
        if self.state != "unavailable":
            return False
        self.set("ok")
        return True

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail,
                "embedded": self.embedded, "restarts": self.restarts,
                "for_s": round(time.monotonic() - self.changed_at, 1)}

    def collect(self) -> Iterator[Metric]:
        """For ``/metrics``."""
        up = GaugeMetricFamily("yolo_database_up", "1 while the database answers "
                               "(state ok), else 0")
        up.add_metric([], 1.0 if self.up else 0.0)
        yield up
        restarts = CounterMetricFamily("yolo_database_restarts",
                                       "Restarts of the embedded PostgreSQL since start-up")
        restarts.add_metric([], float(self.restarts))
        yield restarts


@asynccontextmanager
async def health_context(database: db.Database, *,
                         watch_interval: float = WATCH_INTERVAL_S) -> AsyncIterator[DatabaseHealth]:
    """The database's health, kept by a watcher task until exit."""
    health = DatabaseHealth(embedded=database.embedded is not None)
    watcher = asyncio.create_task(watch(database.pool, health, database.embedded,
                                        watch_interval, connect=database.connect),
                                  name="database-watch")
    try:
        yield health
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def watch(pool: asyncpg.Pool, health: DatabaseHealth, embedded: EmbeddedPostgres | None,
                interval: float = WATCH_INTERVAL_S, *,
                connect: dict[str, Any] | None = None) -> None:
    """Background task: every ``interval``, is the embedded server's postmaster alive,
    and does the database answer? A dead embedded server is started again
    (:func:`restart`); an external one, or one that is alive but does not answer (hung,
    out of connections), is only reported (``unavailable``) until it answers.

    With ``connect`` (the pool's connection arguments) it asks on a connection of its
    own, not one of the pool's: a burst of large writes can hold every pooled connection
    for seconds, which is no outage."""
    own: asyncpg.Connection | None = None
    try:
        while True:
            await asyncio.sleep(interval)
            if embedded is not None and not await asyncio.to_thread(embedded.alive):
                if own is not None:  # its server is gone
                    own.terminate()
                    own = None
                await restart(pool, health, embedded)
                continue
            own = await _watch_once(pool, health, own, connect)
    finally:
        if own is not None:
            own.terminate()


async def _watch_once(pool: asyncpg.Pool, health: DatabaseHealth,
                      own: asyncpg.Connection | None,
                      connect: dict[str, Any] | None) -> asyncpg.Connection | None:
    """One look; the watcher's own connection for the next (None: make one)."""
    try:
        if connect is None:
            await db.ping(pool, WATCH_PING_TIMEOUT_S)
        else:
            own = await _ping_alone(own, connect, WATCH_PING_TIMEOUT_S)
    except db.UNAVAILABLE_ERRORS as exc:
        own = None
        if health.up:
            log.error("database unavailable: %s: %s", type(exc).__name__, exc)
        health.set("unavailable", f"{type(exc).__name__}: {exc}".rstrip(": "))
    else:
        if health.state != "ok":
            log.info("database available again")
            await pool.expire_connections()  # those opened before the outage are dead
        health.set("ok")
    return own


async def _ping_alone(conn: asyncpg.Connection | None, connect: dict[str, Any],
                      timeout: float) -> asyncpg.Connection:
    """``SELECT 1`` on ``conn`` (connected first when None or closed) within ``timeout``;
    the connection, or raise with it terminated (never a graceful cancel, which would
    wait on a hung server: see :func:`db.run`)."""
    try:
        async with asyncio.timeout(timeout):
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(**connect, timeout=timeout)
            task = asyncio.ensure_future(conn.fetchval("SELECT 1"))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                conn.terminate()
                task.cancel()
                raise
    except BaseException:
        if conn is not None:
            conn.terminate()
        raise
    return conn


async def restart(pool: asyncpg.Pool, health: DatabaseHealth,
                  embedded: EmbeddedPostgres) -> None:
    """Start the dead embedded server again, with back-off, until the pool reaches it.

    A start may fail while processes of the dead server still hold its shared memory
    (they end once they notice), or for good (then it is retried at the longest
    interval, and logged each time)."""
    died = time.monotonic()
    log.error("the embedded PostgreSQL (%s) is not running; restarting it",
              embedded.data_dir)
    attempt = 0
    while True:
        health.set("restarting", f"the embedded PostgreSQL died; start attempt {attempt + 1}")
        first, longest = RESTART_BACKOFF_S
        await asyncio.sleep(min(first * 2 ** attempt, longest))
        attempt += 1
        health.set("recovering", "the embedded PostgreSQL is starting: crash recovery, "
                                 "then reconnecting")
        try:
            await asyncio.to_thread(embedded.start)
            await pool.expire_connections()
            await db.ping(pool, WATCH_PING_TIMEOUT_S)
        except (EmbeddedPostgresError, *db.UNAVAILABLE_ERRORS) as exc:
            lines = str(exc).splitlines() or [type(exc).__name__]
            # The first line says what failed; the server log's last FATAL line, why.
            why = [line for line in lines[1:] if "FATAL" in line or "PANIC" in line][-1:]
            log.log(logging.WARNING if attempt < 3 else logging.ERROR,
                    "restart %d of the embedded PostgreSQL failed: %s", attempt,
                    " ... ".join([lines[0], *why]))
            continue
        health.restarts += 1
        health.set("ok")
        log.warning("the embedded PostgreSQL was restarted and answers again, %.1f s after "
                    "it was found dead (attempt %d)", time.monotonic() - died, attempt)
        return
