"""The record writer against a real PostgreSQL: straight to the database when it
answers; spooled entries replayed in batches; an entry it refuses set aside, not lost."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------- group commit

def request_records(count: int) -> list[tuple[list[db.Record], list[db.StoredImage]]]:
    """``count`` requests of one record each, every one with its own image."""
    requests = []
    for _ in range(count):
        image = db.StoredImage(uuid.uuid4().hex * 2, "image/jpeg", b"\xff\xd8" + os.urandom(64))
        requests.append(([dataclasses.replace(record(), id=uuid.uuid4(), sha256=image.sha256)],
                         [image]))
    return requests


async def stored_counts(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    rows = await pool.fetch("SELECT id, count(*) AS n FROM detections WHERE id = ANY($1::uuid[]) "
                            "GROUP BY id", ids)
    return {row["id"]: row["n"] for row in rows}


async def test_group_commit_stores_every_concurrent_request_once_before_answering(
        db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    """Many requests saving at once share commits; each one's record (and its label rows
    and image) is visible to another connection as soon as its save returns, and every
    record is stored exactly once."""
    spool = Spool.open(tmp_path, max_bytes=1 << 20)
    writer = RecordWriter(db_pool, spool, write_timeout=5)
    requests = request_records(48)
    await db.store_images(db_pool, [img for _, images in requests[::2] for img in images])
    seen_on_return: list[bool] = []

    async def one(records: list[db.Record], images: list[db.StoredImage]) -> str:
        where = await writer.save(records, images)
        async with db_pool.acquire() as other:  # not the writer's transaction
            seen_on_return.append(await other.fetchval(
                "SELECT count(*) FROM detections d JOIN images i USING (sha256) "
                "JOIN detection_labels l ON l.detection_id = d.id WHERE d.id = $1",
                records[0].id) == 1)
        return where

    answers = await asyncio.gather(*(one(r, i) for r, i in requests))
    assert answers == ["database"] * len(requests)
    assert seen_on_return == [True] * len(requests)
    ids = [records[0].id for records, _ in requests]
    assert await stored_counts(db_pool, ids) == dict.fromkeys(ids, 1)
    assert 1 <= writer.commits_total < len(requests)  # grouped
    assert writer.committed_records_total == len(requests)
    assert spool.pending_entries == 0
    spool.close()


async def test_a_group_the_database_does_not_commit_in_time_is_spooled_whole(
        db_pool: asyncpg.Pool, test_config: Any, tmp_path: Path) -> None:
    """The detections table is locked by another session, so the group's commit cannot
    end within write_timeout: every request of the group is answered from the spool (one
    entry each, as without grouping), and the replay stores each record once."""
    spool = Spool.open(tmp_path, max_bytes=1 << 24)
    writer = RecordWriter(db_pool, spool, write_timeout=0.5)
    requests = request_records(12)
    locker = await asyncpg.connect(**test_config.postgres.connect_kwargs())
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE detections IN ACCESS EXCLUSIVE MODE")
        answers = await asyncio.gather(*(writer.save(r, i) for r, i in requests))
        assert answers == ["spool"] * len(requests)
        assert spool.pending_entries == len(requests) and spool.pending_items == len(requests)
        await transaction.rollback()
    finally:
        await locker.close()
    frames = await spool.read_batch(len(requests) + 1, 1 << 24)
    spooled = [decode_entry(frame.payload) for frame in frames]
    assert sorted(spooled, key=lambda e: str(e[0][0].id)) == \
        sorted(requests, key=lambda e: str(e[0][0].id))
    writer.write_timeout = 5
    assert await writer.replay_pending() == len(requests)
    ids = [records[0].id for records, _ in requests]
    assert await stored_counts(db_pool, ids) == dict.fromkeys(ids, 1)
    spool.close()


async def test_a_record_the_database_refuses_fails_only_its_own_request(
        db_pool: asyncpg.Pool, tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=1 << 20)
    writer = RecordWriter(db_pool, spool, write_timeout=5)
    requests = request_records(6)
    bad = ([dataclasses.replace(requests[3][0][0], width=0)], requests[3][1])  # CHECK fails
    requests[3] = bad
    answers = await asyncio.gather(*(writer.save(r, i) for r, i in requests),
                                   return_exceptions=True)
    assert isinstance(answers[3], asyncpg.CheckViolationError)
    assert [a for n, a in enumerate(answers) if n != 3] == ["database"] * 5
    good = [records[0].id for n, (records, _) in enumerate(requests) if n != 3]
    assert await stored_counts(db_pool, good + [bad[0][0].id]) == dict.fromkeys(good, 1)
    assert spool.pending_entries == 0
    spool.close()


async def test_many_concurrent_detect_requests_are_each_stored_once(
        client: Any, portrait_jpeg: bytes) -> None:
    """Through the real app, workers and group commit: every answered id is in the
    database exactly once, with the image it was answered for."""
    from service.web import keys
    from tests.helpers import form
    from tests.faults import with_comment

    limit = client.server.app[keys.servers_key].default.admission.limit  # more would be 503 overloaded
    uploads = [with_comment(portrait_jpeg, f"group {n}") for n in range(limit)]
    responses = await asyncio.gather(*(client.post("/detect", data=form(
        (f"g{n}.jpg", data, "image/jpeg"))) for n, data in enumerate(uploads)))
    answers = [await response.json() for response in responses]
    assert [response.status for response in responses] == [200] * len(uploads), answers
    ids = [uuid.UUID(answer["id"]) for answer in answers]
    writer = client.server.app[keys.records_key]
    counts = await stored_counts(writer.pool, ids)
    assert counts == dict.fromkeys(ids, 1)
    rows = await writer.pool.fetch("SELECT d.id, i.sha256 FROM detections d JOIN images i "
                                   "USING (sha256) WHERE d.id = ANY($1::uuid[])", ids)
    assert {row["id"]: row["sha256"] for row in rows} == {
        i: hashlib.sha256(data).hexdigest() for i, data in zip(ids, uploads, strict=True)}
