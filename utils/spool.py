"""A durable local FIFO: an append-only file of entries, each fsync'd before it counts.

The service spools detection records here while PostgreSQL is away (see ``recorder``).
One file, ``<dir>/records.spool``; each entry is one frame::

    b"YSP1" | u32 payload length | u32 item count | u32 CRC-32 of the rest | payload

``append`` returns only after the frame and (when the file is new) the directory entry
are on disk. ``open`` scans the file: from the first frame that cannot be read on (a
torn append after a crash, whose request was never answered, or damage), the bytes are
moved to ``records.spool.bad-<time>`` and logged, never silently dropped.

Entries are read back in order from a replay position; ``remove_if_drained`` deletes the
file once every entry has been replayed. Appends and removal hold one lock; reads only
look at bytes that were already fsync'd. A lock file keeps two processes apart.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

MAGIC = b"YSP1"
HEADER = struct.Struct("<4sIII")  # magic, payload length, items, crc32
SPOOL_NAME = "records.spool"
REJECTED_NAME = "records.rejected"


class SpoolError(OSError):
    """The spool cannot take the entry (full, or the disk refused the write)."""


@dataclass(frozen=True)
class Frame:
    """One entry read back: its bytes, item count and place in the file."""

    offset: int
    end: int
    items: int
    payload: bytes


def encode_frame(payload: bytes, items: int) -> bytes:
    crc = zlib.crc32(struct.pack("<I", items) + payload)
    return HEADER.pack(MAGIC, len(payload), items, crc) + payload


def _decode_at(data: bytes | memoryview, offset: int) -> Frame | None:
    """The frame starting at ``offset`` of ``data``, or None if it is incomplete or bad."""
    if len(data) - offset < HEADER.size:
        return None
    magic, length, items, crc = HEADER.unpack_from(data, offset)
    end = offset + HEADER.size + length
    if magic != MAGIC or end > len(data):
        return None
    payload = bytes(data[offset + HEADER.size:end])
    if zlib.crc32(struct.pack("<I", items) + payload) != crc:
        return None
    return Frame(offset, end, items, payload)


def _private(path: Path, flags: int, mode: str) -> IO[bytes]:
    """``path`` opened with ``flags``, created 0600 (spooled records hold users' images)."""
    return os.fdopen(os.open(path, flags, 0o600), mode)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool file of one directory; create with :meth:`open` (blocking: use a thread)."""

    def __init__(self, directory: Path, *, max_bytes: int, lock: IO[bytes]) -> None:
        self.directory = directory
        self.path = directory / SPOOL_NAME
        self.max_bytes = max_bytes
        self._lock_file = lock
        self._lock = asyncio.Lock()
        self._fd: int | None = None
        self._size = 0  # bytes fsync'd
        self._replayed = 0  # bytes replayed (the replay position)
        self._entries = 0  # entries after the replay position
        self._items = 0  # their items

    # ------------------------------------------------------------- opening

    @classmethod
    def open(cls, directory: Path, *, max_bytes: int) -> Spool:
        """Open (or create) the spool in ``directory`` and recover what it holds."""
        directory.mkdir(parents=True, exist_ok=True)
        lock = open(directory / ".lock", "ab")  # noqa: SIM115 - held for the spool's life
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolError(f"{directory} is in use by another process") from exc
            raise
        spool = cls(directory, max_bytes=max_bytes, lock=lock)
        try:
            spool._recover()
        except BaseException:
            spool.close()
            raise
        return spool

    def _recover(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        offset = 0
        while offset < len(data):
            frame = _decode_at(data, offset)
            if frame is None:
                self._set_bad_tail(data, offset)
                break
            self._entries += 1
            self._items += frame.items
            offset = frame.end
        self._size = offset
        if self._entries:
            log.warning("spool %s holds %d record(s) in %d entr%s to replay", self.path,
                        self._items, self._entries, "y" if self._entries == 1 else "ies")
        elif self._size == 0:
            self.path.unlink()
            _fsync_dir(self.directory)

    def _set_bad_tail(self, data: bytes, offset: int) -> None:
        aside = self.directory / f"{SPOOL_NAME}.bad-{time.strftime('%Y%m%dT%H%M%S')}-{offset}"
        with _private(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "wb") as handle:
            handle.write(data[offset:])
            handle.flush()
            os.fsync(handle.fileno())
        with open(self.path, "r+b") as handle:
            handle.truncate(offset)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.directory)
        tail = len(data) - offset
        if tail < HEADER.size or _looks_torn(data, offset):
            log.warning("spool %s: an incomplete last entry (%d bytes, a write cut short by a "
                        "crash: its request was never answered) was moved to %s",
                        self.path, tail, aside)
        else:
            log.error("spool %s: %d unreadable bytes from offset %d were moved to %s; "
                      "records in them were not replayed", self.path, tail, offset, aside)

    # ------------------------------------------------------------- state

    @property
    def pending_entries(self) -> int:
        return self._entries

    @property
    def pending_items(self) -> int:
        return self._items

    @property
    def pending_bytes(self) -> int:
        return self._size - self._replayed

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_file is not None and not self._lock_file.closed:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()

    # ------------------------------------------------------------- writing

    async def append(self, payload: bytes, items: int) -> None:
        """Write one entry and fsync it; raises SpoolError when it cannot be stored."""
        frame = encode_frame(payload, items)
        async with self._lock:
            if self._size + len(frame) > self.max_bytes:
                raise SpoolError(errno.ENOSPC, f"the spool is full ({self.max_bytes} bytes)")
            try:
                await asyncio.to_thread(self._write, frame)
            except OSError as exc:
                raise SpoolError(exc.errno, f"cannot write the spool: {exc}") from exc
            self._size += len(frame)
            self._entries += 1
            self._items += items

    def _write(self, frame: bytes) -> None:
        created = self._fd is None and not self.path.exists()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != self._size:  # a failed write left bytes behind
            os.ftruncate(self._fd, self._size)
        view = memoryview(frame)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        if created:
            _fsync_dir(self.directory)

    # ------------------------------------------------------------- replaying

    async def read_next(self) -> Frame | None:
        """The entry at the replay position, or None when all have been replayed."""
        if self._replayed >= self._size:
            return None
        return await asyncio.to_thread(self._read_at, self._replayed)

    async def read_batch(self, max_entries: int, max_bytes: int) -> list[Frame]:
        """Up to ``max_entries`` consecutive entries (about ``max_bytes`` at most, always
        at least one) from the replay position; empty when all have been replayed."""
        return await asyncio.to_thread(self._read_batch, self._replayed, self._size,
                                       max_entries, max_bytes)

    def _read_batch(self, offset: int, size: int, max_entries: int,
                    max_bytes: int) -> list[Frame]:
        frames: list[Frame] = []
        total = 0
        while offset < size and len(frames) < max_entries and total < max_bytes:
            frame = self._read_at(offset)
            frames.append(frame)
            total += len(frame.payload)
            offset = frame.end
        return frames

    def _read_at(self, offset: int) -> Frame:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        header = os.pread(self._fd, HEADER.size, offset)
        length = HEADER.unpack(header)[1] if len(header) == HEADER.size else 0
        data = os.pread(self._fd, HEADER.size + length, offset)
        frame = _decode_at(data, 0)
        if frame is None:  # only fsync'd bytes are read, so this is damage on disk
            raise SpoolError(errno.EIO, f"{self.path}: unreadable entry at offset {offset}")
        return Frame(offset, offset + (frame.end - frame.offset), frame.items, frame.payload)

    def mark_replayed(self, frame: Frame) -> None:
        """The entry is in the database: move the replay position past it."""
        if frame.offset != self._replayed:
            raise ValueError("entries must be marked in order")
        self._replayed = frame.end
        self._entries -= 1
        self._items -= frame.items

    async def set_aside(self, frame: Frame, reason: str) -> None:
        """Keep an entry the database will never accept in ``records.rejected``."""
        log.error("spool entry at offset %d (%d records) set aside in %s: %s", frame.offset,
                  frame.items, self.directory / REJECTED_NAME, reason)
        await asyncio.to_thread(self._append_rejected, encode_frame(frame.payload, frame.items))

    def _append_rejected(self, frame: bytes) -> None:
        with _private(self.directory / REJECTED_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                      "ab") as handle:
            handle.write(frame)
            handle.flush()
            os.fsync(handle.fileno())

    async def remove_if_drained(self) -> bool:
        """Delete the file when every entry has been replayed; False if more arrived."""
        async with self._lock:
            if self._replayed < self._size:
                return False
            if self._size:
                await asyncio.to_thread(self._remove)
            self._size = self._replayed = 0
            return True

    def _remove(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)
        _fsync_dir(self.directory)


def _looks_torn(data: bytes, offset: int) -> bool:
    """A frame header whose announced length runs past the end of the file."""
    magic, length, _, _ = HEADER.unpack_from(data, offset)
    return magic == MAGIC and offset + HEADER.size + length > len(data)
