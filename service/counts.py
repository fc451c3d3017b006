"""Keeps the history counts compact: inserts append rows to ``history_count_deltas``
(a trigger, ``migrations/0005_history_counts.sql``), and this task folds them into
``history_counts`` every :data:`COMPACT_INTERVAL_S` seconds, so the reads of
``service.history_stats.stats`` stay a few hundred rows however many records come in.

Appending, rather than updating one counter row per day, keeps concurrent inserts from
waiting on each other's counters until they commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import asyncpg

import db
from service.history_stats import compact_history_counts

log = logging.getLogger(__name__)

COMPACT_INTERVAL_S = 30.0


async def compact_forever(pool: asyncpg.Pool, interval: float) -> None:
    """Fold the deltas now, then every ``interval`` seconds; a database that is away is
    tried again next time."""
    while True:
        try:
            moved = await compact_history_counts(pool)
            if moved:
                log.debug("history counts: %d delta rows folded", moved)
        except (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            # Away, or refusing (a statement timeout): the deltas wait for the next run,
            # and the counts read them all the same.
            log.warning("history counts not compacted: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(interval)


@asynccontextmanager
async def counts_context(pool: asyncpg.Pool, *,
                         interval: float = COMPACT_INTERVAL_S) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(compact_forever(pool, interval), name="history-counts")
    try:
        yield task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
