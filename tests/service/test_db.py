"""db.py and migrations against a real PostgreSQL; results checked against plain Python."""

from __future__ import annotations

import asyncio
import random
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import pytest

import db
from service import history_stats
from model.detection import Detection
from settings import Config
from utils.migrate import MIGRATIONS_DIR, MigrationError, discover, migrate

LABELS = ["go", "stop", "stopLeft", "goLeft", "warning", "warningLeft"]
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
VERSIONS = [m.version for m in discover()]


def make_record(created_at: datetime, boxes: list[tuple[str, float]], *,
                filename: str = "img.jpg", sha256: str | None = None) -> db.Record:
    detections = [Detection(label, LABELS.index(label), conf, 1.0, 2.0, 30.5, 40.25)
                  for label, conf in boxes]
    return db.Record(id=uuid4(), created_at=created_at, filename=filename,
                     sha256=sha256 or uuid4().hex * 2, width=640, height=480,
                     model="tiny:test", inference_ms=12.5, detections=detections)


async def connect(config: Config) -> asyncpg.Connection:
    return await asyncpg.connect(**config.postgres.connect_kwargs())


# ---------------------------------------------------------------- migrations

async def test_migrations_apply_once_and_rerun(test_config: Config) -> None:
    conn = await connect(test_config)
    try:
        assert VERSIONS[:2] == [1, 2]
        assert await migrate(conn) == VERSIONS
        assert await migrate(conn) == []
        tables = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"detections", "detection_labels", "images", "schema_migrations"} <= tables
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in rows][:2] == [(1, "init"),
                                                                 (2, "filename_search")]
        # The embedded server ships pg_trgm, so the filename index exists.
        assert await conn.fetchval("SELECT to_regclass('detections_filename_trgm_idx')")
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(test_config: Config) -> None:
    conns = [await connect(test_config) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(results) == [[], [], VERSIONS]
    finally:
        for conn in conns:
            await conn.close()


async def test_new_migration_applies_and_edits_are_refused(test_config: Config,
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    conn = await connect(test_config)
    try:
        assert await migrate(conn, folder) == VERSIONS
        (folder / "0099_notes.sql").write_text("ALTER TABLE detections ADD COLUMN note text;")
        assert await migrate(conn, folder) == [99]
        assert await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'") == 1
        (folder / "0099_notes.sql").write_text("ALTER TABLE detections ADD COLUMN memo text;")
        with pytest.raises(MigrationError, match="0099_notes was changed"):
            await migrate(conn, folder)
        (folder / "3_bad.sql").write_text("SELECT 1;")
        with pytest.raises(MigrationError, match="must look like 0001_description.sql"):
            await migrate(conn, folder)
    finally:
        await conn.close()


async def test_failed_migration_leaves_nothing_behind(test_config: Config, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "0099_broken.sql").write_text("CREATE TABLE extra (x int); SELECT nonsense FROM nowhere;")
    conn = await connect(test_config)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(conn, folder)
        assert await conn.fetchval("SELECT to_regclass('detections')") is None
        assert await conn.fetchval("SELECT to_regclass('extra')") is None
    finally:
        await conn.close()


# ---------------------------------------------------------------- records

async def test_save_get_roundtrip_and_idempotent(db_pool: asyncpg.Pool) -> None:
    record = make_record(T0, [("stop", 0.91), ("go", 0.42), ("stop", 0.55)], filename="a b.png")
    await db.save_records(db_pool, [record])
    await db.save_records(db_pool, [record])  # a retried write changes nothing
    assert await db.get_detection(db_pool, record.id) == record
    assert await db_pool.fetchval("SELECT count(*) FROM detections") == 1
    rows = await db_pool.fetch(
        "SELECT label, boxes, max_confidence FROM detection_labels ORDER BY label")
    assert [(r["label"], r["boxes"], round(r["max_confidence"], 2)) for r in rows] == \
        [("go", 1, 0.42), ("stop", 2, 0.91)]
    assert record.to_json()["created_at"] == "2024-05-01T08:00:00+00:00"
    assert record.to_json()["id"] == str(record.id)


async def test_missing_record_and_image(db_pool: asyncpg.Pool) -> None:
    with pytest.raises(db.RecordNotFound):
        await db.get_detection(db_pool, uuid4())
    record = make_record(T0, [])
    await db.save_records(db_pool, [record])  # no image stored
    with pytest.raises(db.RecordNotFound, match="was not stored"):
        await db.get_image(db_pool, record.id)


async def test_images_are_deduplicated(db_pool: asyncpg.Pool) -> None:
    sha = "ab" * 32
    first, second = make_record(T0, [], sha256=sha), make_record(T0, [], sha256=sha)
    image = db.StoredImage(sha, "image/png", b"\x89PNG fake bytes")
    await db.save_records(db_pool, [first, second], [image, image])
    await db.save_records(db_pool, [make_record(T0, [], sha256=sha)], [image])
    assert await db_pool.fetchval("SELECT count(*) FROM images") == 1
    for record in (first, second):
        got_record, got_image = await db.get_image(db_pool, record.id)
        assert got_record.id == record.id
        assert got_image == image


async def test_store_images_reports_only_what_it_inserted(db_pool: asyncpg.Pool) -> None:
    """store_images returns the sha256s it inserted (none the second time); save_records
    with an image stored ahead keeps the one row and its bytes."""
    image = db.StoredImage("12" * 32, "image/jpeg", b"\xff\xd8\xff fake jpeg")
    assert await db.store_images(db_pool, [image, image]) == [image.sha256]
    assert await db.store_images(db_pool, [image]) == []
    record = make_record(T0, [], sha256=image.sha256)
    await db.save_records(db_pool, [record], [image])
    assert await db_pool.fetchval("SELECT count(*) FROM images") == 1
    assert await db.get_image(db_pool, record.id) == (record, image)


async def test_delete_unreferenced_images_keeps_referenced_ones(db_pool: asyncpg.Pool) -> None:
    """Only images no record refers to are deleted; unknown sha256s are ignored."""
    orphan = db.StoredImage("34" * 32, "image/png", b"\x89PNG orphan")
    used = db.StoredImage("56" * 32, "image/png", b"\x89PNG used")
    assert await db.store_images(db_pool, [orphan, used]) == [orphan.sha256, used.sha256]
    await db.save_records(db_pool, [make_record(T0, [], sha256=used.sha256)])
    deleted = await db.delete_unreferenced_images(db_pool, [orphan.sha256, used.sha256, "78" * 32])
    assert deleted == [orphan.sha256]
    assert [r["sha256"] for r in await db_pool.fetch("SELECT sha256 FROM images")] == [used.sha256]


async def test_delete_waits_for_a_saver_holding_the_image(db_pool: asyncpg.Pool) -> None:
    """A transaction that found the image stored (KEY SHARE lock) and is saving a record
    for it blocks the delete; once it commits, the delete sees the record and keeps the
    image. Without the lock the delete would not wait; without the second statement's
    fresh snapshot it would delete an image that a committed record refers to."""
    image = db.StoredImage("9a" * 32, "image/jpeg", b"\xff\xd8\xff written ahead")
    assert await db.store_images(db_pool, [image]) == [image.sha256]
    async with db_pool.acquire() as saver:
        transaction = saver.transaction()
        await transaction.start()
        try:
            assert await db._store_images(saver, [image]) == []  # stored: locked, not sent
            await saver.execute(
                "INSERT INTO detections (id, created_at, filename, sha256, width, height, "
                "model, inference_ms, detections, num_detections) "
                "VALUES ($1, $2, 'a.jpg', $3, 1, 1, 'm', 1, '[]', 0)",
                uuid4(), T0, image.sha256)
            delete = asyncio.create_task(db.delete_unreferenced_images(db_pool, [image.sha256]))
            async with asyncio.timeout(10):  # until the delete's backend waits for a row lock
                while not delete.done() and not await db_pool.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND wait_event_type = 'Lock'"):
                    await asyncio.sleep(0.02)
            # Its backend waits for the saver's lock: it cannot end before the commit.
            assert not delete.done(), "the delete did not wait for the saver"
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
    assert await asyncio.wait_for(delete, 10) == []
    assert await db_pool.fetchval("SELECT count(*) FROM images WHERE sha256 = $1",
                                  image.sha256) == 1


async def test_image_data_is_stored_uncompressed(db_pool: asyncpg.Pool) -> None:
    """Migration 0003: images.data is stored out of line without compression."""
    assert await db_pool.fetchval(
        "SELECT attstorage::text FROM pg_attribute "
        "WHERE attrelid = 'images'::regclass AND attname = 'data'") == "e"


# ---------------------------------------------------------------- history

def seed(n: int = 60, rng_seed: int = 7) -> list[db.Record]:
    rng = random.Random(rng_seed)
    records = []
    for i in range(n):
        # Several records share a timestamp, so paging must break ties by id.
        created = T0 + timedelta(hours=7 * (i // 3))
        boxes = [(rng.choice(LABELS), round(rng.uniform(0.3, 0.99), 3))
                 for _ in range(rng.randrange(0, 4))]
        name = rng.choice(["cam1_100%.jpg", "cam1_a.jpg", "CAM2.png", "x_y.bmp"])
        records.append(make_record(created, boxes, filename=name))
    return records


def expected(records: list[db.Record], f: db.HistoryFilter) -> list[UUID]:
    """The history query, written independently in Python."""
    def keep(r: db.Record) -> bool:
        if f.since is not None and r.created_at < f.since:
            return False
        if f.until is not None and r.created_at >= f.until:
            return False
        if f.filename is not None and f.filename.lower() not in r.filename.lower():
            return False
        boxes = [d for d in r.detections if f.label is None or d.label == f.label]
        if f.label is not None and not boxes:
            return False
        if f.min_confidence is not None:
            return any(d.confidence >= f.min_confidence for d in boxes)
        return True

    kept = [r for r in records if keep(r)]
    kept.sort(key=lambda r: (r.created_at, r.id), reverse=True)
    return [r.id for r in kept]


async def all_pages(pool: asyncpg.Pool, f: db.HistoryFilter, limit: int) -> list[UUID]:
    ids: list[UUID] = []
    cursor = None
    for _ in range(100):
        page = await db.list_detections(pool, f, limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        ids.extend(r.id for r in page.items)
        if page.next_cursor is None:
            return ids
        cursor = db.Cursor.decode(page.next_cursor.encode())
    raise AssertionError("paging did not end")


@pytest.mark.parametrize("f", [
    db.HistoryFilter(),
    db.HistoryFilter(label="stop"),
    db.HistoryFilter(label="goLeft", min_confidence=0.6),
    db.HistoryFilter(min_confidence=0.9),
    db.HistoryFilter(since=T0 + timedelta(days=1), until=T0 + timedelta(days=3)),
    db.HistoryFilter(label="go", since=T0 + timedelta(hours=30)),
    db.HistoryFilter(filename="100%"),
    db.HistoryFilter(filename="x_y"),
    db.HistoryFilter(filename="cam2", label="warning"),
    db.HistoryFilter(label="nothing-like-this"),
], ids=lambda f: ",".join(f"{k}={v}" for k, v in vars(f).items() if v is not None) or "all")
async def test_history_filters_and_paging(db_pool: asyncpg.Pool, f: db.HistoryFilter) -> None:
    records = seed()
    await db.save_records(db_pool, records)
    want = expected(records, f)
    assert await all_pages(db_pool, f, limit=7) == want
    first = await db.list_detections(db_pool, f, limit=200)
    assert [r.id for r in first.items] == want and first.next_cursor is None


async def test_limit_bounds(db_pool: asyncpg.Pool) -> None:
    with pytest.raises(ValueError):
        await db.list_detections(db_pool, limit=0)
    with pytest.raises(ValueError):
        await db.list_detections(db_pool, limit=db.MAX_PAGE_SIZE + 1)


def test_cursor_roundtrip_and_garbage() -> None:
    cursor = db.Cursor(datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=timezone.utc), uuid4())
    assert db.Cursor.decode(cursor.encode()) == cursor
    for token in ["", "abc", "!!!!", db.Cursor(cursor.created_at, cursor.id).encode()[:-3],
                  "MjAyNC0wNS0wMVQwODowMDowMHxub3QtYS11dWlk"]:
        with pytest.raises(db.InvalidCursor):
            db.Cursor.decode(token)


async def test_stats_match_python(db_pool: asyncpg.Pool) -> None:
    records = seed()
    await db.save_records(db_pool, records)
    result = await history_stats.stats(db_pool)
    assert result.records == len(records)
    assert result.boxes == sum(len(r.detections) for r in records)
    per_label: dict[str, tuple[int, int]] = {}
    for r in records:
        labels = [d.label for d in r.detections]
        for label in set(labels):
            recs, boxes = per_label.get(label, (0, 0))
            per_label[label] = (recs + 1, boxes + labels.count(label))
    assert {c.label: (c.records, c.boxes) for c in result.labels} == per_label
    counts = [c.records for c in result.labels]
    assert counts == sorted(counts, reverse=True)
    per_day: dict[str, int] = {}
    for r in records:
        per_day[r.created_at.date().isoformat()] = per_day.get(r.created_at.date().isoformat(), 0) + 1
    assert {c.day.isoformat(): c.records for c in result.days} == per_day
    assert [c.day for c in result.days] == sorted(c.day for c in result.days)

    window = await history_stats.stats(db_pool, since=T0 + timedelta(days=1), until=T0 + timedelta(days=2))
    assert window.records == sum(1 for r in records
                                 if T0 + timedelta(days=1) <= r.created_at < T0 + timedelta(days=2))
    assert await history_stats.list_labels(db_pool) == sorted(per_label)
    assert result.to_json()["days"][0]["day"] == result.days[0].day.isoformat()
