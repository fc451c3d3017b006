"""Events against a real PostgreSQL, a real webhook receiver on a real socket and the
real app: the outbox written with each record, delivery at least once and in order,
retries while the receiver is down, dead events, spool replays, two instances, the API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import db
from main import init_app
from service.recorder import encode_entry
from service.web import keys
from service.workers.pool import DetectorPool
from settings import Config
from tests.helpers import form
from tests.events_support import Receiver, free_port, record, until

SECRET = "change-me"
DOWN_S = 30.0  # how long the receiver is away in the outage test
DELIVERY_TIMEOUT_S = 60.0


def rule(url: str, **more: Any) -> dict[str, Any]:
    return {"webhook": url, "secret": SECRET, "max_backoff": 1, **more}


@pytest.fixture
async def receiver() -> Any:
    hook = Receiver(free_port(), SECRET)
    await hook.start()
    yield hook
    await hook.stop()


async def app_client(make_config: Callable[..., Config], detector_pool: DetectorPool,
                     aiohttp_client: Any, events: dict[str, Any],
                     **overrides: Any) -> Any:
    config = make_config({"events": events, **overrides})
    return await aiohttp_client(await init_app(config, detector_pool=detector_pool))


async def test_events_arrive_for_matching_records_only_signed_and_once(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver) -> None:
    client = await app_client(make_config, detector_pool, aiohttp_client, {
        "red-lights": rule(receiver.url, labels=["stop", "stopLeft"],
                           models=["service-6cls"], min_confidence=0.5)})
    writer = client.server.app[keys.records_key]
    cases = {
        "stop": record([("stop", 0.9)]),  # yes
        "both": record([("go", 0.9), ("stopLeft", 0.6)]),  # yes: stopLeft only
        "weak": record([("stop", 0.4)]),  # below min_confidence
        "green": record([("go", 0.99)]),  # another label
        "other-model": record([("stop", 0.9)], model="colours"),
        "empty": record([]),
    }
    for case in cases.values():
        await writer.save([case])
    wanted = [str(cases["stop"].id), str(cases["both"].id)]
    await until(lambda: len(receiver.received) >= 2, DELIVERY_TIMEOUT_S, "two events")
    assert await client.server.app[keys.db_key].fetchval(
        "SELECT count(*) FROM event_outbox") == 0
    assert receiver.ids() == wanted  # in commit order, each once, nothing else
    assert receiver.bad_signatures == 0  # the receiver checked every one with its HMAC
    body = receiver.received[1]
    assert body["labels"] == ["stopLeft"] and [d["label"] for d in body["detections"]] == \
        ["stopLeft"]
    assert body["model"] == "service-6cls" and body["event"] == "red-lights"
    assert body["image_url"].endswith(f"/detections/{cases['both'].id}/image?annotated=1")
    assert receiver.headers[1]["Idempotency-Key"] == str(cases["both"].id)
    assert receiver.headers[1]["X-Signature-256"].startswith("sha256=")


async def test_changes_only_from_two_instances_at_once_neither_deadlocks_nor_repeats(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver, tmp_path: Path) -> None:
    """Two writers commit records of the same two sources at the same time, in opposite
    orders: every save commits, and each source's events alternate as its labels do."""
    events = {"lights": rule(receiver.url, changes_only=True)}
    first = await app_client(make_config, detector_pool, aiohttp_client, events)
    second = await app_client(make_config, detector_pool, aiohttp_client, events,
                              storage={"spool_dir": str(tmp_path / "spool-2")})
    writers = [first.server.app[keys.records_key], second.server.app[keys.records_key]]
    rounds = 15
    for n in range(rounds):
        label = ("stop", 0.9) if n % 2 == 0 else ("go", 0.9)
        a1, b1 = record([label], source="a"), record([label], source="b")
        a2, b2 = record([label], source="a"), record([label], source="b")
        answers = await asyncio.gather(writers[0].save([a1, b1]), writers[1].save([b2, a2]))
        assert answers == ["database", "database"]
    await until(lambda: len(receiver.received) >= 2 * rounds, DELIVERY_TIMEOUT_S, "events")
    assert await first.server.app[keys.db_key].fetchval(
        "SELECT count(*) FROM event_outbox") == 0
    for source in ("a", "b"):
        labels = [b["labels"] for b in receiver.received if b["source"] == source]
        assert labels == [["stop"] if n % 2 == 0 else ["go"] for n in range(rounds)]


