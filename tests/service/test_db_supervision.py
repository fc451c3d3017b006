"""The embedded PostgreSQL is supervised: kill -9 of its postmaster under load, and the
service restarts it, reconnects, replays the spool and serves with the database again;
every record answered is stored exactly once.

The app runs its own embedded server (in this test's temp dir), as ``make run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from main import init_app
from service.web import keys
from service.workers.pool import DetectorPool

JPEG = {"Content-Type": "image/jpeg"}
BACK_WITHIN_S = 30.0


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="yolo-supervised-") as folder:
        yield Path(folder) / "pgdata"


async def _load(client: Any, image: bytes, stop: asyncio.Event,
                answers: list[tuple[int, list[str]]]) -> None:
    while not stop.is_set():
        response = await client.post("/detect", data=image, headers=JPEG)
        body = await response.json()
        answers.append((response.status, [body["id"]] if response.status == 200 else
                        [body["error"]["code"], response.headers.get("Retry-After", "")]))


async def test_a_killed_postmaster_is_restarted_and_nothing_answered_is_lost(
        make_config: Any, detector_pool: DetectorPool, portrait_jpeg: bytes, pg_dir: Path,
        aiohttp_client: Any) -> None:
    config = make_config({"postgres": {"embedded": True, "data_dir": str(pg_dir),
                                       "database": "yolo", "write_timeout": 2}})
    client = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    server = client.server.app[keys.embedded_pg_key]
    stop = asyncio.Event()
    answers: list[tuple[int, list[str]]] = []
    load = [asyncio.create_task(_load(client, portrait_jpeg, stop, answers)) for _ in range(2)]
    try:
        while len(answers) < 4:
            await asyncio.sleep(0.05)
        postmaster = server.postmaster_pid()
        assert postmaster is not None and server.alive()
        os.kill(postmaster, signal.SIGKILL)
        killed = time.monotonic()
        seen: Counter[str] = Counter()
        while True:
            ready = await client.get("/readyz")
            body = await ready.json()
            seen[f"{ready.status} {body['checks']['database']}"] += 1
            if body["checks"]["database"] == "ok" and body["spool"]["entries"] == 0 \
                    and body["database"]["restarts"] == 1:
                break
            assert time.monotonic() - killed < BACK_WITHIN_S, seen
            await asyncio.sleep(0.1)
        back = time.monotonic() - killed
        during = len(answers)
        while len(answers) < during + 4:  # serving with the database again
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.gather(*load)
    assert back < BACK_WITHIN_S
    assert server.postmaster_pid() != postmaster and server.alive()
    # Each step showed, and /readyz stayed 200 while the spool took the records.
    states = {key.split(" ", 1)[1] for key in seen}
    assert states & {"restarting", "recovering"}, seen
    assert all(key.startswith("200 ") for key in seen), seen
    assert {status for status, _ in answers} == {200}, Counter(s for s, _ in answers)
    assert client.server.app[keys.records_key].spooled_total > 0  # the outage was real

    answered = [ids[0] for status, ids in answers if status == 200]
    conn = await asyncpg.connect(server.dsn_for("yolo"))
    try:
        rows = await conn.fetch("SELECT id::text AS id, count(*) AS n FROM detections "
                                "GROUP BY id")
    finally:
        await conn.close()
    assert {row["id"]: row["n"] for row in rows} == {record_id: 1 for record_id in answered}
    await client.close()
    assert not (pg_dir / "postmaster.pid").exists()  # the restarted server was stopped
