"""The record writer against a real PostgreSQL: straight to the database when it
answers; spooled entries replayed in batches; an entry it refuses set aside, not lost."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import pytest

import db
from model.detection import Detection
from service.recorder import RecordWriter, decode_entry, encode_entry
from utils.spool import HEADER, REJECTED_NAME, Spool


def record(width: int = 64) -> db.Record:
    return db.Record(id=uuid.uuid4(), created_at=datetime.now(timezone.utc),
                     filename="a<b>'.jpg", sha256="ab" * 32, width=width, height=48,
                     model="m", inference_ms=1.25,
                     detections=[Detection("go", 0, 0.5, 1.0, 2.0, 3.0, 4.0)])


def test_entries_round_trip() -> None:
    records = [record(), record()]
    images = [db.StoredImage("ab" * 32, "image/png", b"\x89PNG\x00\xff"),
              db.StoredImage("cd" * 32, "image/jpeg", b"")]
    assert decode_entry(encode_entry(records, images)) == (records, images)


def test_entries_hold_images_as_raw_bytes() -> None:
    """Not base64: an entry is its image plus a few hundred bytes."""
    image = db.StoredImage("ab" * 32, "image/jpeg", os.urandom(200_000))
    entry = encode_entry([record()], [image])
    assert image.data in entry and len(entry) < len(image.data) + 1000
    for cut in (len(entry) - 1, 10, 3):  # damaged entries are refused, not misread
        with pytest.raises(ValueError, match="not a spool entry"):
            decode_entry(entry[:cut])


def test_entries_of_the_earlier_base64_layout_are_still_read() -> None:
    records = [record()]
    image = db.StoredImage("ab" * 32, "image/png", b"\x89PNG\x00\xff")
    old = json.dumps({"records": [r.to_json() for r in records],
                      "images": [{"sha256": image.sha256, "content_type": image.content_type,
                                  "data": base64.b64encode(image.data).decode("ascii")}]},
                     separators=(",", ":")).encode()
    assert decode_entry(old) == (records, [image])


async def test_writes_go_to_the_database_when_it_answers(db_pool: asyncpg.Pool,
                                                         tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=1 << 20)
    writer = RecordWriter(db_pool, spool, write_timeout=5)
    saved = record()
    assert await writer.save([saved]) == "database"
    assert spool.pending_entries == 0 and not spool.path.exists()
    assert (await db.get_detection(db_pool, saved.id)) == saved
    spool.close()


async def test_replay_in_batches_sets_aside_what_the_database_refuses(
        db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=1 << 24)
    good = [record() for _ in range(150)]
    refused = record(width=0)  # violates CHECK (width > 0): never storable
    entries = [[r] for r in good[:70]] + [[refused]] + [[r] for r in good[70:]]
    for entry in entries:
        await spool.append(encode_entry(entry, []), len(entry))
    writer = RecordWriter(db_pool, spool, write_timeout=5)
    assert await writer.replay_pending() == 150
    stored = await db_pool.fetch("SELECT id FROM detections")
    assert {row["id"] for row in stored} == {r.id for r in good}
    rejected = (tmp_path / REJECTED_NAME).read_bytes()
    assert decode_entry(rejected[HEADER.size:]) == ([refused], [])
    assert not spool.path.exists() and spool.pending_entries == 0
    spool.close()


async def test_sweep_deletes_only_old_images_no_record_refers_to(db_pool: asyncpg.Pool,
                                                                  tmp_path: Path) -> None:
    """An image written ahead whose records never came goes once older than the grace; a
    young one (its records may still come) and an old one with a record stay."""
    old_orphan, young_orphan, old_kept = (
        db.StoredImage(uuid.uuid4().hex * 2, "image/png", b"\x89PNG") for _ in range(3))
    ours = [old_orphan.sha256, young_orphan.sha256, old_kept.sha256]
    await db.store_images(db_pool, [old_orphan, young_orphan, old_kept])
    await db.save_records(db_pool, [dataclasses.replace(record(), sha256=old_kept.sha256)],
                          [old_kept])
    await db_pool.execute("UPDATE images SET created_at = now() - interval '2 hours' "
                          "WHERE sha256 = ANY($1::text[])", [old_orphan.sha256, old_kept.sha256])
    spool = Spool.open(tmp_path, max_bytes=1 << 20)
    writer = RecordWriter(db_pool, spool, write_timeout=5)
    assert await writer.sweep(grace_s=3600) >= 1
    left = await db_pool.fetch("SELECT sha256 FROM images WHERE sha256 = ANY($1::text[])", ours)
    assert {row["sha256"] for row in left} == {young_orphan.sha256, old_kept.sha256}
    assert await writer.sweep(grace_s=3600) == 0
    spool.close()