async def test_a_detect_request_sends_its_record_with_its_source(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver, portrait_jpeg: bytes) -> None:
    client = await app_client(make_config, detector_pool, aiohttp_client,
                              {"all": rule(receiver.url)})
    response = await client.post("/detect?conf=0.01&source=camera-3",
                                 data=form(("p.jpg", portrait_jpeg, "image/jpeg")))
    answer = await response.json()
    assert response.status == 200, answer
    assert answer["source"] == "camera-3" and answer["detections"]
    await until(lambda: receiver.received, DELIVERY_TIMEOUT_S, "the event")
    (body,) = receiver.received
    assert body["id"] == answer["id"] and body["source"] == "camera-3"
    assert len(body["detections"]) == len(answer["detections"])
    stored = await db.get_detection(client.server.app[keys.db_key], uuid.UUID(answer["id"]))
    assert stored.source == "camera-3"


async def test_changes_only_sends_when_a_sources_label_set_changes(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver) -> None:
    client = await app_client(make_config, detector_pool, aiohttp_client, {
        "lights": rule(receiver.url, labels=["stop", "go"], changes_only=True)})
    writer = client.server.app[keys.records_key]
    one, two = "camera-1", "camera-2"
    sequence = [
        (record([], source=one), None),  # nothing, where nothing was seen: no event
        (record([("stop", 0.9)], source=one), ["stop"]),
        (record([("stop", 0.8)], source=one), None),  # the same set
        (record([("stop", 0.8)], source=two), ["stop"]),  # another source
        (record([("stop", 0.8), ("go", 0.7), ("warning", 0.9)], source=one), ["go", "stop"]),
        (record([("warning", 0.9)], source=one), []),  # the lights went away
        (record([], source=one), None),
    ]
    for made, _ in sequence:
        await writer.save([made])
    expected = [(str(made.id), labels) for made, labels in sequence if labels is not None]
    await until(lambda: len(receiver.received) >= len(expected), DELIVERY_TIMEOUT_S,
                "the changes")
    assert [(b["id"], b["labels"]) for b in receiver.received] == expected
    assert receiver.received[-1]["previous_labels"] == ["go", "stop"]


async def test_a_receiver_down_for_30_s_under_load_gets_every_event_once_in_order(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        portrait_jpeg: bytes, landscape_jpeg: bytes) -> None:
    """Requests stream in while nothing listens at the webhook's port; once a receiver
    starts there, every record with a detection arrives, once, each stream's in order."""
    hook = Receiver(free_port(), SECRET)
    client = await app_client(make_config, detector_pool, aiohttp_client,
                              {"all": rule(hook.url, max_backoff=2, max_attempts=1000)})
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + DOWN_S
    streams: list[list[dict[str, Any]]] = [[], []]

    async def stream(image: bytes, out: list[dict[str, Any]]) -> None:
        while loop.time() < stop_at:
            response = await client.post("/detect?conf=0.01",
                                         data=form(("x.jpg", image, "image/jpeg")))
            assert response.status == 200
            out.append(await response.json())

    await asyncio.gather(stream(portrait_jpeg, streams[0]), stream(landscape_jpeg, streams[1]))
    events = client.server.app[keys.events_key]
    assert not hook.received and events.delivery.failures_total.get("all", 0) > 0
    expected = [[a["id"] for a in answers if a["detections"]] for answers in streams]
    assert sum(map(len, expected)) >= 4, "too few requests to call it load"
    await hook.start()
    try:
        await until(lambda: len(hook.received) >= sum(map(len, expected)),
                    DELIVERY_TIMEOUT_S, "every event after the outage")
        pending = await client.server.app[keys.db_key].fetchval(
            "SELECT count(*) FROM event_outbox")
        assert pending == 0
        got = hook.ids()
        assert sorted(got) == sorted(i for ids in expected for i in ids)  # each once
        for ids in expected:  # a stream's requests were committed one after the other
            assert [i for i in got if i in set(ids)] == ids
    finally:
        await hook.stop()


