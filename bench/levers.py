"""Levers of the service, measured: the shipped config against variants, in turns.

Each variant is the shipped ``config/config.yaml`` with one setting changed; the turns
alternate (shipped, variant 1, variant 2, ..., shipped, ...) for ``--rounds`` rounds, each
turn run as in ``bench.peers`` (its own instance and database, the same photos as
multipart uploads, every upload new bytes, closed loop at each level, then idle CPU).
The table pools each variant's turns and gives the ratio shipped/variant.

Variants (``--variants``, comma-separated; default: all):

- ``uvloop``: ``server.event_loop: uvloop`` (the shipped loop is asyncio's own);
- ``no-group-commit``: ``postgres.group_commit: false``, one commit per request;
- ``no-images``: ``storage.store_images: false``, what storing every original costs.

Micro-measurements that need no server (``--micro``): JSON encoding of a detection
answer with the standard library against orjson, and the worker pipe (a JPEG sent to a
process and its answer back) against pickling alone. ``--micro-store``: storing one
image in a throw-away embedded PostgreSQL, each write its own durable commit, in turns:
``INSERT`` (what ``db.store_images`` sends) against binary ``COPY``, with the column's
``STORAGE EXTERNAL`` (shipped: no compression) against ``EXTENDED`` (pglz).

    python -m bench.levers                          # 2 rounds, c=1,4,8, 20 s each
    python -m bench.levers --variants no-group-commit --levels 8 --rounds 3
    python -m bench.levers --micro
    python -m bench.levers --micro-store
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import pickle
import sys
import time
import timeit
from collections.abc import Sequence
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench._service import PROJECT_ROOT, run_in_scratch, scratch_dir
from bench.common import load_images, percentile
from bench.load import _levels
from bench.peers import EXAMPLES_DIR, Turn, format_report, run_ours
from service.workers.protocol import DetectJob

log = logging.getLogger("bench.levers")

SHIPPED = "shipped"
VARIANTS: dict[str, dict[str, Any]] = {
    "uvloop": {"server.event_loop": "uvloop"},
    "no-group-commit": {"postgres.group_commit": False},
    "no-images": {"storage.store_images": False},
}


def _variants(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"variants are {', '.join(VARIANTS)}; got {text!r}")
    return names


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "config" / "config.yaml")
    parser.add_argument("--variants", type=_variants, default=list(VARIANTS))
    parser.add_argument("--images", type=Path, nargs="+")
    parser.add_argument("--levels", type=_levels, default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    parser.add_argument("--micro", action="store_true",
                        help="only the micro-measurements (JSON encoders, worker pipe)")
    parser.add_argument("--micro-store", action="store_true",
                        help="only the image store measurement (INSERT vs COPY, TOAST)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.idle <= 0:
        parser.error("--rounds, --duration and --idle must be positive")
    return args


# ---------------------------------------------------------------- micro

def _answer() -> dict[str, Any]:
    """A /detect answer with five boxes, as the service sends it."""
    box = {"label": "stop", "class_id": 1, "confidence": 0.9403,
           "box": {"x1": 362.89, "y1": 89.07, "x2": 383.52, "y2": 127.6}}
    return {"id": "7a4a60dd-7c62-44bb-8785-766bc57eccb1",
            "created_at": "2026-12-02T04:51:18.142632+00:00", "filename": "street-red.jpg",
            "sha256": "ab" * 32, "width": 416, "height": 416, "model": "traffic-lights",
            "inference_ms": 21.5, "detections": [box] * 5, "api": "native"}


def _echo(conn: Connection) -> None:
    """Child: receive pickled messages, answer a small one, until None."""
    while (message := conn.recv()) is not None:
        conn.send(("ok", len(message[1])))


def micro() -> None:
    import json

    answer = _answer()
    runs = 20000
    std = timeit.timeit(lambda: json.dumps(answer), number=runs) / runs * 1e6
    print(f"JSON of a /detect answer (5 boxes): json.dumps {std:.1f} us", end="")
    try:
        import orjson
    except ImportError:
        print("; orjson not installed")
    else:
        fast = timeit.timeit(lambda: orjson.dumps(answer), number=runs) / runs * 1e6
        print(f", orjson.dumps {fast:.1f} us: {std - fast:.1f} us saved per answer")
    images = load_images(sorted(EXAMPLES_DIR.glob("*.jpg")))
    big = max(load_images(None), key=lambda i: len(i.data))
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_echo, args=(child,), daemon=True)
    process.start()
    try:
        for image in (images[0], big):
            message = ("detect", [DetectJob(image.data, 0.5, 0.45, True, 300)], False)
            pickling = timeit.timeit(lambda m=message: pickle.loads(pickle.dumps(m, protocol=5)),
                                     number=300) / 300 * 1e3
            threaded = asyncio.run(_round_trips(parent, message, threaded=True))
            direct = asyncio.run(_round_trips(parent, message, threaded=False))
            print(f"worker pipe, {image.name} ({len(image.data) // 1024} KiB), as "
                  f"service/workers/process.py does it (send in a thread, wait with "
                  f"add_reader): p50 {percentile(threaded, 50):.3f} ms; send on the loop "
                  f"instead: p50 {percentile(direct, 50):.3f} ms; pickle + unpickle alone "
                  f"{pickling:.3f} ms")
    finally:
        parent.send(None)
        process.join(5)


async def _round_trips(conn: Connection, message: Any, *, threaded: bool,
                       count: int = 300) -> list[float]:
    """Milliseconds per job sent to the echo child and its answer read, on this loop."""
    loop = asyncio.get_running_loop()
    trips = []
    for n in range(count + 20):
        started = time.perf_counter()
        if threaded:
            await asyncio.to_thread(conn.send, message)
        else:
            conn.send(message)
        readable = loop.create_future()
        loop.add_reader(conn.fileno(), lambda f=readable: f.done() or f.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(conn.fileno())
        conn.recv()
        if n >= 20:
            trips.append((time.perf_counter() - started) * 1e3)
    return trips


STORE_WRITES = 40  # per method, storage mode and image


def micro_store(workdir: Path) -> None:
    from utils.embedded_pg import EmbeddedPostgres

    server = EmbeddedPostgres(workdir / "pgdata", port=5499)
    server.start()
    try:
        asyncio.run(_store_turns(server.dsn))
    finally:
        server.stop()


async def _store_turns(dsn: str) -> None:
    import hashlib
    import os

    import asyncpg

    import db
    from utils.migrate import migrate

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        photos = [min(load_images(sorted(EXAMPLES_DIR.glob("*.jpg"))), key=lambda i: len(i.data)),
                  max(load_images(None), key=lambda i: len(i.data))]

        async def insert(image: db.StoredImage) -> None:
            await db.store_images(pool, [image])

        async def copy(image: db.StoredImage) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table(
                    "images", records=[(image.sha256, image.content_type, len(image.data),
                                        image.data)],
                    columns=["sha256", "content_type", "size_bytes", "data"])

        methods = {"INSERT": insert, "COPY": copy}
        for photo in photos:
            times: dict[str, list[float]] = {}
            for n in range(STORE_WRITES):
                for storage in ("EXTERNAL", "EXTENDED"):
                    await pool.execute(f"ALTER TABLE images ALTER COLUMN data SET STORAGE {storage}")
                    for name, write in methods.items():
                        data = photo.data + os.urandom(16)  # a new image each time
                        image = db.StoredImage(hashlib.sha256(data).hexdigest(), "image/jpeg",
                                               data)
                        started = time.perf_counter()
                        await write(image)
                        if n:  # the first of each is a warm-up
                            times.setdefault(f"{name} {storage}", []).append(
                                (time.perf_counter() - started) * 1e3)
            print(f"storing {photo.name} ({len(photo.data) // 1024} KiB), one durable commit "
                  "each, median ms: " + ", ".join(f"{k} {percentile(v, 50):.2f}"
                                                 for k, v in times.items()))
        await pool.execute("ALTER TABLE images ALTER COLUMN data SET STORAGE EXTERNAL")
    finally:
        await pool.close()


# ---------------------------------------------------------------- main

def run(args: argparse.Namespace, workdir: Path) -> int:
    images = load_images(args.images or sorted(EXAMPLES_DIR.glob("*.jpg")))
    names = [SHIPPED, *args.variants]
    overrides = {SHIPPED: {}, **{name: VARIANTS[name] for name in args.variants}}
    turns: list[Turn] = []
    for round_ in range(1, args.rounds + 1):
        for name in names:
            instance = workdir / name
            instance.mkdir(exist_ok=True)
            log.info("round %d: %s %s", round_, name, overrides[name] or "(shipped config)")
            turns.append(run_ours(args, instance, images, round_, name, overrides[name]))
    print("variants: " + "; ".join(f"{n}: {overrides[n] or 'config/config.yaml'}"
                                   for n in names))
    print(f"{args.rounds} round(s); per level {args.warmup:g} s warm-up + {args.duration:g} s "
          "measured per turn; multipart uploads of " + ", ".join(i.name for i in images))
    print(format_report(turns, args.levels))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    if args.micro:
        micro()
        return 0
    if args.micro_store:
        with scratch_dir("yolo-store-", args.keep) as workdir:
            micro_store(workdir)
        return 0
    return run_in_scratch("yolo-levers-", args.keep, partial(run, args))


if __name__ == "__main__":
    sys.exit(main())
