"""``python -m service.export``: the export of GET /api/export into a file, for exports
too large for one HTTP response; the same filters, a progress bar.

    python -m service.export --format yolo --reviewed yes --out reviewed.zip
    python -m service.export --format coco --label stop --since 2026-11-01 --min-confidence 0.5

It reads the database of the config (``--config``, else ``YOLO_CONFIG``, else
config/config.yaml; ``DATABASE_URL`` as the service). With the embedded server, a
running service's server is used as it is (through its socket); without a running
service, the server is started for the export and stopped after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
from tqdm import tqdm

import db
from model.errors import ModelError
from model.inference import read_names
from service.export import run
from settings import Config, ConfigError, load_config
from utils.embedded_pg import SUPERUSER

log = logging.getLogger("service.export")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m service.export",
                                description="Export the detection history as training data.")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--format", choices=run.FORMATS, default="yolo")
    p.add_argument("--out", type=Path, default=None,
                   help="the zip to write (default: history-<format>-<time>.zip)")
    for name in ("since", "until", "label", "model", "min-confidence", "reviewed", "filename"):
        p.add_argument(f"--{name}", default=None,
                       help="as the history filter" + (": yes or no" if name == "reviewed"
                                                       else ""))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def history_filter(args: argparse.Namespace) -> db.HistoryFilter:
    """The filters, checked by the API's own rules (``ParamError`` names a bad one)."""
    from service.web import params  # the rules of GET /api/export, not its web handling

    query = {name: value for name in ("since", "until", "label", "model", "reviewed",
                                      "filename")
             if (value := getattr(args, name)) is not None}
    if args.min_confidence is not None:
        query["min_confidence"] = args.min_confidence
    return params.history_filter(query)


def _running_socket(config: Config) -> str | None:
    """The DSN of the embedded server a running service holds, or None."""
    pidfile = config.postgres.data_dir / "postmaster.pid"
    try:
        lines = pidfile.read_text().splitlines()
        os.kill(int(lines[0]), 0)
    except (OSError, ValueError, IndexError):
        return None
    if len(lines) < 5 or not lines[4].strip():
        return None
    return (f"postgresql://{SUPERUSER}@/{config.postgres.database}"
            f"?host={lines[4].strip()}&port={lines[3].strip()}")


@asynccontextmanager
async def connection(config: Config) -> AsyncIterator[asyncpg.Connection]:
    dsn = _running_socket(config) if config.postgres.embedded else None
    if dsn is not None or not config.postgres.embedded:
        kwargs = {"dsn": dsn} if dsn is not None else config.postgres.connect_kwargs()
        conn = await asyncpg.connect(**kwargs)
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                                  schema="pg_catalog")
        try:
            yield conn
        finally:
            await conn.close()
        return
    async with db.pg_context(config.postgres) as database, \
            database.pool.acquire() as conn:
        yield conn


async def export(config: Config, filters: db.HistoryFilter, fmt: str, out: Path,
                 quiet: bool = False) -> run.ExportCounts:
    """Write the export to ``out`` (through a temporary file beside it)."""
    try:
        preferred = read_names(config.model(filters.model).names)
    except (KeyError, ModelError):
        preferred = []
    partial = out.with_name(out.name + ".part")
    async with connection(config) as conn, \
            conn.transaction(isolation="repeatable_read", readonly=True):
        plan = await run.plan(conn, filters, preferred)
        with open(partial, "wb") as file, \
                tqdm(total=plan.records, unit="image", disable=quiet,
                     desc=f"export {fmt}") as bar:
            async def write(chunk: bytes) -> None:
                file.write(chunk)

            counts = await run.write_export(conn, filters, fmt, plan, write, bar.update)
    partial.replace(out)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    from service.web.params import ParamError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config) if args.config else load_config()
        filters = history_filter(args)
    except (ConfigError, ParamError) as exc:
        log.error("%s", exc)
        return 2
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path(f"history-{args.format}-{stamp}.zip")
    counts = asyncio.run(export(config, filters, args.format, out, args.quiet))
    log.info("%s: %d images (%d reviewed), %d left out (manifest.jsonl says why)",
             out, counts.images, counts.reviewed, counts.left_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
