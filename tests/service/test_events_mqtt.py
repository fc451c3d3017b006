"""Events through a real Mosquitto broker, started here: QoS 1 messages on the rule's
topics, the retained availability topic, Home Assistant discovery, and events kept and
sent once the broker is back after it went away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from main import init_app
from service.web import keys
from service.workers.pool import DetectorPool
from settings import Config
from tests.events_support import Mosquitto, free_port, record, until

DELIVERY_TIMEOUT_S = 60.0


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    server = Mosquitto(tmp_path, free_port())
    server.start()
    yield server
    server.stop()


class Subscriber:
    """Every message on ``topics``, in arrival order, retained ones included."""

    def __init__(self, port: int, identifier: str | None = None) -> None:
        self.port = port
        self.identifier = identifier  # set: a persistent session (kept while away)
        self.messages: list[tuple[str, bytes, bool]] = []

    async def run(self, ready: asyncio.Event, topics: list[str]) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.identifier,
                                  clean_session=False if self.identifier else None) as client:
            for topic in topics:
                await client.subscribe(topic, qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                self.messages.append((str(message.topic), payload, message.retain))

    def on(self, prefix: str) -> list[tuple[str, Any]]:
        return [(topic, json.loads(body)) for topic, body, _ in self.messages
                if topic.startswith(prefix)]


@pytest.fixture
async def subscriber(broker: Mosquitto) -> AsyncIterator[Subscriber]:
    listener = Subscriber(broker.port)
    ready = asyncio.Event()
    task = asyncio.create_task(listener.run(ready, ["yolo/#", "homeassistant/#"]))
    await asyncio.wait_for(ready.wait(), 10)
    yield listener
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_events_are_published_to_the_broker_with_availability_and_discovery(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        broker: Mosquitto, subscriber: Subscriber) -> None:
    config = make_config({
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "discovery": True},
        "events": {"lights": {"mqtt": "yolo/{model}/{label}", "labels": ["stop", "go"],
                              "changes_only": True, "max_backoff": 1}}})
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    events = client.server.app[keys.events_key]
    await until(events.publisher.connected.is_set, 30, "the MQTT connection")
    await until(lambda: ("yolo/status", b"online", True) in subscriber.messages
                or ("yolo/status", b"online", False) in subscriber.messages, 10,
                "online on the availability topic")
    discovery = subscriber.on("homeassistant/sensor/")
    assert {body["state_topic"] for _, body in discovery} == \
        {"yolo/service-6cls/stop", "yolo/service-6cls/go"}
    assert all(topic.endswith("/config") and body["availability_topic"] == "yolo/status"
               for topic, body in discovery)

    writer = client.server.app[keys.records_key]
    seen = record([("stop", 0.9), ("warning", 0.8)], source="camera-3")
    gone = record([], source="camera-3")
    await writer.save([seen])
    await writer.save([gone])
    await until(lambda: len(subscriber.on("yolo/service-6cls/")) >= 2, DELIVERY_TIMEOUT_S,
                "the events")
    published = subscriber.on("yolo/service-6cls/")
    assert [(topic, body["id"], body["counts"]) for topic, body in published] == [
        ("yolo/service-6cls/stop", str(seen.id), {"stop": 1}),
        ("yolo/service-6cls/stop", str(gone.id), {})]  # the sensor falls back to 0
    assert published[0][1]["source"] == "camera-3"


async def test_events_wait_for_a_broker_that_went_away_and_go_out_once_it_is_back(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        broker: Mosquitto) -> None:
    config = make_config({
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "events": {"all": {"mqtt": True, "max_backoff": 1, "max_attempts": 1000}}})
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    events = client.server.app[keys.events_key]
    await until(events.publisher.connected.is_set, 30, "the MQTT connection")
    # A subscriber with a persistent session: the broker keeps what it misses.
    listener = Subscriber(broker.port, identifier="events-test")
    ready = asyncio.Event()
    task = asyncio.create_task(listener.run(ready, ["yolo/service-6cls/#"]))
    await asyncio.wait_for(ready.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    broker.stop()
    await until(lambda: not events.publisher.connected.is_set(), 30, "the lost connection")
    writer = client.server.app[keys.records_key]
    made = [record([("go", 0.9)]) for _ in range(5)]
    for one in made:
        await writer.save([one])
    await until(lambda: events.delivery.failures_total.get("all", 0) > 0, 30, "a failed try")
    broker.start()
    await until(lambda: events.delivery.delivered_total.get("all", 0) == len(made),
                DELIVERY_TIMEOUT_S, "the events after the broker came back")
    ready = asyncio.Event()
    task = asyncio.create_task(listener.run(ready, []))
    try:
        await until(lambda: len(listener.messages) >= len(made), 30, "the queued messages")
        assert [body["id"] for _, body in listener.on("yolo/")] == [str(m.id) for m in made]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
