"""Detection history in PostgreSQL: the server and pool (:func:`pg_context`), records,
images, the history's queries.

Watching the database and restarting a dead embedded server:
:mod:`service.database_health`; the history's counts (``stats``, ``list_labels``):
:mod:`service.history_stats`.

Query functions take an ``asyncpg.Pool`` and return frozen dataclasses; a missing row
raises :class:`RecordNotFound` (404 in the service's error table).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from model.detection import Detection
from settings import PostgresConfig
from utils.embedded_pg import EmbeddedPostgres
from utils.migrate import migrate

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PAGE_SIZE = 200


# The database is away (stopped, restarting, unreachable, out of disk or connections), as
# opposed to a statement it refuses: a write that fails with one of these may be retried.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
    asyncpg.ReadOnlySQLTransactionError,
    # Raised by asyncpg when the server goes away in the middle of an operation
    # ("cannot switch to state ...; another operation is in progress").
    asyncpg.InternalClientError,
)


class RecordNotFound(LookupError):
    """No detection record (or stored image) with that id."""


class InvalidCursor(ValueError):
    """A paging cursor that this service did not produce."""


# ---------------------------------------------------------------- data

@dataclass(frozen=True)
class Record:
    """One analysed image and what the model found in it."""

    id: UUID
    created_at: datetime
    filename: str
    sha256: str
    width: int
    height: int
    model: str
    inference_ms: float
    detections: list[Detection]
    api: str = "native"  # the API it came through: native (POST /detect) or deepstack
    model_version: str | None = None  # the content hash of the model's files that ran
    source: str | None = None  # where the image came from (?source=camera-3), if said
    passes: int = 1  # forward passes the model took over it: the whole photo plus tiles

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """The inverse of ``to_json`` (spooled records); raises KeyError / ValueError."""
        created_at = datetime.fromisoformat(data["created_at"])
        if created_at.tzinfo is None:
            raise ValueError("naive created_at")
        return cls(id=UUID(data["id"]), created_at=created_at, filename=str(data["filename"]),
                   sha256=str(data["sha256"]), width=int(data["width"]),
                   height=int(data["height"]), model=str(data["model"]),
                   inference_ms=float(data["inference_ms"]),
                   detections=[Detection.from_json(d) for d in data["detections"]],
                   api=str(data.get("api", "native")),
                   model_version=data.get("model_version"),
                   source=None if data.get("source") is None else str(data["source"]),
                   passes=int(data.get("passes", 1)))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "created_at": self.created_at.isoformat(),
            "filename": self.filename,
            "sha256": self.sha256,
            "width": self.width,
            "height": self.height,
            "model": self.model,
            "model_version": self.model_version,
            "inference_ms": self.inference_ms,
            "detections": [d.to_json() for d in self.detections],
            "api": self.api,
            "source": self.source,
            "passes": self.passes,
        }


@dataclass(frozen=True)
class StoredImage:
    sha256: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class HistoryFilter:
    """History filters. ``label`` and ``min_confidence`` together mean: a box of that label
    with at least that confidence. ``since`` is inclusive, ``until`` exclusive; ``filename``
    is a case-insensitive substring."""

    label: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_confidence: float | None = None
    filename: str | None = None
    model: str | None = None
    reviewed: bool | None = None  # True: only reviewed records; False: only unreviewed


# History orders: newest first, or the images the model was least sure of first (the
# lowest best confidence: "least confidence" active learning; with a label filter, that
# label's best box; records with no box at all come last).
ORDERS = ("newest", "least_confident")
NO_BOX_CONFIDENCE = 2.0  # sorts records without boxes after every real confidence


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the (created_at, id) of the last record of a page, and in the
    ``least_confident`` order its confidence key."""

    created_at: datetime
    id: UUID
    confidence: float | None = None

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}"
        if self.confidence is not None:
            raw += f"|{self.confidence!r}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            stamp, ident, *rest = raw.split("|")
            if len(rest) > 1:
                raise ValueError("too many parts")
            confidence = float(rest[0]) if rest else None
            if confidence is not None and not 0.0 <= confidence <= NO_BOX_CONFIDENCE:
                raise ValueError("confidence out of range")
            created_at = datetime.fromisoformat(stamp)
            if created_at.tzinfo is None:
                raise ValueError("naive timestamp")
            # In UTC, as the database compares it (an offset can push it out of range).
            return cls(created_at.astimezone(timezone.utc), UUID(ident), confidence)
        except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError) as exc:
            raise InvalidCursor("invalid cursor") from exc


