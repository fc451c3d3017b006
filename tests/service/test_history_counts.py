"""The history counts (``history_counts`` + its deltas, ``service.history_stats.stats``)
against the same counts made from the records themselves, for every kind of filter: before and after
compaction, after deletes, after a record is written again, with two compactions at
once."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import db
from service import history_stats
from model.detection import Detection

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
LABELS = ("go", "stop", "goLeft", "warning")


def records(n: int, seed: int = 3) -> list[db.Record]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        dets = [Detection(label, LABELS.index(label), round(rng.uniform(0.2, 1.0), 3),
                          0, 0, 10, 10)
                for label in rng.choices(LABELS, k=rng.choice((0, 1, 1, 2, 3)))]
        out.append(db.Record(
            id=uuid.uuid4(), created_at=T0 + timedelta(hours=rng.uniform(0, 24 * 6)),
            filename=f"cam{i % 3}.jpg", sha256=f"{i:064x}", width=10, height=10,
            model=rng.choice(("a", "b")), inference_ms=1.0, detections=dets))
    return out


FILTERS = [
    db.HistoryFilter(),
    db.HistoryFilter(label="stop"),
    db.HistoryFilter(label="warning", model="a"),
    db.HistoryFilter(since=T0 + timedelta(days=2), until=T0 + timedelta(days=4)),
    db.HistoryFilter(since=T0 + timedelta(days=1, hours=5), until=T0 + timedelta(days=3, hours=7)),
    db.HistoryFilter(label="go", since=T0 + timedelta(hours=30)),
    db.HistoryFilter(until=T0 + timedelta(days=2, hours=13), model="b"),
    db.HistoryFilter(since=T0 + timedelta(hours=3), until=T0 + timedelta(hours=9)),
    db.HistoryFilter(min_confidence=0.6),
    db.HistoryFilter(label="go", min_confidence=0.8, filename="cam1"),
]


async def assert_counts_match(pool: Any) -> None:
    for filters in FILTERS:
        assert await history_stats.stats(pool, filters) == await history_stats._stats_from_records(pool, filters), \
            filters


async def test_counts_match_the_records(db_pool: Any) -> None:
    saved = records(120)
    for start in range(0, len(saved), 7):  # several statements, as requests make them
        await db.save_records(db_pool, saved[start:start + 7])
    assert (await history_stats.stats(db_pool)).records == 120
    await assert_counts_match(db_pool)

    assert await history_stats.compact_history_counts(db_pool) > 0
    assert await db_pool.fetchval("SELECT count(*) FROM history_count_deltas") == 0
    await assert_counts_match(db_pool)

    # Written again (a retry, a spool replay): counted once.
    await db.save_records(db_pool, saved[:30])
    await assert_counts_match(db_pool)
    assert (await history_stats.stats(db_pool)).records == 120

    # Deleted: taken away again; and two compactions at once fold each delta once.
    await db_pool.execute("DELETE FROM detections WHERE id = ANY($1::uuid[])",
                          [r.id for r in saved[:40]])
    await db.save_records(db_pool, records(25, seed=9))
    await asyncio.gather(history_stats.compact_history_counts(db_pool), history_stats.compact_history_counts(db_pool))
    await assert_counts_match(db_pool)
    assert (await history_stats.stats(db_pool)).records == 120 - 40 + 25
    assert await history_stats.list_labels(db_pool) == sorted(
        {d.label for r in saved[40:] + records(25, seed=9) for d in r.detections})
