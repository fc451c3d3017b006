"""Making detection records durable: in PostgreSQL, or in the local spool while it is away.

:meth:`RecordWriter.save` returns only once the records of a request are durable:
committed to PostgreSQL (with group commit, ``postgres.group_commit``, together with
the records of the requests saving at the same time, in one statement and one
transaction; each request waits for the end of the commit that holds its records), or — when the database is unreachable, or records are already
waiting in the spool (so that order is kept) — appended to the fsync'd spool
(:mod:`utils.spool`). :func:`records_context` opens the writer with its spool and
background tasks, and closes them. :meth:`RecordWriter.replay_forever` runs as a background task and
writes spooled entries to PostgreSQL in order, in batches of consecutive entries (one
transaction each), then deletes the spool. Record ids are made by the service and
inserts ignore ids that exist, so an entry replayed twice (a crash between its commit
and the spool's removal) is stored once. An entry the database refuses outright (not an
outage) is set aside, logged, and replay goes on.

A request's images are written while its detection runs
(:meth:`RecordWriter.images_ahead`) and deleted again if the request fails;
:meth:`RecordWriter.sweep_forever` deletes, much later, any that a process ending in
between left behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

import db
from service.database_health import DatabaseHealth
from settings import Config
from utils.spool import Frame, Spool, SpoolError

log = logging.getLogger(__name__)

REPLAY_INTERVAL_S = 1.0  # how often the spool is looked at while it is empty
REPLAY_BACKOFF_S = (0.5, 2.0)  # first and longest wait between tries while the database is away
REPLAY_BATCH_ENTRIES = 64  # spool entries per replay transaction
REPLAY_BATCH_BYTES = 16 << 20
GROUP_MAX_RECORDS = 64  # records per group commit at most
GROUP_GATHER_TURNS = 4  # event-loop turns a group waits for the rest of a worker batch
SWEEP_INTERVAL_S = 3600.0  # how often images that no record refers to are looked for
SWEEP_GRACE_S = 3600.0  # the least age of an image the sweep may delete


class StorageUnavailable(RuntimeError):
    """Neither the database nor the spool could take the records (-> 503)."""


# A spool entry: a short JSON part (the records, and each image's sha256, content type and
# size) then the images' raw bytes, back to back in that order::
#
#     b"YRE2" | u32 length of the JSON part | JSON | image 1 | image 2 | ...
#
# Entries written before this layout (one JSON document, images base64-encoded: a third
# larger) start with "{" and are still read.
ENTRY_MAGIC = b"YRE2"
ENTRY_HEAD = struct.Struct("<4sI")


def encode_entry(records: Sequence[db.Record], images: Sequence[db.StoredImage]) -> bytes:
    """One spool entry (the layout above)."""
    meta = json.dumps({
        "records": [record.to_json() for record in records],
        "images": [{"sha256": image.sha256, "content_type": image.content_type,
                    "size": len(image.data)} for image in images],
    }, separators=(",", ":")).encode("utf-8")
    return b"".join([ENTRY_HEAD.pack(ENTRY_MAGIC, len(meta)), meta,
                     *(image.data for image in images)])


def decode_entry(payload: bytes) -> tuple[list[db.Record], list[db.StoredImage]]:
    """Records and images of a spool entry; raises ValueError when it is not one."""
    try:
        if payload[:len(ENTRY_MAGIC)] == ENTRY_MAGIC:
            return _decode_binary(payload)
        if payload[:1] == b"{":
            return _decode_json(payload)
    except (KeyError, TypeError, ValueError, struct.error) as exc:
        raise ValueError(f"not a spool entry: {exc}") from exc  # binascii.Error: ValueError
    raise ValueError("not a spool entry: unknown layout")


def _decode_binary(payload: bytes) -> tuple[list[db.Record], list[db.StoredImage]]:
    _, meta_size = ENTRY_HEAD.unpack_from(payload)
    offset = ENTRY_HEAD.size + meta_size
    if offset > len(payload):
        raise ValueError("the JSON part runs past the entry")
    data = json.loads(payload[ENTRY_HEAD.size:offset])
    records = [db.Record.from_json(item) for item in data["records"]]
    images = []
    for item in data["images"]:
        size = int(item["size"])
        if size < 0 or offset + size > len(payload):
            raise ValueError("an image runs past the entry")
        images.append(db.StoredImage(str(item["sha256"]), str(item["content_type"]),
                                     payload[offset:offset + size]))
        offset += size
    if offset != len(payload):
        raise ValueError(f"{len(payload) - offset} byte(s) after the last image")
    return records, images


def _decode_json(payload: bytes) -> tuple[list[db.Record], list[db.StoredImage]]:
    """The layout of earlier versions: one JSON document, images base64-encoded."""
    data = json.loads(payload)
    records = [db.Record.from_json(item) for item in data["records"]]
    images = [db.StoredImage(str(item["sha256"]), str(item["content_type"]),
                             base64.b64decode(item["data"], validate=True))
              for item in data["images"]]
    return records, images


class ImagesAhead:
    """Images being written ahead of their records (:meth:`RecordWriter.images_ahead`)."""

    def __init__(self, task: asyncio.Task[list[str]] | None) -> None:
        self._task = task

    async def settled(self) -> list[str]:
        """Wait for the write to end; the sha256s it inserted (none when it failed)."""
        return [] if self._task is None else await self._task


class _Waiting:
    """A request's records waiting for their group commit, and how it ended: True
    (committed), False (the database is away: spool them) or the error to raise."""

    def __init__(self, records: Sequence[db.Record], images: Sequence[db.StoredImage],
                 outcome: asyncio.Future[bool]) -> None:
        self.records, self.images, self.outcome = records, images, outcome

    def resolve(self, outcome: bool | BaseException) -> None:
        if self.outcome.done():  # its request was cancelled
            return
        if isinstance(outcome, BaseException):
            self.outcome.set_exception(outcome)
        else:
            self.outcome.set_result(outcome)


class RecordWriter:
    """The one way records are stored by the service."""

    def __init__(self, pool: asyncpg.Pool, spool: Spool, *, write_timeout: float,
                 group_commit: bool = True, health: DatabaseHealth | None = None,
                 in_transaction: Callable[[], db.InTransaction | None] | None = None
                 ) -> None:
        """``health``: the service's one :class:`DatabaseHealth`, which the writes report
        into and :meth:`images_ahead` reads (default: one of the writer's own).
        ``in_transaction`` gives the work to do in every transaction that inserts
        records, requests' and replayed ones alike (the event outbox), or None."""
        self.pool = pool
        self._in_transaction = in_transaction
        self.spool = spool
        self.write_timeout = write_timeout
        self.group_commit = group_commit
        self.health = health if health is not None else DatabaseHealth(embedded=False)
        self.spooled_total = 0
        self.replayed_total = 0
        self.commits_total = 0  # commits of requests' records (not replays)
        self.committed_records_total = 0
        self._wake = asyncio.Event()
        self._group_queue: list[_Waiting] = []
        self._committer: asyncio.Task[None] | None = None

    def in_transaction(self) -> db.InTransaction | None:
        return None if self._in_transaction is None else self._in_transaction()

    def snapshot(self) -> dict[str, Any]:
        """Spool state, depth, room and totals for /readyz (``state``: see
        :attr:`utils.spool.Spool.state`)."""
        spool = self.spool
        return {"state": spool.state, "records": spool.pending_items,
                "entries": spool.pending_entries, "bytes": spool.pending_bytes,
                "room_bytes": spool.room(), "error": spool.last_error,
                "spooled_total": self.spooled_total, "replayed_total": self.replayed_total}

    @property
    def accepting(self) -> bool:
        """The spool can take records now (neither full nor failing)."""
        return self.spool.state == "ok"

    def collect(self) -> Iterator[Metric]:
        """The spool's figures as Prometheus metric families (read at each scrape)."""
        spool = self.spool
        yield GaugeMetricFamily("yolo_spool_records",
                                "Records waiting in the spool for the database",
                                value=spool.pending_items)
        yield GaugeMetricFamily("yolo_spool_bytes", "Bytes waiting in the spool",
                                value=spool.pending_bytes)
        yield GaugeMetricFamily("yolo_spool_capacity_bytes", "Spool size limit",
                                value=spool.max_bytes)
        yield GaugeMetricFamily("yolo_spool_room_bytes",
                                "Bytes the spool may still take (its limit, or the free "
                                "disk space above the reserve)", value=spool.room())
        yield CounterMetricFamily("yolo_spooled_records", "Records written to the spool",
                                  value=self.spooled_total)
        yield CounterMetricFamily("yolo_record_commits",
                                  "Commits of requests' records (a group commit is one)",
                                  value=self.commits_total)
        yield CounterMetricFamily("yolo_committed_records",
                                  "Requests' records committed to the database",
                                  value=self.committed_records_total)
        yield CounterMetricFamily("yolo_replayed_records",
                                  "Spooled records replayed into the database",
                                  value=self.replayed_total)

    async def save(self, records: Sequence[db.Record],
                   images: Sequence[db.StoredImage] = ()) -> str:
        """Make the records durable; return where: ``"database"`` or ``"spool"``.

        With group commit, the records join those of the requests saving at the same time
        (one worker batch, typically) and are committed with them in one statement; this
        returns once that commit has ended. When the database is away the records are
        spooled as if they had been saved alone.
        """
        if self.spool.pending_entries == 0:
            if self.group_commit:
                stored = await self._commit_in_group(records, images)
            else:
                stored = await self._commit_alone(records, images)
            if stored:
                return "database"
        try:
            await self.spool.append(encode_entry(records, images), len(records))
        except SpoolError as exc:
            log.error("cannot spool %d record(s): %s", len(records), exc)
            raise StorageUnavailable(
                f"the records could not be stored (database unavailable; spool: {exc})") from exc
        self.spooled_total += len(records)
        self._wake.set()
        return "spool"

    async def _commit_alone(self, records: Sequence[db.Record],
                            images: Sequence[db.StoredImage]) -> bool:
        """One request's records in their own commit; False when the database is away."""
        try:
            async with asyncio.timeout(self.write_timeout):
                await db.save_records(self.pool, records, images,
                                      in_transaction=self.in_transaction())
        except db.UNAVAILABLE_ERRORS as exc:
            await self._database_lost(exc)
            return False
        self.health.answered()
        self.commits_total += 1
        self.committed_records_total += len(records)
        return True

    async def _commit_in_group(self, records: Sequence[db.Record],
                               images: Sequence[db.StoredImage]) -> bool:
        """Queue the records for the next group commit and wait for its end: True once
        committed, False when the database is away (the caller spools them). An error
        the database raises about these records (not an outage) is raised here."""
        waiting = _Waiting(records, images, asyncio.get_running_loop().create_future())
        self._group_queue.append(waiting)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_groups(), name="group-commit")
        return await waiting.outcome

    async def _commit_groups(self) -> None:
        """Task: while records are queued, commit them in groups, one group at a time.

        A group is what queued up while the last commit ran, plus what joins within a few
        turns of the event loop (the other requests of the worker batch that woke the
        first one), up to ``GROUP_MAX_RECORDS`` records. Nothing waits for a timer: a
        lone request is committed at once.
        """
        group: list[_Waiting] = []
        try:
            while self._group_queue:
                for _ in range(GROUP_GATHER_TURNS):
                    await asyncio.sleep(0)
                group = self._take_group()
                outcomes = await self._commit_group(group)
                for waiting, outcome in zip(group, outcomes, strict=True):
                    waiting.resolve(outcome)
                group = []
        finally:
            self._committer = None
            for waiting in [*group, *self._group_queue]:  # cancelled (shutdown): spool them
                waiting.resolve(False)
            self._group_queue.clear()

    def _take_group(self) -> list[_Waiting]:
        queue = self._group_queue
        taken, count = 0, 0
        while taken < len(queue) and (taken == 0 or
                                      count + len(queue[taken].records) <= GROUP_MAX_RECORDS):
            count += len(queue[taken].records)
            taken += 1
        group, self._group_queue = queue[:taken], queue[taken:]
        return [w for w in group if not w.outcome.done()]  # a cancelled request drops out

    async def _commit_group(self, group: Sequence[_Waiting]) -> list[bool | BaseException]:
        """One transaction for every record of the group; when the database refuses it
        (not an outage), each request's records again alone, so that only the request
        at fault fails."""
        if not group:
            return []
        records = [record for waiting in group for record in waiting.records]
        images = [image for waiting in group for image in waiting.images]
        try:
            async with asyncio.timeout(self.write_timeout):
                await db.save_records(self.pool, records, images,
                                      in_transaction=self.in_transaction())
        except db.UNAVAILABLE_ERRORS as exc:
            await self._database_lost(exc)
            return [False] * len(group)
        except asyncpg.PostgresError as exc:
            if len(group) == 1:
                return [exc]
            return [outcome for waiting in group for outcome in await self._commit_group([waiting])]
        self.health.answered()
        self.commits_total += 1
        self.committed_records_total += len(records)
        return [True] * len(group)

    async def _database_lost(self, exc: BaseException) -> None:
        if self.health.lost(exc):
            log.error("database unavailable (%s: %s); spooling records to %s",
                      type(exc).__name__, exc, self.spool.path)
        await self._forget_connections()

    @asynccontextmanager
    async def images_ahead(self, images: Sequence[db.StoredImage]) -> AsyncIterator[ImagesAhead]:
        """Write a request's images to the database while its detection runs.

        The body runs the detection, then awaits :meth:`ImagesAhead.settled` and
        :meth:`save` s the records with the same images (which sends only those not
        stored yet). When the body fails, the images written ahead that no record refers
        to are deleted again (when it is cancelled, the write is too, and what it may have
        committed is left to :meth:`sweep`). Nothing is written ahead while the database
        is away or records wait in the spool: :meth:`save` then takes everything.
        """
        task = None
        if images and self.health.up and self.spool.pending_entries == 0:
            task = asyncio.create_task(self._store_ahead(images))
        ahead = ImagesAhead(task)
        try:
            yield ahead
        except asyncio.CancelledError:
            if task is not None:
                task.cancel()
            raise
        except BaseException:
            await self._discard(await ahead.settled())
            raise

    async def _store_ahead(self, images: Sequence[db.StoredImage]) -> list[str]:
        try:
            async with asyncio.timeout(self.write_timeout):
                return await db.store_images(self.pool, images)
        except (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            # save() tries again (and spools when the database is away)
            log.debug("images not written ahead: %s: %s", type(exc).__name__, exc)
            return []

    async def _discard(self, sha256s: Sequence[str]) -> None:
        if not sha256s:
            return
        try:
            async with asyncio.timeout(self.write_timeout):
                deleted = await db.delete_unreferenced_images(self.pool, sha256s)
        except (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("could not delete %d image(s) written ahead of a failed request: "
                        "%s: %s", len(sha256s), type(exc).__name__, exc)
            return
        log.debug("deleted %d image(s) written ahead of a failed request", len(deleted))

    async def sweep_forever(self, interval_s: float, grace_s: float) -> None:
        """Background task: every ``interval_s``, delete the images older than
        ``grace_s`` that no record refers to (a write-ahead whose request never got to
        delete it: the process ended, or the request was cancelled). The grace outlasts
        any request, so an image whose records are still coming is left alone."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep(grace_s)
            except (*db.UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
                log.info("image sweep skipped: %s: %s", type(exc).__name__, exc)

    async def sweep(self, grace_s: float) -> int:
        """One sweep (see :meth:`sweep_forever`); returns the images deleted."""
        deleted = 0
        while candidates := await db.unreferenced_images(self.pool, older_than_s=grace_s):
            gone = await db.delete_unreferenced_images(self.pool, candidates)
            deleted += len(gone)
            if len(gone) < len(candidates):  # the rest are referenced now: done for now
                break
        if deleted:
            log.info("deleted %d stored image(s) that no record refers to", deleted)
        return deleted

    # ------------------------------------------------------------- replay

    async def replay_forever(self) -> None:
        """Background task: replay the spool whenever it holds entries.

        Woken by each spooled entry; while the database stays away, it retries with
        back-off instead (new entries do not cut the wait short).
        """
        failures = 0
        while True:
            if failures:
                first, longest = REPLAY_BACKOFF_S
                await asyncio.sleep(min(first * 2 ** (failures - 1), longest))
            else:
                try:
                    async with asyncio.timeout(REPLAY_INTERVAL_S):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            if self.spool.pending_entries == 0:
                failures = 0
                continue
            try:
                await db.ping(self.pool, timeout=self.write_timeout)  # before reading entries
                await self.replay_pending()
            except db.UNAVAILABLE_ERRORS as exc:
                await self._forget_connections()
                failures += 1
                log.log(logging.INFO if failures == 1 else logging.DEBUG,
                        "database still unavailable (%s); %d spooled record(s) wait",
                        type(exc).__name__, self.spool.pending_items)
            else:
                failures = 0

    async def replay_pending(self) -> int:
        """Write every spooled entry to the database in order, then delete the spool.

        Entries go in batches (one transaction each). Returns the number of records
        replayed; raises one of ``db.UNAVAILABLE_ERRORS`` when the database goes away
        (the rest stays spooled).
        """
        replayed = 0
        while True:
            frames = await self.spool.read_batch(REPLAY_BATCH_ENTRIES, REPLAY_BATCH_BYTES)
            if not frames:
                if await self.spool.remove_if_drained():
                    break
                continue
            replayed += await self._replay(frames)
        if replayed:
            self.health.answered()
            log.info("replayed %d spooled record(s) into the database; spool removed",
                     replayed)
        return replayed

    async def _replay(self, frames: Sequence[Frame]) -> int:
        """Store consecutive entries in one transaction; an entry the database refuses
        (not an outage) is found by retrying them one by one, and set aside."""
        batch: list[Frame] = []
        records: list[db.Record] = []
        images: list[db.StoredImage] = []
        for frame in frames:
            try:
                entry_records, entry_images = decode_entry(frame.payload)
            except ValueError as exc:
                if batch:
                    break  # store what precedes it first
                await self.spool.set_aside(frame, str(exc))
                self.spool.mark_replayed(frame)
                return 0
            batch.append(frame)
            records += entry_records
            images += entry_images
        try:
            async with asyncio.timeout(self.write_timeout * max(1, len(batch) // 16)):
                await db.save_records(self.pool, records, images,
                                      in_transaction=self.in_transaction())
        except db.UNAVAILABLE_ERRORS:
            await self._forget_connections()
            raise
        except asyncpg.PostgresError as exc:
            if len(batch) > 1:
                return sum([await self._replay([frame]) for frame in batch])
            await self.spool.set_aside(batch[0], f"{type(exc).__name__}: {exc}")
            self.spool.mark_replayed(batch[0])
            return 0
        for frame in batch:
            self.spool.mark_replayed(frame)
        self.replayed_total += len(records)
        return len(records)

    async def _forget_connections(self) -> None:
        """After an outage every pooled connection is dead: reconnect on next use
        instead of finding that out one failed write at a time."""
        await self.pool.expire_connections()


@asynccontextmanager
async def records_context(config: Config, pool: asyncpg.Pool,
                          health: DatabaseHealth | None = None, *,
                          in_transaction: Callable[[], db.InTransaction | None] | None = None
                          ) -> AsyncIterator[RecordWriter]:
    """The service's record writer: its spool (records already in it are replayed first),
    the background task that replays the spool into PostgreSQL and the one that sweeps
    away images no record refers to. On exit the spool is emptied into the database if it
    answers, else kept for the next start."""
    spool = await asyncio.to_thread(Spool.open, config.storage.spool_dir,
                                    max_bytes=config.storage.spool_max_bytes,
                                    reserve_bytes=config.storage.spool_reserve_bytes)
    try:
        writer = RecordWriter(pool, spool, write_timeout=config.postgres.write_timeout,
                              group_commit=config.postgres.group_commit, health=health,
                              in_transaction=in_transaction)
        # Long after any request that could still save a record for the image.
        grace = max(SWEEP_GRACE_S, 4 * (config.server.request_timeout
                                         + config.postgres.write_timeout))
        tasks = [asyncio.create_task(writer.replay_forever(), name="spool-replay"),
                 asyncio.create_task(writer.sweep_forever(SWEEP_INTERVAL_S, grace),
                                     name="image-sweep")]
        try:
            yield writer
        finally:
            for task in reversed(tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await _final_replay(writer, config.postgres.close_timeout)
    finally:
        spool.close()


async def _final_replay(writer: RecordWriter, timeout: float) -> None:
    """On shutdown, empty the spool into the database if it answers; else keep it."""
    if writer.spool.pending_entries == 0:
        return
    try:
        async with asyncio.timeout(timeout):
            await writer.replay_pending()
    except db.UNAVAILABLE_ERRORS as exc:
        log.warning("%d record(s) stay in the spool (%s); they are replayed at the next "
                    "start", writer.spool.pending_items, type(exc).__name__)