async def test_tries_run_out_and_the_event_is_set_aside_as_dead_and_shown(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver) -> None:
    receiver.status = 500
    client = await app_client(make_config, detector_pool, aiohttp_client, {
        "flaky": rule(receiver.url, max_attempts=2, max_backoff=0.1)})
    writer = client.server.app[keys.records_key]
    first, second = record([("stop", 0.9)]), record([("go", 0.9)])
    await writer.save([first])
    await writer.save([second])
    events = client.server.app[keys.events_key]
    await until(lambda: events.delivery.dead_total.get("flaky", 0) == 2, DELIVERY_TIMEOUT_S,
                "two dead events")
    await until(lambda: events.delivery.counts.get("flaky") is not None
                and events.delivery.counts["flaky"].dead == 2, 10, "the counts")
    answer = await (await client.get("/api/events/flaky")).json()
    assert answer["delivery"]["dead"] == 2 and answer["delivery"]["pending"] == 0
    assert [d["record_id"] for d in answer["dead_events"]] == [str(second.id), str(first.id)]
    assert "HTTP 500" in answer["dead_events"][0]["last_error"]
    ready = await (await client.get("/readyz")).json()
    assert ready["status"] == "degraded" and "2 dead event(s) for flaky" in \
        ready["checks"]["events"]
    metrics = await (await client.get("/metrics")).text()
    assert 'yolo_events_dead{event="flaky"} 2.0' in metrics
    assert 'yolo_event_delivery_failures_total{event="flaky"} 4.0' in metrics


async def test_a_receiver_slower_than_the_timeout_is_tried_again(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver) -> None:
    """Each try is bounded by the rule's timeout: a receiver that does not answer in
    time counts as down, and the event goes again once it answers."""
    receiver.delay = 3.0  # six times the timeout
    client = await app_client(make_config, detector_pool, aiohttp_client, {
        "slow": rule(receiver.url, timeout=0.5, max_backoff=0.5)})
    events = client.server.app[keys.events_key]
    made = record([("stop", 0.9)])
    await client.server.app[keys.records_key].save([made])
    await until(lambda: events.delivery.failures_total.get("slow", 0) >= 2, 30,
                "two tries that timed out")
    assert "TimeoutError" in (events.delivery.last_error.get("slow") or "")
    receiver.delay = 0.0
    await until(lambda: receiver.received, DELIVERY_TIMEOUT_S, "the event")
    assert receiver.ids() == [str(made.id)] and receiver.slow_requests >= 2


async def test_redirects_are_not_followed(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver) -> None:
    client = await app_client(make_config, detector_pool, aiohttp_client, {
        "moved": rule(receiver.url.replace("/hook", "/moved"), max_attempts=2,
                      max_backoff=0.1)})
    await client.server.app[keys.records_key].save([record([("stop", 0.9)])])
    events = client.server.app[keys.events_key]
    await until(lambda: events.delivery.dead_total.get("moved", 0) == 1, DELIVERY_TIMEOUT_S,
                "the event set aside")
    assert events.delivery.last_error["moved"].startswith("HTTP 307")
    assert receiver.received == []  # /hook never saw it


async def test_records_replayed_from_the_spool_send_their_events(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver) -> None:
    client = await app_client(make_config, detector_pool, aiohttp_client,
                              {"all": rule(receiver.url)})
    writer = client.server.app[keys.records_key]
    spooled = [record([("stop", 0.9)]) for _ in range(3)]
    for made in spooled:  # as the writer spools them while the database is away
        await writer.spool.append(encode_entry([made], []), 1)
    assert await writer.replay_pending() == 3
    assert await writer.replay_pending() == 0
    await until(lambda: len(receiver.received) >= 3, DELIVERY_TIMEOUT_S, "replayed events")
    assert receiver.ids() == [str(made.id) for made in spooled]


async def test_two_instances_on_one_database_deliver_each_event_once_in_order(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver, tmp_path: Path) -> None:
    events = {"all": rule(receiver.url)}
    first = await app_client(make_config, detector_pool, aiohttp_client, events)
    second = await app_client(make_config, detector_pool, aiohttp_client, events,
                              storage={"spool_dir": str(tmp_path / "spool-2")})
    made = [record([("stop", 0.9)]) for _ in range(40)]
    writers = [first.server.app[keys.records_key], second.server.app[keys.records_key]]
    for n, one in enumerate(made):
        await writers[n % 2].save([one])
    await until(lambda: len(receiver.received) >= len(made), DELIVERY_TIMEOUT_S,
                "every event")
    pool = first.server.app[keys.db_key]
    assert await pool.fetchval("SELECT count(*) FROM event_outbox") == 0
    assert receiver.ids() == [str(one.id) for one in made]
    delivered = [app.server.app[keys.events_key].delivery.delivered_total.get("all", 0)
                 for app in (first, second)]
    assert sum(delivered) == len(made)


