"""The memory rows of issue 25's table, against a real ``main.py`` (access control on): a
burst of large bodies must not grow the service's main process by more than a bounded
peak, must leave nothing held after it, and must not stall its event loop (``/healthz``
answers throughout; the database watcher never reports a false outage).

Each row starts its own service, so that the kernel's high-water mark (``VmHWM``) is the
row's peak. The figures are printed (``pytest -s``); ``bench.reliability --phases memory``
repeats the rows at full scale.
"""

from __future__ import annotations

import asyncio
import threading
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.reliability.memory import burst, row_request, slowest_healthz
from service.web.tokens import create_token
from settings import BASE_DIR, Config
from tests.service.test_shutdown import wait_ready, write_service_config

ROWS = {  # row: (concurrent requests, peak growth limit MiB, kept growth limit MiB)
    "login": (96, 48, 16),
    "deepstack-list": (96, 48, 16),
    "detect": (64, 640, 64),
}
KEPT_WITHIN_S = 10.0
HEALTHZ_LIMIT_S = 2.5  # slowest /healthz during a burst (the probe saw 3 s; a busy 2-core box)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


async def measure(url: str, pid: int, row: str, count: int, token: str,
                  jpeg: bytes) -> dict[str, Any]:
    """Run the row's burst; the main process's RSS before, at peak and kept after."""
    idle = rss_mib(pid)
    stop = threading.Event()
    probe = asyncio.create_task(asyncio.to_thread(slowest_healthz, url, stop))
    try:
        statuses = await burst(url, *row_request(row, token, jpeg), count, timeout=300)
    finally:
        stop.set()
        slowest = await probe
    peak = rss_mib(pid, "VmHWM")
    deadline = time.monotonic() + KEPT_WITHIN_S
    kept = rss_mib(pid)
    while time.monotonic() < deadline and kept - idle > ROWS[row][2]:
        await asyncio.sleep(0.5)
        kept = rss_mib(pid)
    return {"row": row, "requests": count, "statuses": sorted(set(statuses)),
            "idle_mib": round(idle), "peak_growth_mib": round(peak - idle),
            "kept_growth_mib": round(kept - idle), "slowest_healthz_s": round(slowest, 2)}


@pytest.mark.parametrize("row", list(ROWS))
async def test_a_burst_of_large_bodies_is_bounded_and_given_back(
        row: str, test_config: Config, db_pool: Any, portrait_jpeg: bytes,
        tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "ci")
    config_path = write_service_config(test_config, tmp_path, max_upload_mb=20)
    raw = yaml.safe_load(config_path.read_text())
    raw["auth"] = {"tokens_file": str(tokens)}
    config_path.write_text(yaml.safe_dump(raw))
    url = f"http://127.0.0.1:{raw['server']['port']}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "YOLO_CONFIG")}
    count, peak_limit, kept_limit = ROWS[row]
    with open(tmp_path / "service.log", "wb") as log_file, subprocess.Popen(
            [sys.executable, "main.py", "--config", str(config_path)], cwd=BASE_DIR,
            env=env, stdout=log_file, stderr=subprocess.STDOUT) as process:
        try:
            await wait_ready(url, process, 120)
            figures = await measure(url, process.pid, row, count, token, portrait_jpeg)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    log_text = (tmp_path / "service.log").read_text(errors="replace")
    print(f"\n{figures}")
    expected = {401, 413, 0} if row != "detect" else {200, 503}
    assert set(figures["statuses"]) <= expected, (figures, log_text[-3000:])
    assert figures["peak_growth_mib"] < peak_limit, figures
    assert figures["kept_growth_mib"] < kept_limit, figures
    assert figures["slowest_healthz_s"] < HEALTHZ_LIMIT_S, figures
    assert "database unavailable" not in log_text and "Traceback" not in log_text, \
        log_text[-3000:]
