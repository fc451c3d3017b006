"""A durable local FIFO: an append-only file of entries, each fsync'd before it counts.

The service spools detection records here while PostgreSQL is away (see ``recorder``).
One file, ``<dir>/records.spool``; each entry is one frame::

    b"YSP1" | u32 payload length | u32 item count | u32 CRC-32 of the rest | payload

``append`` returns only after the frame and (when the file is new) the directory entry
are on disk. It refuses (:class:`SpoolError`) an entry that would take the file past
``max_bytes`` or leave less than ``reserve_bytes`` free on the spool's filesystem (its
real free space, ``os.statvfs``); a write the disk refuses half way is cut off again at
once, so a failed append leaves nothing behind. ``open`` scans the file: an incomplete
last frame (the file ends inside it and no valid frame follows: an append cut short by a
crash, whose request was never answered) is truncated in place, without a copy, so that
a full disk cannot stop a start; damage (a frame that does not check, followed by more)
is moved to
``records.spool.bad-<time>-<offset>`` and logged, never silently dropped. Every file
here is created 0600 (spooled records hold users' images), and files left by an older
version with other modes are made so at ``open``.

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
import stat
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
LOCK_NAME = ".lock"


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

    def __init__(self, directory: Path, *, max_bytes: int, lock: IO[bytes],
                 reserve_bytes: int = 0) -> None:
        self.directory = directory
        self.path = directory / SPOOL_NAME
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.last_error: str | None = None  # why the last append failed; None once one works
        self._refused = 0  # the size of the last frame refused for want of room
        self._lock_file = lock
        self._lock = asyncio.Lock()
        self._fd: int | None = None
        self._size = 0  # bytes fsync'd
        self._replayed = 0  # bytes replayed (the replay position)
        self._entries = 0  # entries after the replay position
        self._items = 0  # their items

    # ------------------------------------------------------------- opening

    @classmethod
    def open(cls, directory: Path, *, max_bytes: int, reserve_bytes: int = 0) -> Spool:
        """Open (or create) the spool in ``directory`` and recover what it holds.

        ``reserve_bytes``: free space on the spool's filesystem that appends leave alone.
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # held for the spool's life
        lock = _private(directory / LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise SpoolError(f"{directory} is in use by another process") from exc
            raise
        spool = cls(directory, max_bytes=max_bytes, lock=lock, reserve_bytes=reserve_bytes)
        try:
            _make_private(directory)
            spool._recover()
        except BaseException:
            spool.close()
            raise
        return spool

    def _recover(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            offset = 0
            while offset < size:
                header = os.pread(handle.fileno(), HEADER.size, offset)
                if len(header) < HEADER.size:
                    break
                length = HEADER.unpack(header)[1]
                if offset + HEADER.size + length > size:  # torn: do not read (or allocate)
                    break
                frame = _decode_at(os.pread(handle.fileno(), HEADER.size + length, offset), 0)
                if frame is None:
                    break
                self._entries += 1
                self._items += frame.items
                offset += frame.end
        if offset < size:
            self._cut_tail(offset, size)
        self._size = offset
        if self._entries:
            log.warning("spool %s holds %d record(s) in %d entr%s to replay", self.path,
                        self._items, self._entries, "y" if self._entries == 1 else "ies")
        elif self._size == 0:
            self.path.unlink()
            _fsync_dir(self.directory)

    def _cut_tail(self, offset: int, size: int) -> None:
        """Recover from the first frame at ``offset`` that cannot be read: truncated in
        place when it is the incomplete last one; else (damage) the bytes are first
        copied aside, which a full disk may refuse (then they are dropped, and the log
        says so)."""
        dropped = size - offset
        with open(self.path, "r+b") as handle:
            head = os.pread(handle.fileno(), min(dropped, HEADER.size), offset)
            incomplete = _incomplete_frame(head, dropped) and not _frame_inside(
                handle.fileno(), offset + 1, size)
            aside: Path | None = None
            kept_error: OSError | None = None
            if not incomplete:
                aside = self.directory / (f"{SPOOL_NAME}.bad-"
                                          f"{time.strftime('%Y%m%dT%H%M%S')}-{offset}")
                try:
                    _copy_range(handle.fileno(), offset, dropped, aside)
                except OSError as exc:
                    aside.unlink(missing_ok=True)
                    aside, kept_error = None, exc
            handle.truncate(offset)
            os.fsync(handle.fileno())
        if incomplete:
            log.warning("spool %s: incomplete last frame at offset %d: %d byte(s) dropped "
                        "(truncated in place; an append cut short by a crash or a full "
                        "disk, whose request was never answered)", self.path, offset, dropped)
        elif aside is not None:
            _fsync_dir(self.directory)
            log.error("spool %s: damaged frame at offset %d: %d byte(s) from there on "
                      "were moved to %s; the records in them were not replayed",
                      self.path, offset, dropped, aside)
        else:
            log.error("spool %s: damaged frame at offset %d: %d byte(s) from there on "
                      "were dropped, not kept aside (%s); the records in them are lost",
                      self.path, offset, dropped, kept_error)

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

    def free_bytes(self) -> int:
        """Bytes free for this process on the spool's filesystem (``os.statvfs``)."""
        stats = os.statvfs(self.directory)
        return stats.f_bavail * stats.f_frsize

    def room(self) -> int:
        """Bytes an append may add now: below ``max_bytes`` and above the reserve of
        free disk space, whichever is less (0 when full)."""
        try:
            free = self.free_bytes() - self.reserve_bytes
        except OSError:  # the directory is gone or unreadable: nothing can be written
            return 0
        return max(0, min(self.max_bytes - self._size, free))

    @property
    def state(self) -> str:
        """``ok``; ``full`` (no room: ``max_bytes`` or the disk's reserve reached); or
        ``failing`` (the last append failed for another reason, e.g. an I/O error)."""
        if self.room() < max(HEADER.size + MIN_ENTRY_BYTES, self._refused):
            return "full"
        return "failing" if self.last_error is not None else "ok"

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
            try:
                await asyncio.to_thread(self._check_room, len(frame))
                await asyncio.to_thread(self._write, frame)
            except OSError as exc:
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                self.last_error = None if full else str(exc)  # "full" shows in state
                self._refused = len(frame) if full else 0
                if isinstance(exc, SpoolError):
                    raise
                raise SpoolError(exc.errno, f"cannot write the spool: {exc}") from exc
            self.last_error, self._refused = None, 0
            self._size += len(frame)
            self._entries += 1
            self._items += items

    def _check_room(self, size: int) -> None:
        if self._size + size > self.max_bytes:
            raise SpoolError(errno.ENOSPC, f"the spool is full ({self.max_bytes} bytes)")
        free = self.free_bytes()
        if free - size < self.reserve_bytes:
            raise SpoolError(errno.ENOSPC, f"the spool's disk is full: {free} bytes free, "
                                           f"{self.reserve_bytes} kept in reserve")

    def _write(self, frame: bytes) -> None:
        created = self._fd is None and not self.path.exists()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != self._size:  # a cut-off below failed too
            os.ftruncate(self._fd, self._size)
        try:
            view = memoryview(frame)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            # Cut the part written off again (this frees space; it cannot fail for lack
            # of it), so the next append starts on a frame boundary.
            os.ftruncate(self._fd, self._size)
            raise
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
        length = min(length, self._size - offset - HEADER.size)  # damage: read no further
        data = os.pread(self._fd, HEADER.size + max(0, length), offset)
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


MIN_ENTRY_BYTES = 1 << 10  # below this much room the spool counts as full


def _incomplete_frame(head: bytes, remaining: int) -> bool:
    """The bytes at the cut are the start of a frame that the file ends inside of: too
    short for a header, or a header whose announced length runs past the end."""
    if remaining < HEADER.size:
        return MAGIC.startswith(head[:len(MAGIC)])
    magic, length, _, _ = HEADER.unpack_from(head)
    return magic == MAGIC and HEADER.size + length > remaining


TORN_SCAN_LIMIT = 64 << 20  # a tail longer than this is never taken for one torn append


def _frame_inside(fd: int, start: int, end: int) -> bool:
    """A complete, valid frame starts somewhere in ``[start, end)``: the bytes there are
    not one torn append (whose header's length was damaged, say), but more frames."""
    if end - start > TORN_SCAN_LIMIT:
        return True
    data = os.pread(fd, end - start, start)
    at = data.find(MAGIC)
    while at != -1:
        if _decode_at(data, at) is not None:
            return True
        at = data.find(MAGIC, at + 1)
    return False


def _copy_range(fd: int, offset: int, count: int, target: Path) -> None:
    """``count`` bytes of ``fd`` from ``offset`` into a new private file, fsync'd."""
    with _private(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "wb") as out:
        done = 0
        while done < count:
            chunk = os.pread(fd, min(count - done, 1 << 20), offset + done)
            if not chunk:
                break
            out.write(chunk)
            done += len(chunk)
        out.flush()
        os.fsync(out.fileno())


def _make_private(directory: Path) -> None:
    """Every spool file in ``directory`` 0600 (those of older versions were not all)."""
    for path in directory.iterdir():
        ours = path.name == LOCK_NAME or path.name.startswith((SPOOL_NAME, REJECTED_NAME))
        if ours and path.is_file() and stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)
            log.info("spool file %s made private (0600)", path)
