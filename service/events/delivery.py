"""The delivery worker: sends the outbox's events, at least once, in order per target.

:meth:`Delivery.run` (a background task) looks at the head of every target's queue
(woken at once by a local commit, else every ``poll_s``) and drains each target whose
head is due in a task of its own. One event is one transaction: the target's advisory
lock (another instance that holds it is left to it), the head, one try within the rule's
``timeout``, then the row deleted (delivered) or its next try set (exponential back-off
with jitter up to ``max_backoff``), or after ``max_attempts`` tries set aside as dead.
A crash at any point leaves the event in the outbox; it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import asyncpg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import db
from service.events import outbox
from service.events.errors import DeliveryError
from service.events.rules import RuleSet, UnknownEvent
from settings import EventRule

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the outbox is looked at without a local wake-up
COUNTS_EVERY_S = 2.0  # how often the pending and dead counts are read
RULES_EVERY_S = 2.0  # how often the stored rules are read again
FIRST_BACKOFF_S = 0.5
MAX_DRAINS = 2  # targets sent to at once (each holds a database connection while it sends)

Send = Callable[[EventRule, Mapping[str, Any]], Awaitable[None]]


def backoff(attempts: int, longest: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: doubling from 0.5 s up
    to ``longest``, times a random 0.5-1 (so that instances and targets spread out)."""
    return min(longest, FIRST_BACKOFF_S * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)


class Delivery:
    """Sends events through ``senders`` (``"webhook"``, ``"mqtt"``)."""

    def __init__(self, pool: asyncpg.Pool, rules: RuleSet, senders: Mapping[str, Send], *,
                 poll_s: float = POLL_S) -> None:
        self.pool = pool
        self.rules = rules
        self.senders = senders
        self.poll_s = poll_s
        self.counts: dict[str, outbox.TargetCounts] = {}
        self.delivered_total: dict[str, int] = {}
        self.failures_total: dict[str, int] = {}
        self.dead_total: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._drains: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_DRAINS)

    def wake(self) -> None:
        """Events were just committed here: look now."""
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_counts = next_rules = 0.0
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    if loop.time() >= next_rules:
                        await self.rules.refresh(self.pool)
                        next_rules = loop.time() + RULES_EVERY_S
                    for target, wait in await outbox.heads(self.pool):
                        if wait <= 0 and target not in self._drains:
                            self._drains[target] = asyncio.create_task(
                                self._drain(target), name=f"events-{target}")
                    if loop.time() >= next_counts:
                        self.counts = await outbox.counts(self.pool)
                        next_counts = loop.time() + COUNTS_EVERY_S
                except db.UNAVAILABLE_ERRORS as exc:
                    log.debug("events wait for the database: %s: %s", type(exc).__name__, exc)
                    await asyncio.sleep(self.poll_s)
                except asyncpg.PostgresError as exc:  # a refused statement: say so, go on
                    log.error("events: %s: %s", type(exc).__name__, exc)
                    await asyncio.sleep(self.poll_s)
        finally:
            drains = list(self._drains.values())
            for task in drains:
                task.cancel()
            await asyncio.gather(*drains, return_exceptions=True)

    async def _drain(self, target: str) -> None:
        """Send the target's due events one after the other, until none is due."""
        try:
            async with self._slots:
                while await self.deliver_one(target):
                    pass
        except db.UNAVAILABLE_ERRORS as exc:
            log.debug("events of %s wait for the database: %s", target, exc)
        except Exception:  # a bug: logged; the event stays and is tried again
            log.exception("events of %s: delivery failed", target)
        finally:
            self._drains.pop(target, None)

    async def deliver_one(self, target: str) -> bool:
        """One try at the target's head; False when there is none due (or another
        instance is sending this target's events)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await outbox.lock_target(conn, target):
                return False
            event = await outbox.due_head(conn, target)
            if event is None:
                return False
            try:
                rule = await self._rule(target)
            except UnknownEvent:
                await outbox.failed(conn, event, "no event rule of this name", retry_in=None)
                self._count(self.dead_total, target)
                return True
            try:
                await self.senders["webhook" if rule.webhook else "mqtt"](rule, event.payload)
            except DeliveryError as exc:
                await self._failed(conn, rule, event, str(exc))
                return False  # the head waits out its back-off
            await outbox.delivered(conn, event)
        self._count(self.delivered_total, target)
        return True

    async def _rule(self, target: str) -> EventRule:
        try:
            return self.rules.get(target)
        except UnknownEvent:  # stored by another instance a moment ago?
            await self.rules.refresh(self.pool)
            return self.rules.get(target)

    async def _failed(self, conn: asyncpg.Connection, rule: EventRule, event: outbox.Event,
                      error: str) -> None:
        attempts = event.attempts + 1
        self._count(self.failures_total, rule.name)
        self.last_error[rule.name] = error
        if attempts >= rule.max_attempts:
            log.error("event %s of record %s set aside as dead after %d tries: %s",
                      rule.name, event.record_id, attempts, error)
            await outbox.failed(conn, event, error, retry_in=None)
            self._count(self.dead_total, rule.name)
            return
        retry_in = backoff(attempts, rule.max_backoff)
        log.log(logging.WARNING if attempts == 1 else logging.DEBUG,
                "event %s of record %s not delivered (try %d): %s; next try in %.1f s",
                rule.name, event.record_id, attempts, error, retry_in)
        await outbox.failed(conn, event, error, retry_in=retry_in)

    @staticmethod
    def _count(totals: dict[str, int], target: str) -> None:
        totals[target] = totals.get(target, 0) + 1

    # ------------------------------------------------------------- reports

    def snapshot(self, name: str) -> dict[str, Any]:
        counts = self.counts.get(name, outbox.TargetCounts())
        return {"pending": counts.pending, "dead": counts.dead,
                "oldest_pending_s": None if counts.oldest_pending_s is None
                else round(counts.oldest_pending_s, 1),
                "delivered_total": self.delivered_total.get(name, 0),
                "failures_total": self.failures_total.get(name, 0),
                "last_error": self.last_error.get(name)}

    def collect(self) -> Iterator[Metric]:
        """Per rule: events pending and dead (all instances), delivered and failed tries
        (this instance)."""
        names = sorted({*(r.name for r in self.rules.all()), *self.counts})
        families = [
            GaugeMetricFamily("yolo_events_pending", "Events waiting to be delivered",
                              labels=["event"]),
            GaugeMetricFamily("yolo_events_dead", "Events set aside after their last try",
                              labels=["event"]),
            CounterMetricFamily("yolo_events_delivered", "Events delivered by this instance",
                                labels=["event"]),
            CounterMetricFamily("yolo_event_delivery_failures",
                                "Failed delivery tries of this instance", labels=["event"]),
        ]
        for name in names:
            counts = self.counts.get(name, outbox.TargetCounts())
            families[0].add_metric([name], counts.pending)
            families[1].add_metric([name], counts.dead)
            families[2].add_metric([name], self.delivered_total.get(name, 0))
            families[3].add_metric([name], self.failures_total.get(name, 0))
        yield from families
