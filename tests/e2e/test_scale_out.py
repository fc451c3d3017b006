"""Scale-out: two service processes on one machine sharing one external PostgreSQL.

Two real ``python main.py`` processes (``bench._service.ServiceProcess``), each on its own
port with its own spool, both given the same database through ``DATABASE_URL``. The test
holds the migrations' advisory lock while they start, so that both are inside ``migrate``
at once before it lets go: a real race, which the lock in ``utils.migrate`` must make
safe. Then both take concurrent ``/detect`` requests, including the same image at the
same time. Every record must be readable from both and its image stored once, and
SIGTERM to one must leave the other serving the whole history.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import cv2
import numpy as np
import pytest

from bench._service import ServiceProcess, free_port, write_config
from tests.helpers import alive, encode
from tests.paths import TEST_CONFIG
from utils.embedded_pg import EmbeddedPostgres
from utils.migrate import LOCK_KEY, discover

INSTANCES = 2
UNIQUE_PER_INSTANCE = 4  # distinct images each instance gets, besides the shared one
READY_TIMEOUT_S = 180.0  # two services warming up at once on a small, busy machine
STOP_TIMEOUT_S = 30.0
LOCK_WAIT_TIMEOUT_S = 60.0  # until both services wait for the migration lock


def distinct_jpegs(source: bytes, count: int) -> list[bytes]:
    """``count`` different JPEGs cut from a real photo (different crops: different bytes)."""
    image = cv2.imdecode(np.frombuffer(source, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    return [encode(image[i * 20:height - i * 10, i * 15:width - i * 5], ".jpg")
            for i in range(count)]


async def detect(session: aiohttp.ClientSession, url: str, image: bytes,
                 filename: str) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/detect", params={"filename": filename}, data=image,
                            headers={"Content-Type": "image/jpeg"}) as response:
        return response.status, await response.json()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def get_bytes(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as response:
        return response.status, await response.read()


async def listed_ids(session: aiohttp.ClientSession, url: str) -> set[str]:
    status, body = await get_json(session, f"{url}/api/detections?limit=200")
    assert status == 200, body
    assert body["next"] is None  # everything on one page
    return {item["id"] for item in body["items"]}


@pytest.fixture
async def services(pg_server: EmbeddedPostgres, database: str, model_weights: Path,
                   tmp_path: Path) -> AsyncIterator[list[ServiceProcess]]:
    """Two services (not started) on distinct ports and spools, one database; stopped
    (SIGTERM, then SIGKILL) after the test whatever happened."""
    ports: set[int] = set()
    while len(ports) < INSTANCES:
        ports.add(free_port())
    env = {"DATABASE_URL": pg_server.dsn_for(database)}
    created: list[ServiceProcess] = []
    try:
        for index, port in enumerate(sorted(ports)):
            workdir = tmp_path / f"instance-{index}"
            workdir.mkdir()
            config = workdir / "service.yaml"
            write_config(TEST_CONFIG, config, workdir, {
                "postgres.embedded": False,
                "models.service-6cls.weights": str(model_weights)})
            created.append(ServiceProcess(config, port, workdir / "service.log", env=env))
        yield created
    finally:
        await asyncio.gather(*(asyncio.to_thread(service.stop, STOP_TIMEOUT_S)
                               for service in created))


async def test_two_instances_share_one_database(
        services: list[ServiceProcess], pg_server: EmbeddedPostgres, database: str,
        portrait_jpeg: bytes, landscape_jpeg: bytes) -> None:
    conn = await asyncpg.connect(pg_server.dsn_for(database))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            ready = await check_concurrent_start(services, session, conn)
            records = await check_shared_history(services, session, conn, portrait_jpeg,
                                                 landscape_jpeg)
            await check_one_stops(services, ready, session, conn, records, portrait_jpeg)
    finally:
        await conn.close()


async def lock_waiters(conn: asyncpg.Connection) -> int:
    """Sessions waiting for the migrations' advisory lock (a bigint key below 2**31 shows
    in pg_locks as classid 0, objid key, objsubid 1)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database() "
        "AND l.classid = 0 AND l.objid = $1 AND l.objsubid = 1", LOCK_KEY)
    return count


async def check_concurrent_start(services: list[ServiceProcess], session: aiohttp.ClientSession,
                                 conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Both wait for the migration lock at once, then get ready; the migrations ran once,
    by one of them."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        for service in services:
            service.start()
        deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_S
        while (waiting := await lock_waiters(conn)) < INSTANCES:
            assert all(s.running for s in services), [s.log_tail() for s in services]
            assert time.monotonic() < deadline, f"{waiting} of {INSTANCES} reached migrate()"
            await asyncio.sleep(0.1)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    ready = await asyncio.gather(*(s.wait_ready(session, READY_TIMEOUT_S) for s in services))
    assert [body["status"] for body in ready] == ["ready"] * INSTANCES
    rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name)
                                                         for m in discover()]
    applied = [s.log_path.read_text(errors="replace").count("applied migrations")
               for s in services]
    assert sorted(applied) == [0] * (INSTANCES - 1) + [1], applied
    return ready


