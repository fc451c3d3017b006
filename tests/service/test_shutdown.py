"""SIGTERM under load: no new work, in-flight requests finished and stored, clean exit.

The real service (``python main.py``) in a subprocess on 127.0.0.1, a real stream of
requests from several clients, a real SIGTERM in the middle of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from settings import BASE_DIR, Config
from tests.helpers import alive

CLIENTS = 4


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: the connection was refused or closed before an answer
    record_id: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stream(url: str, image: bytes, stop: asyncio.Event, out: list[Outcome]) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.post(f"{url}/detect", data=image,
                                        headers={"Content-Type": "image/jpeg"}) as response:
                    body: dict[str, Any] = await response.json(content_type=None)
                    out.append(Outcome(started, time.monotonic(), response.status,
                                       body.get("id")))
            except aiohttp.ClientError:
                out.append(Outcome(started, time.monotonic(), None))
                await asyncio.sleep(0.05)


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.poll() is None, "the service exited during start-up"
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        body: dict[str, Any] = await response.json()
                        return body
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError("the service did not become ready")


def write_service_config(test_config: Config, tmp_path: Path, **server: Any) -> Path:
    """A config file for a ``main.py`` subprocess on a free port: the test database, the
    test model, stored images and a spool under ``tmp_path``; ``server`` keys on top."""
    postgres = test_config.postgres
    raw = yaml.safe_load((BASE_DIR / "config" / "test.yaml").read_text())
    raw["server"].update({"port": free_port(), **server})
    raw["postgres"].update({"host": postgres.host, "port": postgres.port,
                            "database": postgres.database})
    raw["models"]["service-6cls"]["weights"] = str(test_config.default_model.weights)
    raw["storage"] = {"store_images": True, "spool_dir": str(tmp_path / "spool")}
    path = tmp_path / "service.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def service_config(test_config: Config, tmp_path: Path) -> Path:
    return write_service_config(test_config, tmp_path, shutdown_timeout=20)


async def test_sigterm_under_load_finishes_in_flight_work_and_loses_nothing(
        service_config: Path, test_config: Config, portrait_jpeg: bytes, tmp_path: Path) -> None:
    port = yaml.safe_load(service_config.read_text())["server"]["port"]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "YOLO_CONFIG")}
    with open(tmp_path / "service.log", "wb") as log_file, subprocess.Popen(
            [sys.executable, "main.py", "--config", str(service_config)], cwd=BASE_DIR,
            env=env, stdout=log_file, stderr=subprocess.STDOUT) as process:
        try:
            ready = await wait_ready(url, process, 120)
            pids = [worker["pid"] for worker in ready["workers"]]
            outcomes: list[Outcome] = []
            stop = asyncio.Event()
            clients = [asyncio.create_task(stream(url, portrait_jpeg, stop, outcomes))
                       for _ in range(CLIENTS)]
            await asyncio.sleep(1.5)
            process.send_signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*clients)
            code = await asyncio.to_thread(process.wait, 30)
        finally:
            if process.poll() is None:
                process.kill()
    log_text = (tmp_path / "service.log").read_text(errors="replace")
    assert code == 0, log_text[-3000:]

    answered = [o for o in outcomes if o.status is not None]
    assert all(o.status == 200 for o in answered), [o.status for o in answered]
    in_flight = [o for o in answered if o.started < sigterm_at < o.ended]
    assert in_flight, "no request was in flight at SIGTERM"
    late = [o for o in outcomes if o.started > sigterm_at + 0.5]
    assert late and all(o.status is None for o in late)  # no new work once stopping

    conn = await asyncpg.connect(**test_config.postgres.connect_kwargs())
    try:
        rows = await conn.fetch("SELECT id::text AS id FROM detections")
    finally:
        await conn.close()
    assert sorted(row["id"] for row in rows) == sorted(o.record_id for o in answered)
    assert not any(alive(pid) for pid in pids)
    assert not (tmp_path / "spool" / "records.spool").exists()
