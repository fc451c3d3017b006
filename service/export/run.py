"""The export itself: records out of one database snapshot, a zip out in chunks.

:func:`write_export` hands every chunk of the zip to ``write`` as soon as it is made,
and holds at most a few records (``PREFETCH``) and one image in memory; the lists that
go at the end of the archive wait in temporary files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg

import db
from model.errors import ImageError
from service.export.coco import CocoWriter
from service.export.items import image_file, item_from_row
from service.export.yolo import SPOOL_BYTES, YoloWriter
from service.export.zipout import ZipOut

log = logging.getLogger(__name__)

FORMATS = ("yolo", "coco")
PREFETCH = 8  # records (with their images) read ahead


@dataclass(frozen=True)
class ExportPlan:
    """What an export will hold, known before its first byte: the class names (the
    given ones first, in their order, then any other label found, sorted) and how many
    records."""

    names: list[str]
    records: int


@dataclass
class ExportCounts:
    images: int = 0
    left_out: int = 0
    reviewed: int = 0
    boxes: int = 0


def _names(preferred: Sequence[str], found: Sequence[str]) -> list[str]:
    names = list(dict.fromkeys(preferred))
    return names + sorted(set(found) - set(names))


async def plan(conn: asyncpg.Connection, filters: db.HistoryFilter,
               preferred: Sequence[str]) -> ExportPlan:
    (_, _), (sql, args) = db.export_queries(filters)
    row = await conn.fetchrow(sql, *args)
    return ExportPlan(_names(preferred, row["labels"]), int(row["records"]))


async def write_export(conn: asyncpg.Connection, filters: db.HistoryFilter, fmt: str,
                       export_plan: ExportPlan, write: Callable[[bytes], Awaitable[None]],
                       progress: Callable[[int], None] | None = None) -> ExportCounts:
    """Write the zip of the records ``filters`` select in format ``fmt`` to ``write``.

    Run it inside a repeatable-read transaction on ``conn`` that :func:`plan` ran in,
    so that the plan and the records are one snapshot. ``progress(n)`` is called after
    each record.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    zip_out = ZipOut()
    writer = YoloWriter(zip_out, export_plan.names) if fmt == "yolo" \
        else CocoWriter(zip_out, export_plan.names)
    manifest = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
    counts = ExportCounts()
    (sql, args), _ = db.export_queries(filters)
    try:
        async for row in conn.cursor(sql, *args, prefetch=PREFETCH):
            item = item_from_row(row, filters.min_confidence)
            path = None
            if item.image is not None:
                try:
                    image, ext = await asyncio.to_thread(image_file, item.image,
                                                         item.record.width, item.record.height)
                except ImageError as exc:
                    log.warning("export: record %s left out: %s", item.record.id, exc)
                else:
                    path = writer.add(item, image, ext)
                    counts.images += 1
                    counts.boxes += len(item.boxes)
                    counts.reviewed += item.source == "review"
            counts.left_out += path is None
            line = item.manifest(path)
            if path is None and item.image is not None:
                line["left_out"] = "the stored image could not be decoded"
            manifest.write((json.dumps(line) + "\n").encode())
            await write(zip_out.take())
            if progress is not None:
                progress(1)
        for name, spool in [*writer.finish(), ("manifest.jsonl", manifest)]:
            for chunk in zip_out.copy(name, spool):
                await write(chunk)
        summary = {"format": fmt, "created_at": datetime.now(timezone.utc).isoformat(),
                   "filters": _filters_json(filters), "classes": export_plan.names,
                   "records": export_plan.records, "images": counts.images,
                   "reviewed": counts.reviewed, "model_output": counts.images - counts.reviewed,
                   "left_out": counts.left_out, "boxes": counts.boxes}
        zip_out.add("export.json", (json.dumps(summary, indent=2) + "\n").encode())
        await write(zip_out.close())
    finally:
        writer.close()
        manifest.close()
    return counts


def _filters_json(filters: db.HistoryFilter) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in vars(filters).items():
        if value is not None:
            out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out
