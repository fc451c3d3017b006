"""Seed N detection records and time filtered history pages (EXPLAIN ANALYZE + wall clock).

    python -m bench.history_query                  # 100,000 records, throw-away embedded PG
    python -m bench.history_query --records 20000
    python -m bench.history_query --data-dir var/bench-pg   # keep the seeded cluster
    DATABASE_URL=postgresql://... python -m bench.history_query   # an existing server
                                                   # (creates and drops database yolo_bench)

Records are written through ``db.save_records`` (the service's own write path) and read
through ``db.history_query`` / ``db.list_detections``. Labels follow a skewed distribution
(common ``go``/``stop``, rare ``warningLeft``) over 90 days, so both frequent and rare
label filters are measured.

Then the whole ``GET /history`` page (records, per-label and per-day counts of what the
filters select, the chart, the template), served by the real handler over HTTP: its
server time is read from the page's ``Server-Timing`` header (p50/p95 per filter set).
Then what a history thumbnail costs: made from a real photo, and read back. Last, what
the ``history_counts`` trigger adds to the write path: ``db.save_records`` of one record
at a time, at concurrency 1 and 4, with the trigger on and off in alternating rounds (the
records are deleted again afterwards, the counts left as they were).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import db
from service import history_stats
from model.detection import Detection
from utils.embedded_pg import EmbeddedPostgres
from utils.migrate import migrate

log = logging.getLogger("bench.history_query")

LABELS = {"go": 0.35, "stop": 0.30, "stopLeft": 0.12, "goLeft": 0.12, "warning": 0.10,
          "warningLeft": 0.01}
DAYS = 90
BATCH = 2000
BENCH_DB = "yolo_bench"


def make_records(n: int, end: datetime, rng: random.Random) -> list[db.Record]:
    names, weights = list(LABELS), list(LABELS.values())
    span = DAYS * 86400
    records = []
    for i in range(n):
        created = end - timedelta(seconds=span * (n - i) / n + rng.random())
        detections = []
        for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4))):
            label = rng.choices(names, weights)[0]
            x, y = rng.uniform(0, 600), rng.uniform(0, 400)
            detections.append(Detection(label, names.index(label),
                                        round(rng.uniform(0.3, 0.99), 4), x, y, x + 20, y + 50))
        records.append(db.Record(
            id=uuid.uuid4(), created_at=created, filename=f"cam{i % 7}/frame_{i:06d}.jpg",
            sha256=f"{i:064x}", width=640, height=480, model="bench", inference_ms=40.0,
            detections=detections))
    return records


async def seed(pool: asyncpg.Pool, n: int, end: datetime) -> float:
    rng = random.Random(42)
    started = time.perf_counter()
    for offset in range(0, n, BATCH):
        await db.save_records(pool, make_records(min(BATCH, n - offset), end, rng))
    # Steady state: what the service's compaction task (service/counts.py) and autovacuum
    # do soon after a bulk load (counts folded, statistics, visibility map).
    await history_stats.compact_history_counts(pool)
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, float]:
    await fn()  # warm the cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


async def explain(pool: asyncpg.Pool, filters: db.HistoryFilter, limit: int,
                  cursor: db.Cursor | None) -> tuple[float, str]:
    sql, args = db.history_query(filters, limit=limit, cursor=cursor)
    rows = await pool.fetch(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) {sql}", *args)
    lines = [row[0] for row in rows]
    execution = next(float(line.split()[2]) for line in lines
                     if line.startswith("Execution Time"))
    top_scan = next((line.strip() for line in lines if "Index" in line or "Seq Scan" in line),
                    lines[0].strip())
    return execution, top_scan


async def cursor_after(pool: asyncpg.Pool, filters: db.HistoryFilter, limit: int,
                       pages: int) -> db.Cursor | None:
    cursor = None
    for _ in range(pages):
        page = await db.list_detections(pool, filters, limit=limit, cursor=cursor)
        cursor = page.next_cursor
    return cursor


async def run(dsn: str, n: int, limit: int, repeat: int) -> None:
    pool = await db.create_pool({"dsn": dsn}, minsize=1, maxsize=4)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        end = datetime.now(timezone.utc)
        existing = await pool.fetchval("SELECT count(*) FROM detections")
        if existing < n:
            seconds = await seed(pool, n - existing, end)
            print(f"seeded {n - existing:,} records in {seconds:.1f} s "
                  f"({(n - existing) / seconds:,.0f} records/s)")
        await history_stats.compact_history_counts(pool)
        total = await pool.fetchval("SELECT count(*) FROM detections")
        boxes = await pool.fetchval("SELECT count(*) FROM detection_labels")
        print(f"{total:,} records, {boxes:,} (record, label) index rows\n")

        week = end - timedelta(days=7)
        cases = [
            ("newest page, no filter", db.HistoryFilter(), 0),
            ("label=stop (30% of boxes)", db.HistoryFilter(label="stop"), 0),
            ("label=warningLeft (1%)", db.HistoryFilter(label="warningLeft"), 0),
            ("label=go, last 7 days, min_conf 0.8",
             db.HistoryFilter(label="go", since=week, until=end, min_confidence=0.8), 0),
            ("label=stop, page 21 (cursor)", db.HistoryFilter(label="stop"), 20),
            ("min_confidence=0.95, no label", db.HistoryFilter(min_confidence=0.95), 0),
            ("label=goLeft, a 1-day window 60 days ago",
             db.HistoryFilter(label="goLeft", since=end - timedelta(days=60),
                              until=end - timedelta(days=59)), 0),
            ("filename contains 'cam3/frame_0999'", db.HistoryFilter(filename="cam3/frame_0999"), 0),
        ]
        header = f"{'query (limit ' + str(limit) + ')':48} {'EXPLAIN ms':>10} {'median ms':>10} {'p95 ms':>8}  plan"
        print(header)
        print("-" * len(header))
        for name, filters, pages in cases:
            cursor = await cursor_after(pool, filters, limit, pages)
            execution, plan = await explain(pool, filters, limit, cursor)
            median, p95 = await timed(
                lambda f=filters, c=cursor: db.list_detections(pool, f, limit=limit, cursor=c),
                repeat)
            print(f"{name:48} {execution:10.2f} {median:10.2f} {p95:8.2f}  {plan[:60]}")
        median, p95 = await timed(lambda: history_stats.stats(pool), max(3, repeat // 4))
        print(f"{'stats (all labels, all days)':48} {'':>10} {median:10.2f} {p95:8.2f}")
        await history_pages(pool, end, repeat)
        await thumbnails(pool)
        await write_cost(pool, end)
    finally:
        await db.close_pool(pool, 10)


def _server_ms(header: str, name: str) -> float:
    for part in header.split(","):
        key, _, dur = part.strip().partition(";dur=")
        if key == name:
            return float(dur)
    raise ValueError(f"no {name} in Server-Timing {header!r}")


async def history_pages(pool: asyncpg.Pool, end: datetime, repeat: int) -> None:
    """GET /history through the real handler and templates; server time per filter set."""
    import aiohttp_jinja2
    import jinja2
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from main import TEMPLATES_DIR
    from service.web import keys
    from service.web.handlers import pages
    from settings import BASE_DIR, load_config

    app = web.Application()
    app[keys.config_key] = load_config(BASE_DIR / "config" / "config.yaml", env={})
    app[keys.db_key] = pool
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                         autoescape=jinja2.select_autoescape(["html", "xml"]))
    app.router.add_get("/history", pages.history)
    day = timedelta(days=1)
    week = (end - 7 * day).date().isoformat()
    cases = [
        ("no filter", {}),
        ("label=stop", {"label": "stop"}),
        ("label=warningLeft (rare)", {"label": "warningLeft"}),
        ("since (7 days)", {"since": week}),
        ("label=go, since..until (30 days)",
         {"label": "go", "since": (end - 30 * day).date().isoformat(),
          "until": (end - day).date().isoformat()}),
        ("model=bench, label=goLeft", {"model": "bench", "label": "goLeft"}),
        ("label=go, min_confidence=0.8, 7 days",
         {"label": "go", "min_confidence": "0.8", "since": week}),
        ("min_confidence=0.95 (all days)", {"min_confidence": "0.95"}),
        ("filename contains cam3 (all days)", {"filename": "cam3"}),
    ]
    print(f"\n{'GET /history (24 records + counts + chart)':48} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'db p50':>8} {'html KB':>8}")
    async with TestClient(TestServer(app)) as client:
        for name, query in cases:
            totals, dbs = [], []
            size = 0
            for i in range(repeat + 1):
                response = await client.get("/history", params=query)
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{name}: {response.status} {body[:200]!r}")
                if i == 0:
                    continue  # warm-up
                timing = response.headers["Server-Timing"]
                totals.append(_server_ms(timing, "total"))
                dbs.append(_server_ms(timing, "db"))
                size = len(body)
            totals.sort()
            print(f"{name:48} {statistics.median(totals):8.2f} "
                  f"{totals[int(0.95 * (len(totals) - 1))]:8.2f} "
                  f"{statistics.median(dbs):8.2f} {size / 1024:8.1f}")


_TRIGGERS = ("detections_history_counts_insert", "detections_history_counts_delete")


async def _triggers(pool: asyncpg.Pool, on: bool) -> None:
    verb = "ENABLE" if on else "DISABLE"
    async with pool.acquire() as conn:
        for name in _TRIGGERS:
            await conn.execute(f"ALTER TABLE detections {verb} TRIGGER {name}")


async def write_cost(pool: asyncpg.Pool, end: datetime, rounds: int = 4,
                     per_round: int = 100) -> None:
    """save_records of single records, trigger on vs off, at concurrency 1 and 4."""
    rng = random.Random(7)
    written: dict[bool, list[uuid.UUID]] = {True: [], False: []}
    times: dict[tuple[bool, int], list[float]] = {}

    async def one(record: db.Record, out: list[float]) -> None:
        started = time.perf_counter()
        await db.save_records(pool, [record])
        out.append((time.perf_counter() - started) * 1000)

    try:
        for _ in range(rounds):
            for on in (True, False):
                await _triggers(pool, on)
                for concurrency in (1, 4):
                    out = times.setdefault((on, concurrency), [])
                    records = make_records(per_round, end, rng)
                    records = [replace(r, model="bench-writes", id=uuid.uuid4())
                               for r in records]
                    written[on].extend(r.id for r in records)
                    for start in range(0, len(records), concurrency):
                        await asyncio.gather(*(one(r, out)
                                               for r in records[start:start + concurrency]))
    finally:
        for on in (True, False):  # each deleted as it was counted: the counts stay right
            await _triggers(pool, on)
            await pool.execute("DELETE FROM detections WHERE id = ANY($1::uuid[])", written[on])
        await _triggers(pool, True)
        await history_stats.compact_history_counts(pool)
    print(f"\nsave_records, one record per call ({rounds} alternating rounds of {per_round})")
    for concurrency in (1, 4):
        on, off = sorted(times[(True, concurrency)]), sorted(times[(False, concurrency)])
        print(f"  c={concurrency}: trigger on p50 {statistics.median(on):5.2f} ms "
              f"p95 {on[int(0.95 * (len(on) - 1))]:5.2f} | off p50 {statistics.median(off):5.2f} "
              f"ms p95 {off[int(0.95 * (len(off) - 1))]:5.2f} | "
              f"added p50 {statistics.median(on) - statistics.median(off):+.2f} ms")


async def thumbnails(pool: asyncpg.Pool) -> None:
    """Renditions of real photos: the time to make one (thumbnail, record page), its size,
    the time to read a stored one back. The photo as it is (1280x720, 212 KB) and
    stretched to a 12-megapixel phone picture (4032x3024), where the JPEG decode at
    reduced scale (Pillow's draft) does most of the work."""
    import io

    import cv2
    import numpy as np

    from service import renditions
    from settings import BASE_DIR

    photo = (BASE_DIR / "tests" / "data" / "photos" / "landscape.jpg").read_bytes()
    pixels = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR)
    phone = cv2.imencode(".jpg", cv2.resize(pixels, (4032, 3024), interpolation=cv2.INTER_CUBIC),
                         [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    data = b""
    for name, image in (("landscape.jpg", photo), ("4032x3024 JPEG", phone)):
        width, height = renditions.Image.open(io.BytesIO(image)).size
        box = [Detection("stop", 1, 0.9, width * 0.3, height * 0.2, width * 0.4, height * 0.5)]
        print(f"\nrenditions of {name} ({len(image) / 1024:.0f} KB, {width}x{height}), "
              f"made once and stored in PostgreSQL")
        for label, side in (("thumb", renditions.THUMB_SIDE),
                            ("display", renditions.DISPLAY_SIDE)):
            times = []
            for _ in range(10):
                started = time.perf_counter()
                data = renditions.render(image, box, width, height, side,
                                         renditions.QUALITY[side])
                times.append((time.perf_counter() - started) * 1000)
            print(f"  {label:8} {side:5} px: make {statistics.median(times):6.1f} ms, "
                  f"{len(data) / 1024:6.1f} KB")
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO images (sha256, content_type, size_bytes, data) "
                           "VALUES ($1, 'image/jpeg', $2, $3) ON CONFLICT DO NOTHING",
                           "f" * 64, len(photo), photo)
    await db.store_rendition(pool, "bench-thumb", "f" * 64, "image/jpeg", data)
    median, p95 = await timed(lambda: db.get_rendition(pool, "bench-thumb"), 30)
    print(f"  read a stored one back: {median:.2f} ms (p95 {p95:.2f})")


async def main_async(args: argparse.Namespace) -> None:
    url = os.environ.get("DATABASE_URL")
    if url:
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")
            await admin.execute(f"CREATE DATABASE {BENCH_DB}")
        finally:
            await admin.close()
        dsn = urlunsplit(urlsplit(url)._replace(path="/" + BENCH_DB))
        try:
            await run(dsn, args.records, args.limit, args.repeat)
        finally:
            admin = await asyncpg.connect(url)
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
            finally:
                await admin.close()
        return
    if args.data_dir:
        server = EmbeddedPostgres(Path(args.data_dir))
        await asyncio.to_thread(server.start)
        try:
            await db.ensure_database(server.dsn, BENCH_DB)
            await run(server.dsn_for(BENCH_DB), args.records, args.limit, args.repeat)
        finally:
            await asyncio.to_thread(server.stop)
        return
    with tempfile.TemporaryDirectory(prefix="yolo-bench-") as folder:
        server = EmbeddedPostgres(Path(folder) / "pgdata")
        await asyncio.to_thread(server.start)
        try:
            await db.ensure_database(server.dsn, BENCH_DB)
            await run(server.dsn_for(BENCH_DB), args.records, args.limit, args.repeat)
        finally:
            await asyncio.to_thread(server.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--limit", type=int, default=50, help="page size")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per query")
    parser.add_argument("--data-dir", help="keep the embedded cluster here (seeded once)")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