@dataclass(frozen=True)
class Page:
    items: list[Record]
    next_cursor: Cursor | None


# ---------------------------------------------------------------- pool and lifecycle

async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool: this service leaves no
    session state (no SET, LISTEN, session advisory locks or cursors outside a
    transaction), and asyncpg rolls back an open transaction itself. The default reset
    costs a round trip on every release, on the path of every request."""


async def create_pool(connect: dict[str, Any], *, minsize: int, maxsize: int) -> asyncpg.Pool:
    """An asyncpg pool whose connections speak jsonb as Python objects."""
    return await asyncpg.create_pool(**connect, min_size=minsize, max_size=maxsize,
                                     init=_init_connection, reset=_keep_session)


async def close_pool(pool: asyncpg.Pool, timeout: float) -> None:
    """Close gracefully, waiting at most ``timeout`` seconds for connections to be released."""
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except TimeoutError:
        log.warning("database connections still busy after %.0fs; terminating them", timeout)
        pool.terminate()


async def ensure_database(admin_dsn: str, database: str) -> None:
    """Create ``database`` on the server if it does not exist (embedded mode)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            ident = '"' + database.replace('"', '""') + '"'
            await conn.execute(f"CREATE DATABASE {ident}")
            log.info("created database %s", database)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Database:
    """What :func:`pg_context` yields."""

    pool: asyncpg.Pool
    embedded: EmbeddedPostgres | None  # None: an external server
    connect: dict[str, Any]  # the pool's connection arguments (for a connection apart)


