"""The ``slow`` phase: uploads trickling 1 byte/s while normal load runs.

Each trickler is a raw asyncio socket (no client library to smooth what it sends): it
posts a JPEG's head claiming a 100,000-byte body, then sends one byte a second; when it is
answered (the service cuts it off with 408) it connects again, for the whole phase. The
normal load is the closed loop of the other phases. Targets: every normal request
answered 200, their p95 under 5 s, and every trickled upload cut off with a 408.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.common import JpegImage, percentile
from bench.reliability.live import LiveInstance
from bench.reliability.phases import PhaseReport
from bench.reliability.stream import closed_loop, summary

CLAIMED_BYTES = 100_000
P95_TARGET_S = 5.0


@dataclass
class Trickler:
    """One slow client: the status of every answer it got and how long each took."""

    host: str
    port: int
    statuses: list[int] = field(default_factory=list)
    answered_after_s: list[float] = field(default_factory=list)
    unanswered: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            started = time.monotonic()
            try:
                writer.write(b"POST /detect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: image/jpeg\r\n"
                             b"Content-Length: %d\r\n\r\n" % CLAIMED_BYTES)
                answer = asyncio.ensure_future(reader.readline())
                while not answer.done() and not stop.is_set():
                    writer.write(b"\xff")
                    await writer.drain()
                    await asyncio.wait([answer], timeout=1.0)
                if answer.done() and answer.result():
                    self.statuses.append(int(answer.result().split()[1]))
                    self.answered_after_s.append(time.monotonic() - started)
                else:
                    answer.cancel()
                    self.unanswered += 1
            except (ConnectionError, IndexError, ValueError):
                self.statuses.append(0)
            finally:
                writer.close()


async def slow_clients(live: LiveInstance, images: Sequence[JpegImage], *, clients: int,
                       tricklers: int, duration: float, timeout: float) -> PhaseReport:
    """``tricklers`` uploads at 1 byte/s for ``duration`` seconds, with ``clients``
    closed-loop clients sending normal requests meanwhile."""
    assert live.session is not None
    address = urlsplit(live.url)
    assert address.hostname is not None and address.port is not None
    slow = [Trickler(address.hostname, address.port) for _ in range(tricklers)]
    stop = asyncio.Event()
    trickling = [asyncio.create_task(t.run(stop)) for t in slow]
    await asyncio.sleep(1.0)  # every trickler connected and sending
    normal = asyncio.create_task(closed_loop(live.session, live.url, images, clients, stop,
                                             timeout))
    await asyncio.sleep(duration)
    stop.set()
    results = await normal
    await asyncio.gather(*trickling)
    ok = [r.latency_s for r in results if r.status == 200]
    statuses = Counter(s for t in slow for s in t.statuses)
    cut_off = [s for t in slow for s in t.answered_after_s]
    p95 = percentile(ok, 95) if ok else float("inf")
    report = PhaseReport("slow clients")
    report.figures = {
        "tricklers": tricklers, "clients": clients, "duration_s": duration,
        **summary(results), "p95_ms": round(p95 * 1e3, 1) if ok else None,
        "ok_rate": round(len(ok) / len(results), 4) if results else None,
        "trickler_answers": dict(sorted((str(k), v) for k, v in statuses.items())),
        "trickler_cut_off_after_s_median": round(percentile(cut_off, 50), 2) if cut_off
        else None,
        "trickler_unanswered_at_end": sum(t.unanswered for t in slow),
    }
    report.checks = {
        "every normal request answered 200": bool(results) and len(ok) == len(results),
        f"normal p95 under {P95_TARGET_S:g} s": p95 < P95_TARGET_S,
        "every trickled upload cut off with 408": bool(statuses) and set(statuses) == {408},
    }
    return report
