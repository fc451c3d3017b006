"""kill -9 of the real service (``python main.py``) between the commit of records and
the delivery of their events: nothing is lost; the next start sends them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import yaml

from settings import BASE_DIR, Config
from tests.events_support import Receiver, free_port, until
from tests.service.test_shutdown import wait_ready, write_service_config

SECRET = "s3cret"
REQUESTS = 6


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "YOLO_CONFIG")}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "main.py", "--config", str(config)],
                                cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_kill_9_between_commit_and_delivery_loses_no_event(
        test_config: Config, tmp_path: Path, portrait_jpeg: bytes) -> None:
    hook = Receiver(free_port(), SECRET)  # not listening yet: every try fails
    path = write_service_config(test_config, tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["events"] = {"all": {"webhook": hook.url, "secret": SECRET, "max_backoff": 1,
                             "max_attempts": 1000}}
    path.write_text(yaml.safe_dump(raw))
    url = f"http://127.0.0.1:{raw['server']['port']}"
    log = tmp_path / "service.log"
    answers: list[dict[str, Any]] = []
    process = start(path, log)
    try:
        await wait_ready(url, process, 120)
        async with aiohttp.ClientSession() as session:
            for n in range(REQUESTS):
                async with session.post(f"{url}/detect", params={"conf": "0.01"},
                                        data=portrait_jpeg,
                                        headers={"Content-Type": "image/jpeg"}) as response:
                    assert response.status == 200, await response.text()
                    answers.append(await response.json())
        expected = [a["id"] for a in answers if a["detections"]]
        assert expected, "no record with a detection: nothing to send"
        conn = await asyncpg.connect(**test_config.postgres.connect_kwargs())
        try:
            waiting = await conn.fetch("SELECT record_id::text AS id FROM event_outbox o "
                                       "ORDER BY o.id")
        finally:
            await conn.close()
        assert [row["id"] for row in waiting] == expected  # committed, not delivered
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    await hook.start()
    process = start(path, log)
    try:
        await until(lambda: len(hook.received) >= len(expected), 180,
                    "the events after the restart", step=0.2)
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        assert hook.ids() == expected and hook.bad_signatures == 0
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        finally:
            if process.poll() is None:
                process.kill()
            await hook.stop()
