"""Counts of the detection history, for the history pages and ``GET /api/stats``:
:func:`stats` (in total, per label, per UTC day, under the history's filters) and
:func:`list_labels`. They read ``history_counts`` and the deltas not folded in yet
(``migrations/0005_history_counts.sql``); :mod:`service.counts` folds those in
(:func:`compact_history_counts`). The filters are ``db.HistoryFilter``, turned into SQL by
``db.filter_sql`` as the history's listing does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from datetime import time as day_time
from typing import Any

import asyncpg

import db


@dataclass(frozen=True)
class LabelCount:
    label: str
    records: int
    boxes: int


@dataclass(frozen=True)
class DayCount:
    day: date
    records: int
    boxes: int


@dataclass(frozen=True)
class Stats:
    records: int
    boxes: int
    labels: list[LabelCount] = field(default_factory=list)
    days: list[DayCount] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "boxes": self.boxes,
            "labels": [{"label": c.label, "records": c.records, "boxes": c.boxes}
                       for c in self.labels],
            "days": [{"day": c.day.isoformat(), "records": c.records, "boxes": c.boxes}
                     for c in self.days],
        }


def _utc_midnight(moment: datetime) -> datetime:
    return datetime.combine(moment.astimezone(timezone.utc).date(), day_time(), tzinfo=timezone.utc)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, day_time(), tzinfo=timezone.utc)


@dataclass
class _Tally:
    """Counts being summed from several sources (whole days, partial days)."""

    days: dict[date, list[int]] = field(default_factory=dict)
    labels: dict[str, list[int]] = field(default_factory=dict)

    def add_day(self, day: date, records: int, boxes: int) -> None:
        entry = self.days.setdefault(day, [0, 0])
        entry[0] += records
        entry[1] += boxes

    def add_label(self, label: str, records: int, boxes: int) -> None:
        entry = self.labels.setdefault(label, [0, 0])
        entry[0] += records
        entry[1] += boxes

    def add_rows(self, days: list[asyncpg.Record], labels: list[asyncpg.Record]) -> None:
        """Rows of ``day, records, boxes`` and of ``label, records, boxes``."""
        for row in days:
            self.add_day(row["day"], int(row["records"]), int(row["boxes"]))
        for row in labels:
            self.add_label(row["label"], int(row["records"]), int(row["boxes"]))

    def stats(self) -> Stats:
        days = [DayCount(day, r, b) for day, (r, b) in sorted(self.days.items()) if r > 0]
        labels = [LabelCount(label, r, b) for label, (r, b) in self.labels.items() if r > 0]
        labels.sort(key=lambda c: (-c.records, c.label))
        return Stats(records=sum(d.records for d in days), boxes=sum(d.boxes for d in days),
                     labels=labels, days=days)


STAT_SOURCES = ("model", "review")


async def stats(pool: asyncpg.Pool, filters: db.HistoryFilter | None = None, *,
                since: datetime | None = None, until: datetime | None = None,
                model: str | None = None, source: str = "model") -> Stats:
    """Counts of the records ``filters`` select (or ``since``/``until``/``model``): in
    total, per label and per UTC day.

    ``records`` is how many records; ``boxes`` all their boxes; per label, how many of
    them have a box of that label and how many such boxes. With a label filter the
    per-label counts are those of the records that have that label (the label itself
    and what occurs beside it).

    Label, model and whole-day ranges are read from ``history_counts`` (a few rows per
    day, appended by a trigger: ``migrations/0005_history_counts.sql``); the parts of days
    at the edges of a range, and the ``min_confidence`` and ``filename`` filters, which
    that table cannot answer, are counted from the records themselves.

    ``source="review"`` counts the reviewed boxes instead of the model's: only reviewed
    records count, each with its review's boxes, and a label filter selects the records
    whose review has that label (:func:`_count_reviews`; ``min_confidence`` still
    selects by the model's confidence, reviewed boxes have none).
    """
    if source not in STAT_SOURCES:
        raise ValueError(f"source must be one of {', '.join(STAT_SOURCES)}")
    if filters is None:
        filters = db.HistoryFilter(since=since, until=until, model=model)
    if source == "review":
        tally = _Tally()
        await _count_reviews(pool, filters, tally)
        return tally.stats()
    if filters.min_confidence is not None or filters.filename or filters.reviewed is not None:
        return await _stats_from_records(pool, filters)
    first = None
    if filters.since is not None:
        first = _utc_midnight(filters.since)
        if first < filters.since:
            first = _day_start(first.date() + timedelta(days=1))
    end = None if filters.until is None else _utc_midnight(filters.until)
    if first is not None and end is not None and first >= end:  # within one day
        return await _stats_from_records(pool, filters)
    tally = _Tally()
    parts: list[Awaitable[None]] = [_count_days(pool, filters, first, end, tally)]
    if filters.since is not None and first is not None and first > filters.since:
        parts.append(_count_records(pool, replace(filters, until=first), tally))
    if filters.until is not None and end is not None and end < filters.until:
        parts.append(_count_records(pool, replace(filters, since=end), tally))
    await asyncio.gather(*parts)
    return tally.stats()


async def _count_days(pool: asyncpg.Pool, filters: db.HistoryFilter, first: datetime | None,
                      end: datetime | None, tally: _Tally) -> None:
    """Whole UTC days [first, end) from ``history_counts`` and its deltas not folded in
    yet."""
    args, arg = db.query_args()
    where = [f"having_label = {arg(filters.label or '')}"]
    if filters.model is not None:
        where.append(f"model = {arg(filters.model)}")
    if first is not None:
        where.append(f"day >= {arg(first.date())}")
    if end is not None:
        where.append(f"day < {arg(end.date())}")
    condition = " AND ".join(where)
    rows = await pool.fetch(
        "SELECT day, label, sum(records) AS records, sum(boxes) AS boxes FROM ("
        f"SELECT day, label, records, boxes FROM history_counts WHERE {condition} UNION ALL "
        f"SELECT day, label, records, boxes FROM history_count_deltas WHERE {condition}"
        ") c GROUP BY day, label", *args)
    for row in rows:
        if row["label"] == "":
            tally.add_day(row["day"], int(row["records"]), int(row["boxes"]))
        else:
            tally.add_label(row["label"], int(row["records"]), int(row["boxes"]))


async def _count_records(pool: asyncpg.Pool, filters: db.HistoryFilter, tally: _Tally) -> None:
    """Counts from the records themselves (two aggregates, side by side)."""
    args, arg = db.query_args()
    source, where, _, _ = db.filter_sql(filters, arg)
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    days, labels = await asyncio.gather(
        pool.fetch(f"SELECT d.created_day AS day, count(*) AS records, "
                   f"coalesce(sum(d.num_detections), 0) AS boxes FROM {source}{condition} "
                   f"GROUP BY d.created_day", *args),
        pool.fetch(f"SELECT l.label, count(*) AS records, sum(l.boxes) AS boxes "
                   f"FROM {source} JOIN detection_labels l ON l.detection_id = d.id"
                   f"{condition} GROUP BY l.label", *args))
    tally.add_rows(days, labels)


async def _count_reviews(pool: asyncpg.Pool, filters: db.HistoryFilter, tally: _Tally) -> None:
    """Counts of the reviewed boxes of the reviewed records ``filters`` select (the label
    filter applies to the reviewed labels)."""
    if filters.reviewed is False:  # unreviewed records have no reviewed boxes
        return
    args, arg = db.query_args()
    label = filters.label
    _, where, _, _ = db.filter_sql(replace(filters, label=None, reviewed=None), arg)
    if label is not None:
        where.append("EXISTS (SELECT 1 FROM jsonb_array_elements(r.boxes) b "
                     f"WHERE b ->> 'label' = {arg(label)})")
    source = "detections d JOIN reviews r ON r.detection_id = d.id"
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    days, labels = await asyncio.gather(
        pool.fetch(f"SELECT d.created_day AS day, count(*) AS records, "
                   f"coalesce(sum(r.num_boxes), 0) AS boxes FROM {source}{condition} "
                   f"GROUP BY d.created_day", *args),
        pool.fetch(f"SELECT b ->> 'label' AS label, count(DISTINCT d.id) AS records, "
                   f"count(*) AS boxes FROM {source} CROSS JOIN LATERAL "
                   f"jsonb_array_elements(r.boxes) b{condition} GROUP BY 1", *args))
    tally.add_rows(days, labels)


async def _stats_from_records(pool: asyncpg.Pool, filters: db.HistoryFilter) -> Stats:
    tally = _Tally()
    await _count_records(pool, filters, tally)
    return tally.stats()


async def list_labels(pool: asyncpg.Pool) -> list[str]:
    """Every label that occurs in the history, sorted."""
    rows = await pool.fetch(
        "SELECT label FROM (SELECT label, records FROM history_counts "
        "WHERE having_label = '' AND label <> '' UNION ALL SELECT label, records "
        "FROM history_count_deltas WHERE having_label = '' AND label <> '') c "
        "GROUP BY label HAVING sum(records) > 0 ORDER BY label")
    return [row["label"] for row in rows]


async def compact_history_counts(pool: asyncpg.Pool) -> int:
    """Fold the counts that inserts appended into ``history_counts``; returns how many
    delta rows were folded (``migrations/0005_history_counts.sql``)."""
    return int(await pool.fetchval("SELECT history_counts_compact()"))
