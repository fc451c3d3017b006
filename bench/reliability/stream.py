"""Request streams for the reliability phases: closed-loop clients and open-loop arrivals.

Every request is one JPEG posted to ``/detect`` as a raw body; each gives a
:class:`Result` with its status (0 when the connection failed), latency, record id and
``Retry-After`` header.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import aiohttp
from yarl import URL

from bench.common import JpegImage, percentile
from bench.reliability.corpus import HostileRequest

ERROR_BACKOFF_S = 0.05


@dataclass(frozen=True)
class Result:
    started: float  # time.monotonic()
    latency_s: float
    status: int  # 0: no HTTP answer (connection refused, reset, client timeout)
    record_ids: tuple[str, ...] = ()
    retry_after: str | None = None
    error: str | None = None


def record_ids(body: Any) -> tuple[str, ...]:
    if isinstance(body, dict) and "results" in body:
        return tuple(str(item["id"]) for item in body["results"])
    if isinstance(body, dict) and "id" in body:
        return (str(body["id"]),)
    return ()


async def post_image(session: aiohttp.ClientSession, url: str, image: JpegImage,
                     timeout: float) -> Result:
    started = time.monotonic()
    try:
        async with session.post(f"{url}/detect", data=image.data,
                                headers={"Content-Type": "image/jpeg"},
                                timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            body = await response.json(content_type=None)
            return Result(started, time.monotonic() - started, response.status,
                          record_ids(body) if response.status == 200 else (),
                          response.headers.get("Retry-After"),
                          None if response.status == 200 else str(body.get("error", ""))[:200])
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Result(started, time.monotonic() - started, 0, error=type(exc).__name__)


async def send_hostile(session: aiohttp.ClientSession, url: str,
                       request: HostileRequest) -> Result:
    """One corpus request; the body is streamed when large."""
    started = time.monotonic()
    data: Any = BytesIO(request.body) if len(request.body) > 1 << 20 else request.body
    try:
        async with session.request(request.method, URL(url + request.path_qs, encoded=True),
                                   headers=dict(request.headers), data=data) as response:
            raw = await response.read()
            body = None
            if response.content_type == "application/json":
                body = await response.json()
            return Result(started, time.monotonic() - started, response.status,
                          record_ids(body) if response.status == 200 and
                          request.path_qs.startswith("/detect") else (),
                          response.headers.get("Retry-After"),
                          None if response.status < 400 else raw[:200].decode("utf-8", "replace"))
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Result(started, time.monotonic() - started, 0, error=type(exc).__name__)


async def closed_loop(session: aiohttp.ClientSession, url: str, images: Sequence[JpegImage],
                      clients: int, stop: asyncio.Event, timeout: float) -> list[Result]:
    """``clients`` clients, each sending its next request when the last one answered,
    until ``stop`` is set."""
    results: list[Result] = []
    counter = itertools.count()

    async def client() -> None:
        while not stop.is_set():
            result = await post_image(session, url, images[next(counter) % len(images)],
                                      timeout)
            results.append(result)
            if result.status != 200:
                await asyncio.sleep(ERROR_BACKOFF_S)

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


async def open_loop(session: aiohttp.ClientSession, url: str, images: Sequence[JpegImage],
                    rate: float, duration: float, timeout: float) -> list[Result]:
    """Requests arriving at ``rate`` per second for ``duration`` seconds, whatever the
    answers (the offered load does not slow down when the service does)."""
    tasks = []
    start = time.monotonic()
    for i in itertools.count():
        due = start + i / rate
        if due - start >= duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post_image(session, url, images[i % len(images)],
                                                    timeout)))
    return list(await asyncio.gather(*tasks))


def summary(results: Sequence[Result]) -> dict[str, Any]:
    """Counts per status and latency percentiles of the 200s (ms)."""
    ok = [r.latency_s * 1e3 for r in results if r.status == 200]
    return {
        "requests": len(results),
        "statuses": dict(sorted(Counter(str(r.status) for r in results).items())),
        "ok": len(ok),
        "p50_ms": round(percentile(ok, 50), 1) if ok else None,
        "p99_ms": round(percentile(ok, 99), 1) if ok else None,
        "max_ms": round(max(ok), 1) if ok else None,
    }
