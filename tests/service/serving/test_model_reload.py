"""SIGHUP to a running ``main.py`` re-reads the config's ``models:`` and applies the
differences while it serves: a model added, then removed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from settings import BASE_DIR, Config
from tests.paths import DATA_DIR
from tests.service.test_shutdown import wait_ready, write_service_config

JPEG = {"Content-Type": "image/jpeg"}


async def _until(session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes],
                 check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the service exited"
        async with session.get(f"{url}/api/models") as response:
            if check({m["name"]: m for m in (await response.json())["models"]}):
                return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_sighup_adds_and_removes_models_while_serving(
        test_config: Config, tmp_path: Path, tiny_weights: Path, portrait_jpeg: bytes) -> None:
    path = write_service_config(test_config, tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["storage"]["models_dir"] = str(tmp_path / "models")
    path.write_text(yaml.safe_dump(raw))
    url = f"http://127.0.0.1:{raw['server']['port']}"
    one = {"service-6cls": raw["models"]["service-6cls"]}
    two = {**one, "colours": {"cfg": str(DATA_DIR / "tiny.cfg"), "weights": str(tiny_weights),
                              "names": str(DATA_DIR / "tiny.names"), "img_size": 64}}
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "YOLO_CONFIG")}
    with open(tmp_path / "service.log", "wb") as log_file, subprocess.Popen(
            [sys.executable, "main.py", "--config", str(path)], cwd=BASE_DIR, env=env,
            stdout=log_file, stderr=subprocess.STDOUT) as process:
        try:
            await wait_ready(url, process, 120)
            async with aiohttp.ClientSession() as session:
                path.write_text(yaml.safe_dump({**raw, "models": two}))
                process.send_signal(signal.SIGHUP)
                await _until(session, url, process,
                             lambda models: models.get("colours", {}).get("ready"), 120,
                             "colours to be added")
                async with session.post(f"{url}/detect?model=colours", data=portrait_jpeg,
                                        headers=JPEG) as response:
                    assert response.status == 200, await response.text()
                path.write_text(yaml.safe_dump({**raw, "models": one}))
                process.send_signal(signal.SIGHUP)
                await _until(session, url, process, lambda models: "colours" not in models,
                             60, "colours to be removed")
                async with session.post(f"{url}/detect?model=colours", data=portrait_jpeg,
                                        headers=JPEG) as response:
                    assert response.status == 404
                async with session.post(f"{url}/detect", data=portrait_jpeg,
                                        headers=JPEG) as response:
                    assert response.status == 200
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    log = (tmp_path / "service.log").read_text()
    assert "SIGHUP: models added ['colours']" in log and "removed ['colours']" in log, log
