"""Events for the app: the rules, the outbox writer given to the record writer, the
delivery worker and the MQTT connection, opened and closed by :func:`events_context`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.core import Metric

import db
from service.events import outbox
from service.events.delivery import Delivery, Send
from service.events.mqtt import MqttPublisher, discovery_configs
from service.events.rules import RuleSet
from service.events.webhook import WebhookSender
from settings import Config

log = logging.getLogger(__name__)


class Events:
    """What :func:`events_context` yields."""

    def __init__(self, rules: RuleSet, delivery: Delivery, publisher: MqttPublisher | None,
                 base_url: str) -> None:
        self.rules = rules
        self.delivery = delivery
        self.publisher = publisher
        self.base_url = base_url

    def in_transaction(self) -> db.InTransaction | None:
        """The outbox work for a transaction that inserts records; None without rules
        (the records' insert then stays one statement)."""
        rules = self.rules.all()
        if not rules:
            return None

        async def write(conn: asyncpg.Connection, records: Sequence[db.Record]) -> None:
            if await outbox.write_events(conn, rules, records, base_url=self.base_url):
                self.delivery.wake()

        return write

    def describe(self, name: str) -> dict[str, Any]:
        rule = self.rules.get(name)
        return {"name": name, "origin": "config" if self.rules.is_fixed(name) else "api",
                "rule": rule.to_json(), "delivery": self.delivery.snapshot(name)}

    def snapshot(self) -> dict[str, Any]:
        """For /readyz: per rule, pending and dead events; the broker's connection."""
        body: dict[str, Any] = {"rules": {rule.name: self.delivery.snapshot(rule.name)
                                          for rule in self.rules.all()}}
        if self.publisher is not None:
            body["mqtt"] = {"connected": self.publisher.connected.is_set(),
                            "error": self.publisher.last_error}
        return body

    def problem(self) -> str | None:
        """Why events are degraded (dead events, the broker away), or None."""
        dead = {name: c.dead for name, c in self.delivery.counts.items() if c.dead}
        problems = [f"{n} dead event(s) for {name}" for name, n in sorted(dead.items())]
        if self.publisher is not None and not self.publisher.connected.is_set() \
                and any(rule.mqtt for rule in self.rules.all()):
            problems.append("MQTT broker not connected")
        return "; ".join(problems) or None

    def collect(self) -> Iterator[Metric]:
        yield from self.delivery.collect()


def _model_labels(config: Config) -> list[tuple[Any, list[str]]]:
    return [(model, [line.strip() for line in model.names.read_text(encoding="utf-8")
                     .splitlines() if line.strip()]) for model in config.models]


@asynccontextmanager
async def events_context(config: Config, pool: asyncpg.Pool) -> AsyncIterator[Events]:
    """Rules read, the delivery worker and the MQTT connection started; all stopped on
    exit (events not sent yet stay in the outbox for the next start, or another
    instance)."""
    rules = RuleSet(config.events, config.mqtt, [model.name for model in config.models])
    await rules.refresh(pool)
    async with aiohttp.ClientSession() as session:
        senders: dict[str, Send] = {"webhook": WebhookSender(session).send}
        publisher = None
        if config.mqtt is not None:
            discovery = None
            if config.mqtt.discovery:
                models = await asyncio.to_thread(_model_labels, config)
                discovery = discovery_configs(config.mqtt, rules.all(), models)
            publisher = MqttPublisher(config.mqtt, discovery=discovery)
            senders["mqtt"] = publisher.send
        delivery = Delivery(pool, rules, senders)
        tasks = [asyncio.create_task(delivery.run(), name="events-delivery")]
        if publisher is not None:
            tasks.append(asyncio.create_task(publisher.run(), name="mqtt"))
        try:
            yield Events(rules, delivery, publisher, config.server.base_url)
        finally:
            tasks[0].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[0]
            if publisher is not None:
                await publisher.goodbye()
            for task in tasks[1:]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