@asynccontextmanager
async def pg_context(config: PostgresConfig) -> AsyncIterator[Database]:
    """PostgreSQL for the service: the embedded server (when configured) started, the
    database created, the pool opened and the schema migrated; all closed on exit.
    Watching it, and restarting a dead embedded server, is
    :func:`service.database_health.health_context`'s job."""
    embedded: EmbeddedPostgres | None = None
    if config.embedded:
        embedded = EmbeddedPostgres(config.data_dir)
        await asyncio.to_thread(embedded.start)
    try:
        if embedded is not None:
            await ensure_database(embedded.dsn, config.database)
            connect: dict[str, Any] = {"dsn": embedded.dsn_for(config.database)}
        else:
            connect = config.connect_kwargs()
        pool = await create_pool(connect, minsize=config.minsize, maxsize=config.maxsize)
        try:
            applied = await run(pool, migrate)
            log.info("database ready%s", f"; applied migrations {applied}" if applied else "")
            yield Database(pool, embedded, connect)
        finally:
            await close_pool(pool, config.close_timeout)
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def run(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """``work`` on a pooled connection, given up at once when the caller is cancelled (a
    deadline: ``asyncio.timeout``).

    Cancelled in the middle of a statement, asyncpg would cancel it gracefully, roll back
    and reset the connection, all of which wait for the server: with the server hung
    (stopped, its disk stuck) the caller's deadline would never end. Instead ``work``
    runs as a task of its own; a cancelled caller terminates the connection (its socket
    closed, nothing awaited), which fails ``work`` at once, and the pool replaces it.
    """
    conn = await pool.acquire()
    try:
        task = asyncio.ensure_future(work(conn))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            conn.terminate()
            await asyncio.wait({task})  # ends at once: its connection is gone
            if not task.cancelled():
                task.exception()  # retrieved: "the connection was closed", as expected
            raise
    finally:
        await pool.release(conn)


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> None:
    """Raise if the database does not answer within ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        await run(pool, lambda conn: conn.fetchval("SELECT 1"))


# ---------------------------------------------------------------- writes

def _label_rows(record: Record) -> list[tuple[UUID, str, datetime, int, float]]:
    per_label: dict[str, tuple[int, float]] = {}
    for det in record.detections:
        boxes, best = per_label.get(det.label, (0, 0.0))
        per_label[det.label] = (boxes + 1, max(best, det.confidence))
    return [(record.id, label, record.created_at, boxes, best)
            for label, (boxes, best) in sorted(per_label.items())]


# Records, their label rows and a lock on the images they refer to, in one statement (one
# round trip, one commit). The records go in only if every image is there ($12: their
# sha256s, sorted); the count of images found tells the caller whether they did.
_INSERT_RECORDS = """
WITH held AS (
    SELECT sha256 FROM images WHERE sha256 = ANY($12::text[]) ORDER BY sha256 FOR KEY SHARE
), inserted AS (
    INSERT INTO detections (id, created_at, filename, sha256, width, height, model,
                            inference_ms, detections, num_detections, max_confidence, api,
                            model_version, source, passes)
    SELECT r.id, r.created_at, r.filename, r.sha256, r.width, r.height, r.model,
           r.inference_ms, r.detections::jsonb, r.num_detections, r.max_confidence, r.api,
           r.model_version, r.source, r.passes
    FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::int[], $6::int[],
                $7::text[], $8::real[], $9::text[], $10::int[], $11::real[], $18::text[],
                $19::text[], $20::text[], $21::int[])
         AS r(id, created_at, filename, sha256, width, height, model, inference_ms,
              detections, num_detections, max_confidence, api, model_version, source, passes)
    WHERE (SELECT count(*) FROM held) = cardinality($12::text[])
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), labels AS (
    INSERT INTO detection_labels (detection_id, label, created_at, boxes, max_confidence)
    SELECT l.* FROM unnest($13::uuid[], $14::text[], $15::timestamptz[], $16::int[],
                           $17::real[]) AS l(detection_id, label, created_at, boxes,
                                            max_confidence)
    WHERE l.detection_id IN (SELECT id FROM inserted)
    ON CONFLICT DO NOTHING
)
SELECT (SELECT count(*) FROM held) AS held, ARRAY(SELECT id FROM inserted) AS inserted
"""


def _insert_records_args(records: Sequence[Record], sha256s: Sequence[str]) -> list[Any]:
    """The parameters of ``_INSERT_RECORDS``: one array per column."""
    columns: list[list[Any]] = [[] for _ in range(11)]
    for r in records:
        row = (r.id, r.created_at, r.filename, r.sha256, r.width, r.height, r.model,
               r.inference_ms, json.dumps([d.to_json() for d in r.detections]),
               len(r.detections), max((d.confidence for d in r.detections), default=None))
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    labels: list[list[Any]] = [[] for _ in range(5)]
    for row in (row for r in records for row in _label_rows(r)):
        for column, value in zip(labels, row, strict=True):
            column.append(value)
    return [*columns, list(sha256s), *labels, [r.api for r in records],
            [r.model_version for r in records], [r.source for r in records],
            [r.passes for r in records]]


# Work done in the transaction that inserts records, given the records it inserted (not
# those that existed already): the event outbox (service/events/outbox.py).
InTransaction = Callable[[asyncpg.Connection, Sequence[Record]], Awaitable[None]]


async def save_records(pool: asyncpg.Pool, records: Sequence[Record],
                       images: Sequence[StoredImage] = (), *,
                       in_transaction: InTransaction | None = None) -> None:
    """Insert records and the original images they refer to, atomically.

    Idempotent: a record whose id exists already is left as it is; an image whose
    sha256 is stored already is not sent again (see :func:`store_images`). When every
    image is stored already (written ahead, or a repeated upload) this is one statement;
    otherwise one transaction that stores the missing images first. ``in_transaction``
    runs in the same transaction as the insert, with the records it inserted.
    """
    sha256s = sorted({img.sha256 for img in images})
    args = _insert_records_args(records, sha256s)
    by_id = {record.id: record for record in records}

    async def insert(conn: asyncpg.Connection) -> bool:
        row = await conn.fetchrow(_INSERT_RECORDS, *args)
        if row["held"] != len(sha256s):
            return False
        if in_transaction is not None:
            await in_transaction(conn, [by_id[i] for i in row["inserted"]])
        return True

    async def save(conn: asyncpg.Connection) -> None:
        if in_transaction is None and await insert(conn):
            return
        async with conn.transaction():
            if in_transaction is not None and await insert(conn):
                return
            await _store_images(conn, images)
            if not await insert(conn):  # cannot happen: _store_images holds them all
                raise RuntimeError("image(s) vanished while locked")

    await run(pool, save)


async def store_images(pool: asyncpg.Pool, images: Sequence[StoredImage]) -> list[str]:
    """Store images ahead of the records that will refer to them (while their detection
    runs); returns the sha256 of each image this call inserted, for
    :func:`delete_unreferenced_images` should the records never come."""
    async def store(conn: asyncpg.Connection) -> list[str]:
        async with conn.transaction():
            return await _store_images(conn, images)

    return await run(pool, store)


async def _store_images(conn: asyncpg.Connection, images: Sequence[StoredImage]) -> list[str]:
    """Insert the images not stored yet and return their sha256s; the bytes of an image
    stored already never leave this process.

    Every image ends up locked (``FOR KEY SHARE``, or the insert's own lock) until the
    transaction ends, so :func:`delete_unreferenced_images` cannot remove it between
    here and the commit of the records that refer to it.
    """
    # Locks are taken in sha256 order, so two requests sharing images cannot deadlock.
    wanted = {img.sha256: img for img in sorted(images, key=lambda img: img.sha256)}
    stored = {row["sha256"] for row in await conn.fetch(
        "SELECT sha256 FROM images WHERE sha256 = ANY($1::text[]) "
        "ORDER BY sha256 FOR KEY SHARE", list(wanted))}
    inserted = []
    for sha256, img in wanted.items():
        if sha256 in stored:
            continue
        # DO UPDATE rather than DO NOTHING: when another transaction stored it meanwhile,
        # the row is locked all the same. xmax = 0 on a row this statement inserted.
        if await conn.fetchval(
                "INSERT INTO images (sha256, content_type, size_bytes, data) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (sha256) DO UPDATE "
                "SET sha256 = EXCLUDED.sha256 RETURNING xmax = 0",
                sha256, img.content_type, len(img.data), img.data):
            inserted.append(sha256)
    return inserted


async def delete_unreferenced_images(pool: asyncpg.Pool, sha256s: Sequence[str]) -> list[str]:
    """Delete those of these images that no record refers to (stored ahead of a request
    that then failed); returns the sha256s deleted.

    The rows are locked first: a transaction saving a record for one of them holds it
    (:func:`_store_images`) and is waited for, and the delete's fresh snapshot then sees
    its record; one that comes later finds the image gone and stores it again.
    """
    async def delete(conn: asyncpg.Connection) -> list[str]:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM images WHERE sha256 = ANY($1::text[]) "
                               "ORDER BY sha256 FOR UPDATE", list(sha256s))
            rows = await conn.fetch(
                "DELETE FROM images i WHERE i.sha256 = ANY($1::text[]) "
                "AND NOT EXISTS (SELECT 1 FROM detections d WHERE d.sha256 = i.sha256) "
                "RETURNING i.sha256", list(sha256s))
        return [row["sha256"] for row in rows]

    return await run(pool, delete)


async def unreferenced_images(pool: asyncpg.Pool, *, older_than_s: float,
                              limit: int = 1000) -> list[str]:
    """Images stored more than ``older_than_s`` seconds ago that no record refers to:
    written ahead of a request that never saved its records (the process ended in
    between). Pass them to :func:`delete_unreferenced_images`, which checks again under
    a lock."""
    rows = await pool.fetch(
        "SELECT sha256 FROM images i "
        "WHERE i.created_at < now() - make_interval(secs => $1) "
        "AND NOT EXISTS (SELECT 1 FROM detections d WHERE d.sha256 = i.sha256) LIMIT $2",
        older_than_s, limit)
    return [row["sha256"] for row in rows]


# ---------------------------------------------------------------- reads

_COLUMNS = ("d.id, d.created_at, d.filename, d.sha256, d.width, d.height, d.model, "
            "d.inference_ms, d.detections, d.api, d.model_version, d.source, d.passes")


def _record(row: asyncpg.Record) -> Record:
    return Record(id=row["id"], created_at=row["created_at"], filename=row["filename"],
                  sha256=row["sha256"], width=row["width"], height=row["height"],
                  model=row["model"], inference_ms=round(float(row["inference_ms"]), 2),
                  detections=[Detection.from_json(d) for d in row["detections"]],
                  api=row["api"], model_version=row["model_version"], source=row["source"],
                  passes=row["passes"])


def record_from_row(row: asyncpg.Record) -> Record:
    """A record from a row with the columns of ``_COLUMNS`` (``export_queries``)."""
    return _record(row)


async def get_detection(pool: asyncpg.Pool, detection_id: UUID) -> Record:
    """One record by id; raises RecordNotFound."""
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM detections d WHERE d.id = $1",
                              detection_id)
    if row is None:
        raise RecordNotFound(f"no detection with id {detection_id}")
    return _record(row)


async def get_image(pool: asyncpg.Pool, detection_id: UUID) -> tuple[Record, StoredImage]:
    """A record and its stored original; raises RecordNotFound for either."""
    record = await get_detection(pool, detection_id)
    row = await pool.fetchrow("SELECT content_type, data FROM images WHERE sha256 = $1",
                              record.sha256)
    if row is None:
        raise RecordNotFound(f"the image of detection {detection_id} was not stored")
    return record, StoredImage(record.sha256, row["content_type"], bytes(row["data"]))


async def get_image_data(pool: asyncpg.Pool, sha256: str) -> StoredImage:
    """A stored original by its SHA-256; raises RecordNotFound."""
    row = await pool.fetchrow("SELECT content_type, data FROM images WHERE sha256 = $1", sha256)
    if row is None:
        raise RecordNotFound(f"the image {sha256} is not stored")
    return StoredImage(sha256, row["content_type"], bytes(row["data"]))


async def get_rendition(pool: asyncpg.Pool, key: str) -> tuple[str, bytes] | None:
    """A stored rendition (content type, bytes), or None."""
    row = await pool.fetchrow("SELECT content_type, data FROM renditions WHERE key = $1", key)
    return None if row is None else (row["content_type"], bytes(row["data"]))


async def store_rendition(pool: asyncpg.Pool, key: str, sha256: str, content_type: str,
                          data: bytes) -> None:
    """Keep a rendition of a stored image (a second one with the same key is dropped;
    none is kept when the image is gone meanwhile)."""
    await pool.execute(
        "INSERT INTO renditions (key, sha256, content_type, data) "
        "SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM images WHERE sha256 = $2) "
        "ON CONFLICT (key) DO NOTHING", key, sha256, content_type, data)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filter_sql(filters: HistoryFilter, arg: Callable[[Any], str]) -> tuple[str, list[str], str, str]:
    """The FROM clause, the WHERE conditions and the keyset columns (time, id) of the
    records ``filters`` select.

    With a label, records are found through the ``detection_labels`` index on
    (label, created_at DESC, detection_id DESC); without, through ``detections``.
    """
    if filters.label is not None:
        source = "detection_labels t JOIN detections d ON d.id = t.detection_id"
        where = [f"t.label = {arg(filters.label)}"]
        order_at, order_id, conf = "t.created_at", "t.detection_id", "t.max_confidence"
    else:
        source = "detections d"
        where = []
        order_at, order_id, conf = "d.created_at", "d.id", "d.max_confidence"
    if filters.min_confidence is not None:
        where.append(f"{conf} >= {arg(filters.min_confidence)}")
    if filters.since is not None:
        where.append(f"{order_at} >= {arg(filters.since)}")
    if filters.until is not None:
        where.append(f"{order_at} < {arg(filters.until)}")
    if filters.filename:
        where.append(f"d.filename ILIKE {arg('%' + _escape_like(filters.filename) + '%')}")
    if filters.model is not None:
        where.append(f"d.model = {arg(filters.model)}")
    if filters.reviewed is not None:
        # reviews: migrations/0010_reviews.sql (one row per reviewed record).
        where.append(("" if filters.reviewed else "NOT ")
                     + "EXISTS (SELECT 1 FROM reviews r WHERE r.detection_id = d.id)")
    return source, where, order_at, order_id


def _confidence_key(filters: HistoryFilter) -> str:
    """The ``least_confident`` order's key: the best confidence of the record (of the
    filtered label's boxes, with a label), records without boxes last."""
    column = "t.max_confidence" if filters.label is not None else "d.max_confidence"
    return f"coalesce({column}, {NO_BOX_CONFIDENCE})"


def query_args() -> tuple[list[Any], Callable[[Any], str]]:
    """The arguments of a statement being built, and ``arg(value)`` that appends one and
    returns its placeholder (``$1``, ``$2``, ...)."""
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    return args, arg


def history_query(filters: HistoryFilter, *, limit: int,
                  cursor: Cursor | None = None, order: str = "newest") -> tuple[str, list[Any]]:
    """The SQL and arguments of one history page (``limit + 1`` rows, to see if more exist).

    Newest first: with a label, rows are read in order from the ``detection_labels``
    index on (label, created_at DESC, detection_id DESC); without, from the
    (created_at, id) index of ``detections``. Either way a page costs about ``limit``
    index entries. ``least_confident``: ascending by the record's best confidence
    (:func:`_confidence_key`), then by id; the key is returned as the column ``_key``.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}")
    args, arg = query_args()
    source, where, order_at, order_id = filter_sql(filters, arg)
    if order == "least_confident":
        key = _confidence_key(filters)
        if cursor is not None:
            confidence = NO_BOX_CONFIDENCE if cursor.confidence is None else cursor.confidence
            where.append(f"({key}, {order_id}) > ({arg(confidence)}::real, {arg(cursor.id)})")
        sql = (f"SELECT {_COLUMNS}, {key} AS _key FROM {source}"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + f" ORDER BY {key}, {order_id} LIMIT {arg(limit + 1)}")
        return sql, args
    if cursor is not None:
        where.append(f"({order_at}, {order_id}) < ({arg(cursor.created_at)}, {arg(cursor.id)})")
    sql = (f"SELECT {_COLUMNS} FROM {source}"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + f" ORDER BY {order_at} DESC, {order_id} DESC LIMIT {arg(limit + 1)}")
    return sql, args


async def list_detections(pool: asyncpg.Pool, filters: HistoryFilter = HistoryFilter(), *,
                          limit: int = 50, cursor: Cursor | None = None,
                          order: str = "newest") -> Page:
    """One page of history, keyset-paginated: newest first on (created_at, id), or
    ``least_confident`` first (:func:`history_query`)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be within 1..{MAX_PAGE_SIZE}")
    sql, args = history_query(filters, limit=limit, cursor=cursor, order=order)
    rows = await pool.fetch(sql, *args)
    items = [_record(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        confidence = float(rows[limit - 1]["_key"]) if order == "least_confident" else None
        next_cursor = Cursor(last.created_at, last.id, confidence)
    return Page(items, next_cursor)


def _export_source(filters: HistoryFilter, arg: Callable[[Any], str]) -> str:
    """FROM and WHERE of the records an export takes (:func:`export_queries`)."""
    source, where, _, _ = filter_sql(replace(filters, min_confidence=None), arg)
    if filters.min_confidence is not None:
        conf = "t.max_confidence" if filters.label is not None else "d.max_confidence"
        where.append(f"(rv.detection_id IS NOT NULL OR {conf} >= {arg(filters.min_confidence)})")
    return (f"FROM {source} LEFT JOIN reviews rv ON rv.detection_id = d.id"
            + (f" WHERE {' AND '.join(where)}" if where else ""))


def export_queries(filters: HistoryFilter) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
    """The SQL and arguments of an export (``service/export``): the rows (oldest first;
    each record with its review and its stored image, NULLs when none) and a summary
    (``records``, and ``labels``: every label the export will write).

    The records are the history's under ``filters``, except that ``min_confidence``
    leaves no reviewed record out (its review is the truth); for an unreviewed record
    it is also the threshold of the boxes exported.
    """
    args, arg = query_args()
    rows = (f"SELECT s.*, i.content_type, i.data AS image FROM (SELECT {_COLUMNS}, "
            f"rv.boxes AS review_boxes, rv.reviewer, rv.reviewed_at "
            f"{_export_source(filters, arg)}) s "
            "LEFT JOIN images i ON i.sha256 = s.sha256 ORDER BY s.created_at, s.id")
    summary_args, summary_arg = query_args()
    body = _export_source(filters, summary_arg)
    threshold = summary_arg(filters.min_confidence or 0.0)
    summary = (f"WITH sel AS (SELECT d.detections, rv.boxes AS review_boxes {body}) "
               "SELECT (SELECT count(*) FROM sel) AS records, ARRAY("
               "SELECT b ->> 'label' FROM sel, jsonb_array_elements(sel.review_boxes) b "
               "UNION SELECT e ->> 'label' FROM sel, jsonb_array_elements(sel.detections) e "
               "WHERE sel.review_boxes IS NULL "
               f"AND (e ->> 'confidence')::real >= {threshold}::real) AS labels")
    return (rows, args), (summary, summary_args)
