"""PostgreSQL goes away: /detect keeps answering, records wait in the spool, and are
replayed exactly once when it returns — also across a restart of the app.

A PostgreSQL server of its own (the session's is shared by every other test), really
stopped and started again.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from main import init_app
from service.web import keys
from service.web.auth import COOKIE_NAME, LOOKUP_TIMEOUT_S
from service.web.tokens import create_token
from service.workers.pool import DetectorPool
from settings import Config, load_config
from tests.helpers import form
from tests.paths import TEST_CONFIG
from tests.tmpfs import MountRefused, tmpfs
from utils.embedded_pg import EmbeddedPostgres
from utils.spool import SPOOL_NAME

JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def own_pg() -> Iterator[EmbeddedPostgres]:
    with tempfile.TemporaryDirectory(prefix="yolo-outage-pg-") as folder:
        server = EmbeddedPostgres(Path(folder) / "data", port=5433)
        server.start()
        yield server
        server.stop()


@pytest_asyncio.fixture
async def own_database(own_pg: EmbeddedPostgres) -> AsyncIterator[EmbeddedPostgres]:
    """An empty schema for each test (the server may have been stopped by the last one)."""
    if not (own_pg.data_dir / "postmaster.pid").exists():
        await asyncio.to_thread(own_pg.start)
    conn = await asyncpg.connect(own_pg.dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
    yield own_pg


@pytest.fixture
def outage_config(own_database: EmbeddedPostgres, model_weights: Path,
                  tmp_path: Path) -> Config:
    socket_dir = own_database.dsn.split("host=")[1].split("&")[0]
    return load_config(TEST_CONFIG, env={}, overrides={
        "postgres": {"host": socket_dir, "port": own_database.port, "database": "postgres",
                     "write_timeout": 2},
        "models": {"service-6cls": {"weights": str(model_weights)}},
        "storage": {"spool_dir": str(tmp_path / "spool")},
    })


@pytest.fixture
def start_app(outage_config: Config, detector_pool: DetectorPool,
              aiohttp_client: Any) -> Callable[[], Any]:
    async def start() -> Any:
        return await aiohttp_client(await init_app(outage_config, detector_pool=detector_pool))
    return start


async def stored(server: EmbeddedPostgres) -> dict[str, int]:
    """Every record id in the database, with how many rows carry it."""
    conn = await asyncpg.connect(server.dsn)
    try:
        rows = await conn.fetch("SELECT id::text AS id, count(*) AS n FROM detections GROUP BY id")
        return {row["id"]: row["n"] for row in rows}
    finally:
        await conn.close()


async def wait_for_empty_spool(client: Any, timeout: float = 30.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        body = await (await client.get("/readyz")).json()
        if body["spool"]["entries"] == 0 and body["checks"]["database"] == "ok":
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"the spool was not replayed within {timeout}s")


async def test_detect_answers_while_postgres_is_down_and_replays_exactly_once(
        own_database: EmbeddedPostgres, start_app: Callable[[], Any], outage_config: Config,
        portrait_jpeg: bytes, landscape_jpeg: bytes) -> None:
    client = await start_app()
    ids = [(await (await client.post("/detect", data=portrait_jpeg, headers=JPEG)).json())["id"]]

    await asyncio.to_thread(own_database.stop)
    for _ in range(3):
        response = await client.post("/detect", data=portrait_jpeg, headers=JPEG)
        assert response.status == 200, await response.text()
        ids.append((await response.json())["id"])
    response = await client.post("/detect", data=form(("a.jpg", landscape_jpeg, "image/jpeg"),
                                                      ("b.jpg", portrait_jpeg, "image/jpeg")))
    assert response.status == 200
    ids += [r["id"] for r in (await response.json())["results"]]

    # The writes found the database away and said so in the one health object, which
    # /readyz and /metrics read (its watcher may not have looked yet).
    assert client.server.app[keys.db_health_key].state == "unavailable"
    assert "yolo_database_up 0.0" in await (await client.get("/metrics")).text()
    ready = await client.get("/readyz")  # still serving detection: degraded, not down
    assert ready.status == 200
    body = await ready.json()
    assert body["status"] == "degraded" and body["checks"]["database"] == "unavailable"
    assert body["spool"]["records"] == 5 and body["spool"]["entries"] == 4
    assert (outage_config.storage.spool_dir / SPOOL_NAME).exists()
    history = await client.get("/api/detections")
    assert history.status == 503 and history.headers["Retry-After"]
    assert (await history.json())["error"]["code"] == "database_unavailable"

    await asyncio.to_thread(own_database.start)
    body = await wait_for_empty_spool(client)
    assert body["spool"]["replayed_total"] == 5 and body["status"] == "ready"
    assert await stored(own_database) == {record_id: 1 for record_id in ids}
    assert not (outage_config.storage.spool_dir / SPOOL_NAME).exists()
    # The spooled originals came back too, and the API serves the replayed records.
    image = await client.get(f"/detections/{ids[-2]}/image")
    assert hashlib.sha256(await image.read()).hexdigest() == hashlib.sha256(landscape_jpeg).hexdigest()
    assert (await client.get(f"/api/detections/{ids[2]}")).status == 200


async def test_spooled_records_survive_a_restart_and_are_stored_once(
        own_database: EmbeddedPostgres, start_app: Callable[[], Any], outage_config: Config,
        portrait_jpeg: bytes, tmp_path: Path) -> None:
    client = await start_app()
    await asyncio.to_thread(own_database.stop)
    ids = []
    for _ in range(3):
        response = await client.post("/detect", data=portrait_jpeg, headers=JPEG)
        assert response.status == 200
        ids.append((await response.json())["id"])
    spool_file = outage_config.storage.spool_dir / SPOOL_NAME
    copy = tmp_path / "spool-copy"
    shutil.copyfile(spool_file, copy)
    await client.close()  # shut down while the database is away: the spool stays
    assert spool_file.read_bytes() == copy.read_bytes()

    await asyncio.to_thread(own_database.start)
    client = await start_app()  # replays at start-up
    await wait_for_empty_spool(client)
    assert await stored(own_database) == {record_id: 1 for record_id in ids}
    await client.close()

    # A crash after the commit but before the spool was removed: replayed again, and
    # still stored once.
    shutil.copyfile(copy, spool_file)
    client = await start_app()
    body = await wait_for_empty_spool(client)
    assert body["spool"]["replayed_total"] == 3
    assert await stored(own_database) == {record_id: 1 for record_id in ids}
    assert not spool_file.exists()


async def test_a_hung_database_costs_a_request_its_write_timeout_not_more(
        own_database: EmbeddedPostgres, start_app: Callable[[], Any], outage_config: Config,
        portrait_jpeg: bytes) -> None:
    """Every PostgreSQL process stopped (SIGSTOP: the server hangs, connections stay
    open): requests are answered within the write deadline (their records spooled),
    admission places come back, and after SIGCONT each record is stored exactly once."""
    client = await start_app()
    first = await client.post("/detect", data=portrait_jpeg, headers=JPEG)
    ids = [(await first.json())["id"]]
    hung = own_database.processes()  # the postmaster and its children
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)
    try:
        # The images written ahead, then the record: two write deadlines, where a hung
        # server without them would hold the requests for ever (a margin for a slow CPU).
        async with asyncio.timeout(2 * outage_config.postgres.write_timeout + 30):
            responses = await asyncio.gather(*(client.post("/detect", data=portrait_jpeg,
                                                           headers=JPEG) for _ in range(3)))
        assert [r.status for r in responses] == [200, 200, 200]
        ids += [(await r.json())["id"] for r in responses]
        ready = await (await client.get("/readyz")).json()
        assert ready["checks"]["database"] == "unavailable"
        assert ready["admission"]["in_progress"] == 0
        assert ready["spool"]["records"] == 3
    finally:
        for pid in hung:
            os.kill(pid, signal.SIGCONT)
    await wait_for_empty_spool(client)
    assert await stored(own_database) == {record_id: 1 for record_id in ids}


async def test_sessions_seen_here_outlive_a_hung_database(
        own_database: EmbeddedPostgres, outage_config: Config, detector_pool: DetectorPool,
        aiohttp_client: Any, tmp_path: Path) -> None:
    """Sessions are in PostgreSQL; while it hangs, an instance honours the sessions it
    opened (each lookup gives up after its deadline), refuses others, and bearer tokens
    need no database at all."""
    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "web")
    config = replace(outage_config, auth=replace(outage_config.auth, tokens_file=tokens))
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    response = await client.post("/login", data={"token": token}, allow_redirects=False)
    assert response.status == 303
    hung = own_database.processes()
    for pid in hung:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert (await client.get("/api/models")).status == 200  # the session, from memory
        assert time.monotonic() - started < LOOKUP_TIMEOUT_S + 3
        unknown = {COOKIE_NAME: "x" * 43}
        assert (await client.get("/api/models", cookies=unknown)).status == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/api/models", headers=bearer, cookies={})).status == 200
    finally:
        for pid in hung:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem (tmpfs) for the spool."""
    try:
        with tmpfs(tmp_path / "spool", 4096) as folder:
            yield folder
    except MountRefused as exc:  # PostgreSQL refuses root, so no unshare -rm here
        pytest.skip(f"needs a small real filesystem: {exc} (CI runs as root)")


