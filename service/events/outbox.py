"""The event outbox in PostgreSQL (``migrations/0009_events.sql``): events written in
the transaction that inserts their records, read back in order per target.

Delivery takes a target's head under a transaction-level advisory lock on the target, so
that of several instances sharing the database only one sends a given target's events
at a time, in order, and a crashed sender's lock (and event) is free again at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

import db
from service.events.rules import label_set, matching, payload
from settings import EventRule

LOCK_NAMESPACE = 0x59_4F_4C_4F  # "YOLO": the advisory-lock key space of event targets


async def _lock_sources(conn: asyncpg.Connection, keys: set[tuple[str, str]]
                        ) -> dict[tuple[str, str], list[str]]:
    """The labels last seen per (rule, source), their rows created when missing (no labels
    yet) and locked to the end of the transaction, always in the same order (so that two
    transactions cannot deadlock): records of one source are compared one after the
    other, whichever instance commits them."""
    ordered = sorted(keys)
    targets, sources = [k[0] for k in ordered], [k[1] for k in ordered]
    await conn.execute(
        "INSERT INTO event_sources (target, source, labels) "
        "SELECT t, s, '{}' FROM unnest($1::text[], $2::text[]) AS k(t, s) ORDER BY t, s "
        "ON CONFLICT DO NOTHING", targets, sources)
    rows = await conn.fetch(
        "SELECT e.target, e.source, e.labels FROM event_sources e "
        "JOIN unnest($1::text[], $2::text[]) AS k(t, s) ON e.target = k.t AND e.source = k.s "
        "ORDER BY e.target, e.source FOR UPDATE OF e", targets, sources)
    return {(row["target"], row["source"]): list(row["labels"]) for row in rows}


_INSERT = """
INSERT INTO event_outbox (target, record_id, payload)
SELECT e.target, e.record_id, e.payload::jsonb
FROM unnest($1::text[], $2::uuid[], $3::text[]) WITH ORDINALITY
     AS e(target, record_id, payload, n)
ORDER BY e.n
"""


async def write_events(conn: asyncpg.Connection, rules: Sequence[EventRule],
                       records: Sequence[db.Record], *, base_url: str) -> int:
    """Add the events ``records`` send under ``rules`` (in the caller's transaction);
    returns how many. A ``changes_only`` rule sends only when the set of its labels
    seen from the record's source differs from the last one (an empty set too, once
    something was seen)."""
    targets: list[str] = []
    ids: list[UUID] = []
    bodies: list[str] = []
    records = sorted(records, key=lambda r: r.created_at)
    keys = {(rule.name, record.source or "") for record in records for rule in rules
            if rule.changes_only and matching(rule, record) is not None}
    seen = await _lock_sources(conn, keys) if keys else {}
    changed: dict[tuple[str, str], list[str]] = {}
    for record in records:
        for rule in rules:
            detections = matching(rule, record)
            if detections is None:
                continue
            previous = None
            if rule.changes_only:
                key = (rule.name, record.source or "")
                labels = label_set(detections)
                previous = seen[key]
                if labels == previous:
                    continue  # the same labels as last time (none at first)
                seen[key] = changed[key] = labels
            elif not detections:
                continue
            targets.append(rule.name)
            ids.append(record.id)
            bodies.append(json.dumps(payload(rule, record, detections, base_url=base_url,
                                             previous_labels=previous)))
    if changed:  # rows locked above: no deadlock whatever the order
        await conn.executemany(
            "UPDATE event_sources SET labels = $3 WHERE target = $1 AND source = $2",
            [(target, source, labels) for (target, source), labels in sorted(changed.items())])
    if targets:
        await conn.execute(_INSERT, targets, ids, bodies)
    return len(targets)


@dataclass(frozen=True)
class Event:
    id: int
    target: str
    record_id: UUID
    payload: dict[str, Any]
    attempts: int


async def lock_target(conn: asyncpg.Connection, target: str) -> bool:
    """Take the target's delivery lock for this transaction; False when another
    connection (instance) holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                                    LOCK_NAMESPACE, target))


async def due_head(conn: asyncpg.Connection, target: str) -> Event | None:
    """The target's oldest pending event, if its time has come (the head waits out its
    back-off before any later event is sent: order per target)."""
    row = await conn.fetchrow(
        "SELECT id, target, record_id, payload, attempts, next_at <= now() AS due "
        "FROM event_outbox WHERE target = $1 AND dead_at IS NULL ORDER BY id LIMIT 1",
        target)
    if row is None or not row["due"]:
        return None
    return Event(row["id"], row["target"], row["record_id"], row["payload"], row["attempts"])


async def delivered(conn: asyncpg.Connection, event: Event) -> None:
    await conn.execute("DELETE FROM event_outbox WHERE id = $1", event.id)


async def failed(conn: asyncpg.Connection, event: Event, error: str, *, retry_in: float | None
                 ) -> None:
    """A try failed: retry in ``retry_in`` seconds, or (None) set it aside as dead."""
    if retry_in is None:
        await conn.execute("UPDATE event_outbox SET attempts = attempts + 1, last_error = $2, "
                           "dead_at = now() WHERE id = $1", event.id, error[:1000])
    else:
        await conn.execute("UPDATE event_outbox SET attempts = attempts + 1, last_error = $2, "
                           "next_at = now() + make_interval(secs => $3) WHERE id = $1",
                           event.id, error[:1000], retry_in)


async def heads(pool: asyncpg.Pool) -> list[tuple[str, float]]:
    """Each target with pending events, and in how many seconds its head is due
    (<= 0: now)."""
    rows = await pool.fetch(
        "SELECT target, extract(epoch FROM next_at - now())::float8 AS wait FROM ("
        "SELECT DISTINCT ON (target) target, next_at FROM event_outbox "
        "WHERE dead_at IS NULL ORDER BY target, id) h")
    return [(row["target"], row["wait"]) for row in rows]


@dataclass(frozen=True)
class TargetCounts:
    pending: int = 0
    dead: int = 0
    oldest_pending_s: float | None = None  # age of the oldest pending event


async def counts(pool: asyncpg.Pool) -> dict[str, TargetCounts]:
    rows = await pool.fetch(
        "SELECT target, count(*) FILTER (WHERE dead_at IS NULL) AS pending, "
        "count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead, "
        "extract(epoch FROM now() - min(created_at) FILTER (WHERE dead_at IS NULL))::float8 "
        "AS oldest FROM event_outbox GROUP BY target")
    return {row["target"]: TargetCounts(row["pending"], row["dead"], row["oldest"])
            for row in rows}


async def dead_events(pool: asyncpg.Pool, target: str, limit: int = 20) -> list[dict[str, Any]]:
    """The newest events set aside as dead, for ``GET /api/events/{name}``."""
    rows = await pool.fetch(
        "SELECT record_id, created_at, attempts, last_error, dead_at FROM event_outbox "
        "WHERE target = $1 AND dead_at IS NOT NULL ORDER BY id DESC LIMIT $2", target, limit)
    iso: Callable[[datetime], str] = datetime.isoformat
    return [{"record_id": str(row["record_id"]), "created_at": iso(row["created_at"]),
             "attempts": row["attempts"], "last_error": row["last_error"],
             "dead_at": iso(row["dead_at"])} for row in rows]
