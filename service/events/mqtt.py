"""MQTT: events published through a broker (``mqtt:`` in the config) with aiomqtt.

One connection per instance, kept by :meth:`MqttPublisher.run` (a background task that
reconnects with back-off). On connecting it publishes ``online`` to the retained
availability topic ``{topic_prefix}/status`` (the broker publishes the will,
``offline``, when the connection is lost; a clean shutdown publishes it itself) and,
with ``discovery: true``, Home Assistant's discovery configs: one sensor per (rule,
model, label) whose value is that label's count in the last event.

An event goes to the rule's topic template once per label (its labels, and for a
``changes_only`` rule the labels that just went away, so that a sensor falls back to 0),
QoS 1: :meth:`send` returns once the broker has acknowledged every message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import aiomqtt

from service.events.errors import DeliveryError
from service.events.rules import body_bytes
from settings import EventRule, ModelConfig, MqttConfig

log = logging.getLogger(__name__)

RECONNECT_S = (0.5, 30.0)  # first and longest wait between connection attempts
KEEPALIVE_S = 30


def _segment(value: str | None, default: str) -> str:
    """A value made safe for one topic level."""
    text = (value or default).strip() or default
    return "".join("_" if ch in "/+#\0" else ch for ch in text)


def topics(rule: EventRule, event: Mapping[str, Any]) -> list[str]:
    """The topics an event goes to: one per label (``none`` when it has none)."""
    assert rule.mqtt is not None
    labels = list(dict.fromkeys([*event.get("labels", []), *event.get("previous_labels", [])]))
    if "{label}" not in rule.mqtt:
        labels = labels[:1]
    found = []
    for label in labels or ["none"]:
        topic = rule.mqtt.format(model=_segment(event.get("model"), "unknown"),
                                 label=_segment(label, "none"),
                                 source=_segment(event.get("source"), "unknown"),
                                 event=_segment(event.get("event"), rule.name))
        if topic not in found:
            found.append(topic)
    return found


def discovery_configs(config: MqttConfig, rules: Sequence[EventRule],
                      models: Sequence[tuple[ModelConfig, Sequence[str]]]
                      ) -> list[tuple[str, dict[str, Any]]]:
    """Home Assistant discovery messages: (topic, config) per (rule, model, label); rules
    whose topic names the source are left out (their sources are not known ahead)."""
    messages = []
    availability = f"{config.topic_prefix}/status"
    for rule in rules:
        if rule.mqtt is None or "{source}" in rule.mqtt:
            continue
        for model, labels in models:
            if rule.models and model.name not in rule.models:
                continue
            for label in labels:
                if rule.labels and label not in rule.labels:
                    continue
                unique = _segment(f"yolo_{rule.name}_{model.name}_{label}", "x")
                unique = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in unique)
                state = rule.mqtt.format(model=_segment(model.name, "unknown"),
                                         label=_segment(label, "none"), event=rule.name,
                                         source="unknown")
                messages.append((f"{config.discovery_prefix}/sensor/{unique}/config", {
                    "name": f"{model.name} {label}", "unique_id": unique,
                    "object_id": unique, "state_topic": state,
                    "value_template": "{{ value_json.counts.get('%s', 0) }}" % label,
                    "json_attributes_topic": state, "state_class": "measurement",
                    "availability_topic": availability,
                    "device": {"identifiers": ["yolo-detect"], "name": "YOLO detection",
                               "model": "Darknet YOLO detection service"},
                }))
    return messages


class MqttPublisher:
    """The instance's connection to the broker; :meth:`send` publishes an event."""

    def __init__(self, config: MqttConfig, *,
                 discovery: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        self.config = config
        self.availability = f"{config.topic_prefix}/status"
        self.discovery = discovery or []
        self.identifier = f"yolo-detect-{uuid.uuid4().hex[:12]}"
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self._client: aiomqtt.Client | None = None

    def _new_client(self) -> aiomqtt.Client:
        tls = ssl.create_default_context() if self.config.tls else None
        return aiomqtt.Client(
            self.config.host, self.config.port, username=self.config.username,
            password=self.config.password, identifier=self.identifier,
            keepalive=KEEPALIVE_S, tls_context=tls, timeout=10,
            will=aiomqtt.Will(self.availability, b"offline", qos=1, retain=True))

    async def run(self) -> None:
        """Background task: stay connected, reconnecting with back-off and jitter."""
        failures = 0
        while True:
            try:
                async with self._new_client() as client:
                    await client.publish(self.availability, b"online", qos=1, retain=True)
                    for topic, body in self.discovery:
                        await client.publish(topic, json.dumps(body).encode(), qos=1,
                                             retain=True)
                    self._client = client
                    self.connected.set()
                    if failures:
                        log.info("MQTT broker %s:%d reachable again", self.config.host,
                                 self.config.port)
                    failures = 0
                    self.last_error = None
                    async for _ in client.messages:  # none subscribed: ends with the link
                        pass
            except aiomqtt.MqttError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.log(logging.WARNING if failures == 0 else logging.DEBUG,
                        "MQTT broker %s:%d: %s", self.config.host, self.config.port,
                        self.last_error)
            finally:
                self._client = None
                self.connected.clear()
            failures += 1
            first, longest = RECONNECT_S
            await asyncio.sleep(min(longest, first * 2 ** (failures - 1))
                                * random.uniform(0.5, 1.0))

    async def goodbye(self) -> None:
        """Say ``offline`` on the availability topic (a clean shutdown: no will)."""
        client = self._client
        if client is None:
            return
        try:
            await client.publish(self.availability, b"offline", qos=1, retain=True, timeout=2)
        except aiomqtt.MqttError as exc:
            log.debug("MQTT offline not published: %s", exc)

    async def send(self, rule: EventRule, event: Mapping[str, Any]) -> None:
        """Publish the event (QoS 1) within ``rule.timeout``; raises DeliveryError."""
        client = self._client
        if client is None:
            raise DeliveryError(f"not connected to the MQTT broker "
                                f"({self.last_error or 'connecting'})")
        body = body_bytes(event)
        try:
            async with asyncio.timeout(rule.timeout):
                for topic in topics(rule, event):
                    await client.publish(topic, body, qos=1)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            raise DeliveryError(f"MQTT: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