async def test_rules_through_the_api(make_config: Callable[..., Config],
                                     detector_pool: DetectorPool, aiohttp_client: Any,
                                     receiver: Receiver) -> None:
    client = await app_client(make_config, detector_pool, aiohttp_client,
                              {"fixed": rule(receiver.url)})
    added = await client.put("/api/events/added", json=rule(receiver.url, labels=["go"]))
    assert added.status == 201, await added.text()
    body = await added.json()
    assert body["origin"] == "api" and body["rule"]["labels"] == ["go"]
    assert body["rule"]["has_secret"] is True and "secret" not in body["rule"]
    again = await client.put("/api/events/added", json=rule(receiver.url, labels=["stop"]))
    assert again.status == 200
    listed = await (await client.get("/api/events")).json()
    assert [e["name"] for e in listed["events"]] == ["fixed", "added"]
    for bad, status, code in [({"webhook": "ftp://x"}, 400, "invalid_event"),
                              ({"webhook": receiver.url, "colour": 1}, 400, "invalid_event"),
                              ({}, 400, "invalid_event"), ([1], 400, "invalid_json"),
                              ({"webhook": receiver.url, "models": ["nope"]}, 400,
                               "invalid_event")]:
        response = await client.put("/api/events/bad", json=bad)
        assert (response.status, (await response.json())["error"]["code"]) == (status, code)
    fixed = await client.put("/api/events/fixed", json=rule(receiver.url))
    assert fixed.status == 409
    assert (await client.delete("/api/events/fixed")).status == 409
    await client.server.app[keys.records_key].save([record([("stop", 0.9)])])
    await until(lambda: len(receiver.received) >= 2, DELIVERY_TIMEOUT_S, "both rules' events")
    assert sorted(h["X-Yolo-Event"] for h in receiver.headers) == ["added", "fixed"]
    assert (await client.delete("/api/events/added")).status == 204
    missing = await client.get("/api/events/added")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "unknown_event"
    assert (await client.delete("/api/events/added")).status == 404


async def test_the_deepstack_routes_record_the_source_field(client: Any,
                                                            portrait_jpeg: bytes) -> None:
    data = form(("p.jpg", portrait_jpeg, "image/jpeg"))
    data.add_field("source", "driveway")
    response = await client.post("/v1/vision/detection", data=data)
    answer = await response.json()
    assert response.status == 200, answer
    stored = await db.get_detection(client.server.app[keys.db_key],
                                    uuid.UUID(answer["requestId"]))
    assert stored.source == "driveway"
    bad = await client.post("/detect?source=" + "x" * 300,
                            data=form(("p.jpg", portrait_jpeg, "image/jpeg")))
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "bad_parameter"


async def test_with_access_control_rules_need_an_admin_token(
        make_config: Callable[..., Config], detector_pool: DetectorPool, aiohttp_client: Any,
        receiver: Receiver, tmp_path: Path) -> None:
    from service.web.tokens import create_token

    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "admin", admin=True)
    other = create_token(tokens, "camera")
    client = await app_client(make_config, detector_pool, aiohttp_client,
                              {"fixed": rule(receiver.url)},
                              auth={"tokens_file": str(tokens)})
    for method, path in [("GET", "/api/events"), ("GET", "/api/events/fixed"),
                         ("PUT", "/api/events/x"), ("DELETE", "/api/events/fixed")]:
        response = await client.request(method, path, json=rule(receiver.url))
        assert response.status == 401, (method, path)
        assert (await response.json())["error"]["code"] == "unauthorized"
        not_admin = await client.request(method, path, json=rule(receiver.url),
                                         headers={"Authorization": f"Bearer {other}"})
        assert not_admin.status == 403, (method, path)
    signed = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/events/fixed", headers=signed)).status == 200
    added = await client.put("/api/events/x", json=rule(receiver.url), headers=signed)
    assert added.status == 201
