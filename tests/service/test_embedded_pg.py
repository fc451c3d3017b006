"""The embedded PostgreSQL: data survives restarts, one owner per data dir, app lifecycle."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.web import keys
from main import init_app
from service.workers.pool import DetectorPool
from settings import BASE_DIR
from utils.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError
from utils.migrate import discover


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="yolo-epg-") as folder:
        yield Path(folder) / "pgdata"


async def query(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_data_survives_a_restart(pg_dir: Path) -> None:
    server = EmbeddedPostgres(pg_dir)
    dsn = await asyncio.to_thread(server.start)
    try:
        assert "host=" in dsn  # Unix socket only: nothing listens on TCP
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as its own system user
            import pwd

            assert pwd.getpwuid(pg_dir.stat().st_uid).pw_name == "embedded_postgres"
            pid = int((pg_dir / "postmaster.pid").read_text().split()[0])
            assert os.stat(f"/proc/{pid}").st_uid == pg_dir.stat().st_uid
        await query(dsn, "CREATE TABLE kept (v text)")
        await query(dsn, "INSERT INTO kept VALUES ('hello')")
        # A second owner of the same data directory is refused while the first runs.
        with pytest.raises(EmbeddedPostgresError, match="in use by another process"):
            EmbeddedPostgres(pg_dir).start()
    finally:
        await asyncio.to_thread(server.stop)
    assert not (pg_dir / "postmaster.pid").exists()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await query(dsn, "SELECT 1")

    again = EmbeddedPostgres(pg_dir)
    dsn = await asyncio.to_thread(again.start)
    try:
        assert await query(dsn, "SELECT v FROM kept") == "hello"
    finally:
        await asyncio.to_thread(again.stop)


async def test_server_left_by_a_killed_owner_is_adopted(pg_dir: Path) -> None:
    """kill -9 of the service leaves PostgreSQL running; the next start takes it over.

    The data dir is deep enough that its socket path would not fit in sun_path, so the
    socket lives in a short temp dir, which the adopting owner must find again.
    """
    pg_dir = pg_dir.parent / ("d" * 60) / ("e" * 60) / "pgdata"
    script = ("import sys, time; from pathlib import Path; "
              "from utils.embedded_pg import EmbeddedPostgres; "
              "EmbeddedPostgres(Path(sys.argv[1])).start(); print('up', flush=True); "
              "time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", script, str(pg_dir)], cwd=BASE_DIR,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert await asyncio.to_thread(child.stdout.readline) == "up\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert (pg_dir / "postmaster.pid").exists()  # the server outlived its owner

    server = EmbeddedPostgres(pg_dir)
    dsn = await asyncio.to_thread(server.start)
    try:
        assert str(pg_dir) not in dsn
        assert await query(dsn, "SELECT 41 + 1") == 42
    finally:
        await asyncio.to_thread(server.stop)
    assert not (pg_dir / "postmaster.pid").exists()


async def test_app_with_embedded_postgres_keeps_history_across_restarts(
        make_config: Any, detector_pool: DetectorPool, portrait_jpeg: bytes, pg_dir: Path,
        aiohttp_client: Any) -> None:
    config = make_config({"postgres": {"embedded": True, "data_dir": str(pg_dir),
                                       "database": "yolo"}})
    assert config.postgres.embedded and config.postgres.data_dir == pg_dir

    first = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    assert isinstance(first.server.app[keys.embedded_pg_key], EmbeddedPostgres)
    record = await (await first.post("/detect", data=portrait_jpeg,
                                     headers={"Content-Type": "image/jpeg"})).json()
    assert (await first.get("/readyz")).status == 200
    await first.close()
    assert not (pg_dir / "postmaster.pid").exists()  # the app stopped its server

    second = await aiohttp_client(await init_app(config, detector_pool=detector_pool))
    response = await second.get(f"/api/detections/{record['id']}")
    assert response.status == 200
    assert await response.json() == {**record, "review": None}  # not reviewed
    applied = await second.server.app[keys.db_key].fetchval("SELECT count(*) FROM schema_migrations")
    assert applied == len(discover())  # applied once, not again on restart
    await second.close()
