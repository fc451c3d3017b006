"""The ``memory`` phase: issue 25's memory rows against a live instance with access control
on and ``server.max_upload_mb`` 20, each row's peak and kept RSS of the main process.

- ``login``: 96 anonymous POST /login, each a 19 MiB urlencoded body;
- ``deepstack-list``: the same to DeepStack's POST custom/list;
- ``detect``: 64 concurrent signed-in 19 MiB uploads to POST /detect (a JPEG padded after
  its end marker).

Peak: the highest RSS sampled every 10 ms during the burst, less the RSS before it; kept:
the RSS 10 s after the burst, less the same. Also the slowest /healthz during the burst
(the event loop never stalls) and the service log's false "database unavailable" lines.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.reliability.live import LiveInstance, _rss_bytes
from bench.reliability.phases import PhaseReport
from service.web.apis.deepstack import PREFIX as DEEPSTACK

MIB = 1 << 20
BODY_BYTES = 19 * MIB
ROWS = (("login", 96), ("deepstack-list", 96), ("detect", 64))
KEPT_AFTER_S = 10.0
PEAK_LIMIT_MIB = {"login": 64, "deepstack-list": 64, "detect": 768}
# Kept 10 s after: the forms hold nothing; after the /detect burst the real model's
# instance keeps 90-150 MiB more in anonymous mappings, not yet explained (the tests'
# small model: about 20 MiB); the code before kept 380 MiB.
KEPT_LIMIT_MIB = {"login": 32, "deepstack-list": 32, "detect": 192}
HEALTHZ_LIMIT_S = 2.5


def row_request(row: str, token: str, jpeg: bytes) -> tuple[str, dict[str, str], bytes]:
    if row == "detect":
        return "/detect", {"Content-Type": "image/jpeg", "Authorization": f"Bearer {token}"}, \
            jpeg + b"\0" * (BODY_BYTES - len(jpeg))
    path = "/login" if row == "login" else f"{DEEPSTACK}/custom/list"
    return path, {"Content-Type": "application/x-www-form-urlencoded"}, \
        b"token=" + b"a" * BODY_BYTES


async def burst(url: str, path: str, headers: dict[str, str], body: bytes, count: int,
                timeout: float = 600.0) -> list[int]:
    """``count`` concurrent POSTs of ``body``; their statuses (0: closed before the body
    was all sent)."""
    connector = aiohttp.TCPConnector(limit=count, force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async def one() -> int:
            try:
                async with session.post(url + path, data=io.BytesIO(body),
                                        headers=headers) as response:
                    await response.read()
                    return response.status
            except aiohttp.ClientError:  # refused and closed before the body was all sent
                return 0

        return list(await asyncio.gather(*(one() for _ in range(count))))


def slowest_healthz(url: str, stop: threading.Event) -> float:
    """The slowest /healthz, polled every 50 ms until ``stop``: from a thread of its own
    with a blocking client, so that the busy event loop measured is the service's, not
    the one sending the burst."""
    parts = urlsplit(url)
    slowest = 0.0
    while not stop.is_set():
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        started = time.monotonic()
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
        finally:
            conn.close()
        slowest = max(slowest, time.monotonic() - started)
        stop.wait(0.05)
    return slowest


async def _sample(pid: int, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, _rss_bytes(pid))
        await asyncio.sleep(0.01)
    return peak


async def large_bodies(live: LiveInstance, token: str, jpeg: bytes) -> PhaseReport:
    assert live.service is not None and live.service.pid is not None
    pid = live.service.pid
    report = PhaseReport("memory")
    log_start = live.service.log_path.stat().st_size if live.service.log_path.exists() else 0
    for row, count in ROWS:
        path, headers, body = row_request(row, token, jpeg)
        idle = _rss_bytes(pid)
        stop, done = threading.Event(), asyncio.Event()
        sampler = asyncio.create_task(_sample(pid, done))
        probe = asyncio.create_task(asyncio.to_thread(slowest_healthz, live.url, stop))
        started = time.monotonic()
        try:
            statuses = await burst(live.url, path, headers, body, count)
        finally:
            stop.set()
            done.set()
        elapsed = time.monotonic() - started
        peak, slowest = await sampler, await probe
        await asyncio.sleep(KEPT_AFTER_S)  # the figure is what is held 10 s later
        kept = _rss_bytes(pid)
        counts: dict[str, int] = {}
        for status in statuses:
            counts[str(status)] = counts.get(str(status), 0) + 1
        figures: dict[str, Any] = {
            "requests": count, "statuses": counts, "burst_s": round(elapsed, 1),
            "idle_rss_mib": round(idle / MIB), "peak_growth_mib": round((peak - idle) / MIB),
            "kept_growth_mib": round((kept - idle) / MIB),
            "slowest_healthz_s": round(slowest, 2)}
        report.figures[row] = figures
        report.checks[f"{row}: peak growth under {PEAK_LIMIT_MIB[row]} MiB"] = \
            figures["peak_growth_mib"] < PEAK_LIMIT_MIB[row]
        report.checks[f"{row}: kept growth under {KEPT_LIMIT_MIB[row]} MiB"] = \
            figures["kept_growth_mib"] < KEPT_LIMIT_MIB[row]
        report.checks[f"{row}: /healthz within {HEALTHZ_LIMIT_S} s"] = \
            slowest < HEALTHZ_LIMIT_S
    log_text = live.service.log_path.read_bytes()[log_start:].decode(errors="replace")
    report.checks["no false 'database unavailable'"] = "database unavailable" not in log_text
    return report