async def test_a_full_spool_disk_gives_503_not_ready_and_a_restart_on_it_recovers(
        own_database: EmbeddedPostgres, model_weights: Path, detector_pool: DetectorPool,
        aiohttp_client: Any, landscape_jpeg: bytes, small_disk: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The spool on a real 4 MiB filesystem, the database away: records spool until the
    disk's reserve is reached, then 503 storage_unavailable and /readyz 503. A crash in
    the middle of an append leaves a torn frame that fills the disk to the last byte;
    the service starts on that full disk all the same, and every record answered is
    stored exactly once."""
    socket_dir = own_database.dsn.split("host=")[1].split("&")[0]
    config = load_config(TEST_CONFIG, env={}, overrides={
        "postgres": {"host": socket_dir, "port": own_database.port,
                     "database": "postgres", "write_timeout": 2},
        "models": {"service-6cls": {"weights": str(model_weights)}},
        "storage": {"spool_dir": str(small_disk), "spool_reserve_mb": 1}})

    async def start() -> Any:
        return await aiohttp_client(await init_app(config, detector_pool=detector_pool))

    client = await start()
    await asyncio.to_thread(own_database.stop)
    ids: list[str] = []
    for _ in range(40):
        response = await client.post("/detect", data=landscape_jpeg, headers=JPEG)
        if response.status != 200:
            break
        ids.append((await response.json())["id"])
    assert response.status == 503 and response.headers["Retry-After"]
    assert (await response.json())["error"]["code"] == "storage_unavailable"
    assert len(ids) >= 5  # about (4 - 1 reserved) MiB / 217 kB
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 503 and body["status"] == "not_ready", body
    assert body["checks"]["database"] == "unavailable" and body["checks"]["storage"] == "full"
    assert "cannot be made durable" in body["error"]["message"]

    spool_file = small_disk / SPOOL_NAME
    good_size = spool_file.stat().st_size
    with open(spool_file, "ab", buffering=0) as handle:  # the crash mid-append
        try:
            handle.write(b"YSP1" + b"\xff" * 12)
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    torn = spool_file.stat().st_size - good_size
    assert os.statvfs(small_disk).f_bavail == 0
    await client.close()  # the database is away: the spool stays

    await asyncio.to_thread(own_database.start)
    with caplog.at_level(logging.WARNING, "utils.spool"):
        client = await start()  # on a disk full to the last byte
    assert f"incomplete last frame at offset {good_size}: {torn} byte(s) dropped" \
        in caplog.text
    body = await wait_for_empty_spool(client)
    assert body["status"] == "ready" and body["checks"]["storage"] == "ok"
    assert await stored(own_database) == {record_id: 1 for record_id in ids}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in small_disk.iterdir()} \
        == {".lock": 0o600}
    response = await client.post("/detect", data=landscape_jpeg, headers=JPEG)
    assert response.status == 200
    await client.close()