async def check_shared_history(services: list[ServiceProcess], session: aiohttp.ClientSession,
                               conn: asyncpg.Connection, portrait_jpeg: bytes,
                               landscape_jpeg: bytes) -> list[dict[str, Any]]:
    """Concurrent requests to both (the shared image to both at once): every record is
    readable from both, stored once, its image once; returns the records."""
    unique = distinct_jpegs(portrait_jpeg, INSTANCES * UNIQUE_PER_INSTANCE)
    sent = [(s, landscape_jpeg, f"shared-{i}.jpg") for i, s in enumerate(services)]
    sent += [(services[i % INSTANCES], image, f"unique-{i}.jpg")
             for i, image in enumerate(unique)]
    answers = await asyncio.gather(*(detect(session, s.url, image, name)
                                     for s, image, name in sent))
    assert [status for status, _ in answers] == [200] * len(sent), answers
    records = [body for _, body in answers]
    ids = {record["id"] for record in records}
    assert len(ids) == len(sent)
    made_by = [{r["id"] for (target, _, _), r in zip(sent, records) if target is s}
               for s in services]

    for index, service in enumerate(services):
        for record in records:
            status, body = await get_json(session,
                                          f"{service.url}/api/detections/{record['id']}")
            assert status == 200 and body == {**record, "review": None}, (service.url, body)
        listed = await listed_ids(session, service.url)
        assert made_by[1 - index] <= listed  # the other instance's records too
        assert listed == ids

    # PostgreSQL holds exactly the answered records; the shared image is two records
    # but one row of bytes (deduplicated by SHA-256), readable through either instance.
    shared_sha = hashlib.sha256(landscape_jpeg).hexdigest()
    assert [r["sha256"] for r in records[:INSTANCES]] == [shared_sha] * INSTANCES
    assert await conn.fetchval("SELECT count(*) FROM detections") == len(sent)
    assert await conn.fetchval(
        "SELECT count(*) FROM detections WHERE sha256 = $1", shared_sha) == INSTANCES
    assert await conn.fetchval("SELECT count(*) FROM images") == len(unique) + 1
    assert await conn.fetchval(
        "SELECT data FROM images WHERE sha256 = $1", shared_sha) == landscape_jpeg
    for service, record in zip(reversed(services), records[:INSTANCES]):
        status, data = await get_bytes(session,
                                       f"{service.url}/detections/{record['id']}/image")
        assert status == 200 and data == landscape_jpeg

    # Each wrote straight to the database: nothing went through its own spool.
    for service in services:
        status, body = await get_json(session, f"{service.url}/readyz")
        assert status == 200 and body["spool"]["spooled_total"] == 0, body
        assert not (service.config.parent / "spool" / "records.spool").exists()
    return records


async def check_one_stops(services: list[ServiceProcess], ready: list[dict[str, Any]],
                          session: aiohttp.ClientSession, conn: asyncpg.Connection,
                          records: list[dict[str, Any]], image: bytes) -> None:
    """SIGTERM to one: it exits cleanly with its workers; the other keeps serving the
    whole history and keeps writing; then it stops cleanly too."""
    first, second = services
    workers = [[worker["pid"] for worker in body["workers"]] for body in ready]
    assert await asyncio.to_thread(first.stop, STOP_TIMEOUT_S) == 0, first.log_tail()
    assert workers[0] and not any(alive(pid) for pid in workers[0])
    with pytest.raises(aiohttp.ClientConnectionError):
        await get_json(session, f"{first.url}/healthz")

    status, body = await get_json(session, f"{second.url}/readyz")
    assert status == 200 and body["status"] == "ready", body
    assert await listed_ids(session, second.url) == {record["id"] for record in records}
    status, late = await detect(session, second.url, image, "late.jpg")
    assert status == 200, late
    status, body = await get_json(session, f"{second.url}/api/detections/{late['id']}")
    assert status == 200 and body == {**late, "review": None}
    assert await conn.fetchval("SELECT count(*) FROM detections") == len(records) + 1

    assert await asyncio.to_thread(second.stop, STOP_TIMEOUT_S) == 0, second.log_tail()
    assert workers[1] and not any(alive(pid) for pid in workers[1])
