"""The live instance under test: its PostgreSQL, the service, its memory.

:class:`LiveInstance` starts an embedded PostgreSQL in the work directory — owned here,
not by the service, so a phase can stop and start it under the service's feet — and the
service (``main.py`` in a subprocess, ``bench._service``) pointed at it as an external
server. With ``service_owns_database`` the service runs its own embedded server instead
(supervised by it, as in production: what a phase kills, the service restarts), and
with ``spool_tmpfs_mib`` its spool lives on a tmpfs of that size (mounted here, root
only). It reads ``/readyz``, the service's resident memory (the main process plus its
workers, from ``/proc``) and the record ids stored in the database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench._service import ServiceProcess, free_port, write_config
from utils.embedded_pg import EmbeddedPostgres

log = logging.getLogger(__name__)

PG_PORT = 5499  # names the Unix socket only; the server listens on no TCP port


def _children(pid: int) -> list[int]:
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its direct children (the model workers)."""
    return _rss_bytes(pid) + sum(_rss_bytes(child) for child in _children(pid))


class LiveInstanceError(RuntimeError):
    """The instance cannot be set up as asked (e.g. no tmpfs without root)."""


def mount_tmpfs(path: Path, size_mib: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise LiveInstanceError("a spool on a small tmpfs needs root (mount -t tmpfs)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs",
                           str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LiveInstanceError(f"mount -t tmpfs failed: {done.stderr.strip()}")


class LiveInstance:
    """PostgreSQL + service in ``workdir``; use ``async with``."""

    def __init__(self, base_config: Path, workdir: Path, overrides: dict[str, Any], *,
                 service_owns_database: bool = False,
                 spool_tmpfs_mib: int | None = None) -> None:
        self.workdir = workdir
        self.service_owns_database = service_owns_database
        self.postgres = EmbeddedPostgres(workdir / "pgdata",
                                         port=5432 if service_owns_database else PG_PORT)
        self.base_config = base_config
        self.overrides = overrides
        self.spool_dir = workdir / "spool"
        self.spool_tmpfs_mib = spool_tmpfs_mib
        self._mounted = False
        self.config_path = workdir / "service.yaml"
        self.service: ServiceProcess | None = None
        self.session: aiohttp.ClientSession | None = None
        self.settings: dict[str, Any] = {}

    @property
    def url(self) -> str:
        assert self.service is not None
        return self.service.url

    async def __aenter__(self) -> LiveInstance:
        if self.spool_tmpfs_mib is not None:
            mount_tmpfs(self.spool_dir, self.spool_tmpfs_mib)
            self._mounted = True
        overrides: dict[str, Any] = {"server.host": "127.0.0.1"}
        if not self.service_owns_database:
            await asyncio.to_thread(self.postgres.start)
            socket_dir = self.postgres.dsn.split("host=")[1].split("&")[0]
            overrides.update({"postgres.embedded": False, "postgres.host": socket_dir,
                              "postgres.port": PG_PORT, "postgres.database": "postgres"})
        self.settings = write_config(self.base_config, self.config_path, self.workdir,
                                     {**overrides, **self.overrides})
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120),
            connector=aiohttp.TCPConnector(limit=2000))
        self.start_service()
        return self

    def start_service(self) -> None:
        """Start the service (again: after :meth:`crash_service`), on a fresh port."""
        self.service = ServiceProcess(self.config_path, free_port(), self.workdir / "service.log")
        self.service.start()

    async def crash_service(self) -> None:
        """kill -9 the service (its embedded PostgreSQL, if any, keeps running)."""
        assert self.service is not None
        await asyncio.to_thread(self.service.kill)

    async def __aexit__(self, *exc_info: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.service is not None:
            await asyncio.to_thread(self.service.stop)
        if not self.service_owns_database and self.postgres.data_dir.exists():
            await asyncio.to_thread(self.postgres.stop)
        elif (pid := self.postgres.postmaster_pid()) is not None and self.postgres.alive():
            os.kill(pid, signal.SIGINT)  # left by a crashed service: a fast shutdown
            for _ in range(300):
                if not self.postgres.alive():
                    break
                await asyncio.sleep(0.1)
        if self._mounted:
            await asyncio.to_thread(subprocess.run, ["umount", "-l", str(self.spool_dir)],
                                    capture_output=True, check=False)

    @property
    def dsn(self) -> str:
        """The DSN of the service's database (for the checks: ids stored)."""
        if not self.service_owns_database:
            return self.postgres.dsn
        lines = (self.postgres.data_dir / "postmaster.pid").read_text().splitlines()
        database = (self.settings.get("postgres") or {}).get("database", "yolo")
        return f"postgresql://postgres@/{database}?host={lines[4].strip()}&port=5432"

    async def wait_ready(self, timeout: float) -> dict[str, Any]:
        assert self.service is not None and self.session is not None
        return await self.service.wait_ready(self.session, timeout)

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        assert self.session is not None
        async with self.session.get(f"{self.url}/readyz") as response:
            body: dict[str, Any] = await response.json()
            return response.status, body

    def rss(self) -> int:
        assert self.service is not None and self.service.pid is not None
        return process_tree_rss(self.service.pid)

    async def stop_postgres(self) -> None:
        assert not self.service_owns_database
        await asyncio.to_thread(self.postgres.stop)

    async def start_postgres(self) -> None:
        assert not self.service_owns_database
        await asyncio.to_thread(self.postgres.start)

    def postgres_processes(self) -> list[int]:
        """The PostgreSQL server's processes (postmaster first), whoever owns it."""
        return self.postgres.processes()

    async def stored_ids(self) -> dict[str, int]:
        """Every record id in the database, with its number of rows."""
        conn = await asyncpg.connect(self.dsn)
        try:
            rows = await conn.fetch(
                "SELECT id::text AS id, count(*) AS n FROM detections GROUP BY id")
        finally:
            await conn.close()
        return {row["id"]: int(row["n"]) for row in rows}

    async def images_without_records(self) -> int:
        """Stored images that no record refers to."""
        conn = await asyncpg.connect(self.dsn)
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM images i "
                "WHERE NOT EXISTS (SELECT 1 FROM detections d WHERE d.sha256 = i.sha256)"))
        finally:
            await conn.close()
