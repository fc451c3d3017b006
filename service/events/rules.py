"""Event rules: the config file's (fixed) and those added through the API (stored in
PostgreSQL, read again every few seconds by every instance), and what a record sends.

:func:`matching` and :func:`payload` are plain functions: which detections of a record a
rule takes, and the JSON an event carries (the webhook's body, the MQTT message).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

import db
from model.detection import Detection
from settings import ConfigError, EventRule, MqttConfig, parse_event_rule

log = logging.getLogger(__name__)


class UnknownEvent(LookupError):
    """No event rule of that name (-> 404)."""


class FixedEvent(RuntimeError):
    """A rule of the config file: the API cannot change or delete it (-> 409)."""


class InvalidEvent(ValueError):
    """A rule sent to the API that does not check (-> 400); the message names the key."""


class RuleSet:
    """The rules in force: the config file's, then those stored through the API."""

    def __init__(self, fixed: Sequence[EventRule], mqtt: MqttConfig | None,
                 models: Sequence[str] | None = None) -> None:
        self.fixed = {rule.name: rule for rule in fixed}
        self.mqtt = mqtt
        self.models = models  # the names served: a rule may name only these
        self.stored: dict[str, EventRule] = {}

    def all(self) -> list[EventRule]:
        return [*self.fixed.values(), *self.stored.values()]

    def get(self, name: str) -> EventRule:
        rule = self.fixed.get(name) or self.stored.get(name)
        if rule is None:
            raise UnknownEvent(f"no event rule named {name!r}")
        return rule

    def is_fixed(self, name: str) -> bool:
        return name in self.fixed

    async def refresh(self, pool: asyncpg.Pool) -> None:
        """Read the stored rules again (another instance may have changed them)."""
        rows = await pool.fetch("SELECT name, rule FROM event_rules ORDER BY name")
        stored = {}
        for row in rows:
            try:
                stored[row["name"]] = parse_event_rule(row["name"], row["rule"], mqtt=self.mqtt)
            except ConfigError as exc:  # e.g. an mqtt rule, and the broker since removed
                log.warning("stored event rule %r is not used: %s", row["name"], exc)
        self.stored = stored

    def check(self, name: str, raw: Any) -> EventRule:
        """A rule sent to the API, checked; raises FixedEvent or InvalidEvent."""
        if name in self.fixed:
            raise FixedEvent(f"the event rule {name!r} is set in the config file; change it "
                             "there")
        try:
            return parse_event_rule(name, raw, mqtt=self.mqtt, models=self.models,
                                    prefix="event")
        except ConfigError as exc:
            raise InvalidEvent(str(exc)) from None

    async def put(self, pool: asyncpg.Pool, rule: EventRule) -> bool:
        """Store a rule (checked by :meth:`check`); True when it is new."""
        created = await pool.fetchval(
            "INSERT INTO event_rules (name, rule) VALUES ($1, $2) ON CONFLICT (name) "
            "DO UPDATE SET rule = EXCLUDED.rule, updated_at = now() RETURNING xmax = 0",
            rule.name, _stored_form(rule))
        self.stored[rule.name] = rule
        return bool(created)

    async def delete(self, pool: asyncpg.Pool, name: str) -> None:
        """Delete a stored rule with its events, pending and dead, and its sources."""
        if name in self.fixed:
            raise FixedEvent(f"the event rule {name!r} is set in the config file; remove "
                             "it there")
        async with pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval("DELETE FROM event_rules WHERE name = $1 "
                                          "RETURNING name", name)
            if deleted is None:
                raise UnknownEvent(f"no event rule named {name!r}")
            await conn.execute("DELETE FROM event_outbox WHERE target = $1", name)
            await conn.execute("DELETE FROM event_sources WHERE target = $1", name)
        self.stored.pop(name, None)


def _stored_form(rule: EventRule) -> dict[str, Any]:
    data = rule.to_json(with_secret=True)
    return {key: value for key, value in data.items() if value is not None}


def matching(rule: EventRule, record: db.Record) -> list[Detection] | None:
    """The detections of ``record`` that ``rule`` takes; None when the rule is not about
    the record at all (another model)."""
    if rule.models and record.model not in rule.models:
        return None
    return [d for d in record.detections
            if (not rule.labels or d.label in rule.labels)
            and d.confidence >= rule.min_confidence]


def label_set(detections: Sequence[Detection]) -> list[str]:
    return sorted({d.label for d in detections})


def payload(rule: EventRule, record: db.Record, detections: Sequence[Detection], *,
            base_url: str, previous_labels: Sequence[str] | None = None) -> dict[str, Any]:
    """An event's JSON: the record, the detections the rule took, links to its pages."""
    counts: dict[str, int] = {}
    for d in detections:
        counts[d.label] = counts.get(d.label, 0) + 1
    body: dict[str, Any] = {
        "id": str(record.id),
        "event": rule.name,
        "model": record.model,
        "model_version": record.model_version,
        "source": record.source,
        "time": record.created_at.isoformat(),
        "labels": label_set(detections),
        "counts": counts,
        "detections": [d.to_json() for d in detections],
        "image_url": f"{base_url}/detections/{record.id}/image?annotated=1",
        "record_url": f"{base_url}/detections/{record.id}",
    }
    if previous_labels is not None:
        body["previous_labels"] = list(previous_labels)
    return body


def body_bytes(event: Mapping[str, Any]) -> bytes:
    """The bytes sent (and signed): compact JSON, keys in a fixed order."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode("utf-8")
