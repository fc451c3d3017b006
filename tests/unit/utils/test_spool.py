"""The spool file: durable appends, recovery after a crash, in-order replay, removal."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import struct
from pathlib import Path

import pytest

from tests.tmpfs import MountRefused, run_as_namespace_root, tmpfs
from utils.spool import (
    HEADER,
    REJECTED_NAME,
    SPOOL_NAME,
    Spool,
    SpoolError,
    encode_frame,
)


def open_spool(directory: Path, max_bytes: int = 1 << 20) -> Spool:
    return Spool.open(directory, max_bytes=max_bytes)


async def read_all(spool: Spool) -> list[bytes]:
    payloads = []
    while (frame := await spool.read_next()) is not None:
        payloads.append(frame.payload)
        spool.mark_replayed(frame)
    return payloads


async def test_entries_survive_a_reopen_and_replay_in_order(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for i in range(5):
        await spool.append(f"entry {i}".encode(), items=i + 1)
    assert (spool.pending_entries, spool.pending_items) == (5, 15)
    spool.close()  # as if the process ended here

    spool = open_spool(tmp_path)
    assert (spool.pending_entries, spool.pending_items) == (5, 15)
    assert await read_all(spool) == [f"entry {i}".encode() for i in range(5)]
    assert spool.pending_entries == 0 and spool.pending_items == 0
    assert await spool.remove_if_drained()
    assert not (tmp_path / SPOOL_NAME).exists()
    spool.close()


async def test_entries_appended_during_replay_are_not_lost(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    await spool.append(b"a", 1)
    frame = await spool.read_next()
    assert frame is not None
    spool.mark_replayed(frame)
    await spool.append(b"b", 1)  # arrives before the spool is removed
    assert not await spool.remove_if_drained()
    assert await read_all(spool) == [b"b"]
    assert await spool.remove_if_drained()
    await spool.append(b"c", 1)  # a fresh file after removal
    assert await read_all(spool) == [b"c"]
    spool.close()


async def test_concurrent_appends_each_land_once(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    await asyncio.gather(*(spool.append(str(i).encode(), 1) for i in range(50)))
    assert sorted(int(p) for p in await read_all(spool)) == list(range(50))
    spool.close()


async def test_a_torn_last_append_is_truncated_in_place(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = open_spool(tmp_path)
    await spool.append(b"complete", 1)
    spool.close()
    good = (tmp_path / SPOOL_NAME).stat().st_size
    torn = encode_frame(b"x" * 100, 1)[:60]  # the crash cut the write short
    with open(tmp_path / SPOOL_NAME, "ab") as handle:
        handle.write(torn)
    inode = (tmp_path / SPOOL_NAME).stat().st_ino

    with caplog.at_level(logging.WARNING, "utils.spool"):
        spool = open_spool(tmp_path)
    assert spool.pending_entries == 1
    assert await read_all(spool) == [b"complete"]
    # In place: the same file, cut where the last complete frame ends; no copy made.
    assert (tmp_path / SPOOL_NAME).stat().st_ino == inode
    assert (tmp_path / SPOOL_NAME).stat().st_size == good
    assert not list(tmp_path.glob(f"{SPOOL_NAME}.bad-*"))
    assert f"incomplete last frame at offset {good}: 60 byte(s) dropped" in caplog.text
    await spool.append(b"next", 1)  # appends go on after the cut
    assert await read_all(spool) == [b"next"]
    spool.close()


async def test_a_damaged_length_is_not_taken_for_a_torn_tail(tmp_path: Path) -> None:
    """A header whose length was damaged to run past the end looks torn; the complete
    frames after it show it is not, and they are kept aside, not cut off."""
    spool = open_spool(tmp_path)
    for payload in (b"one", b"two", b"three"):
        await spool.append(payload, 1)
    spool.close()
    path = tmp_path / SPOOL_NAME
    data = bytearray(path.read_bytes())
    second = HEADER.size + len(b"one")
    data[second + 4:second + 8] = struct.pack("<I", 1 << 20)  # its length: past the end
    path.write_bytes(bytes(data))
    spool = open_spool(tmp_path)
    assert await read_all(spool) == [b"one"]
    aside = list(tmp_path.glob(f"{SPOOL_NAME}.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data[second:])
    spool.close()


async def test_a_cut_inside_the_header_is_an_incomplete_frame_too(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    await spool.append(b"complete", 1)
    spool.close()
    with open(tmp_path / SPOOL_NAME, "ab") as handle:
        handle.write(encode_frame(b"y" * 10, 1)[:7])
    spool = open_spool(tmp_path)
    assert await read_all(spool) == [b"complete"]
    assert not list(tmp_path.glob(f"{SPOOL_NAME}.bad-*"))
    spool.close()


def test_every_spool_file_is_private(tmp_path: Path) -> None:
    """Users' images: the spool, the lock and set-aside files are 0600, also those an
    older version left with other modes."""
    (tmp_path / SPOOL_NAME).write_bytes(encode_frame(b"old", 1))
    (tmp_path / f"{SPOOL_NAME}.bad-20260101T000000-0").write_bytes(b"left by 0.x")
    (tmp_path / REJECTED_NAME).write_bytes(b"")
    (tmp_path / "unrelated.txt").write_bytes(b"")
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    spool = open_spool(tmp_path)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in tmp_path.iterdir()}
    spool.close()
    assert modes == {SPOOL_NAME: 0o600, f"{SPOOL_NAME}.bad-20260101T000000-0": 0o600,
                     REJECTED_NAME: 0o600, ".lock": 0o600, "unrelated.txt": 0o644}


async def test_the_reserve_of_free_disk_space_is_kept(tmp_path: Path) -> None:
    """Measured on the real filesystem: a reserve above what is free refuses every
    append, and the spool says it is full."""
    probe = open_spool(tmp_path)
    free = probe.free_bytes()
    probe.close()
    spool = Spool.open(tmp_path, max_bytes=1 << 30, reserve_bytes=free + (1 << 30))
    assert spool.state == "full" and spool.room() == 0
    with pytest.raises(SpoolError, match="disk is full"):
        await spool.append(b"entry", 1)
    assert spool.pending_entries == 0 and not (tmp_path / SPOOL_NAME).exists()
    spool.close()
    spool = Spool.open(tmp_path, max_bytes=1 << 30, reserve_bytes=0)
    assert spool.state == "ok"
    await spool.append(b"entry", 1)
    spool.close()


async def test_damage_in_the_middle_keeps_the_bytes_aside(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    for payload in (b"one", b"two", b"three"):
        await spool.append(payload, 1)
    spool.close()
    path = tmp_path / SPOOL_NAME
    data = bytearray(path.read_bytes())
    second = HEADER.size + len(b"one")
    data[second + HEADER.size] ^= 0xFF  # flip a byte of the second payload: CRC mismatch
    path.write_bytes(bytes(data))

    spool = open_spool(tmp_path)
    assert await read_all(spool) == [b"one"]
    aside = list(tmp_path.glob(f"{SPOOL_NAME}.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data[second:])
    spool.close()


async def test_a_full_spool_refuses_and_stays_consistent(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=HEADER.size * 2 + 20)
    await spool.append(b"0123456789", 1)
    with pytest.raises(SpoolError, match="full"):
        await spool.append(b"0123456789abcdef", 1)
    assert spool.pending_entries == 1 and spool.state == "full"
    assert await read_all(spool) == [b"0123456789"]
    spool.close()


async def test_set_aside_and_frame_format(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    await spool.append(b"refused", 2)
    frame = await spool.read_next()
    assert frame is not None
    await spool.set_aside(frame, "the database refused it")
    spool.mark_replayed(frame)
    assert stat.S_IMODE((tmp_path / REJECTED_NAME).stat().st_mode) == 0o600
    rejected = (tmp_path / REJECTED_NAME).read_bytes()
    magic, length, items, _ = HEADER.unpack_from(rejected)
    assert (magic, length, items) == (b"YSP1", 7, 2) and rejected[HEADER.size:] == b"refused"
    assert struct.calcsize("<4sIII") == HEADER.size == 16
    spool.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    first = open_spool(tmp_path)
    with pytest.raises(SpoolError, match="in use"):
        open_spool(tmp_path)
    first.close()
    open_spool(tmp_path).close()


# ---------------------------------------------------------------- a real full disk

def full_disk_scenario(directory: str) -> None:
    """A 4 MiB tmpfs mounted on ``directory``: appends until the disk is full, a crash
    that leaves a torn frame filling it to the last byte, a reopen. Plain asserts: also
    run in a child process (:func:`run_as_namespace_root`)."""
    with tmpfs(Path(directory), 4096) as root:
        _check_full_disk(root)


def _check_full_disk(root: Path) -> None:
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect()
    logging.getLogger("utils.spool").addHandler(handler)
    try:
        asyncio.run(_fill_and_reopen(root / "spool", messages))
    finally:
        logging.getLogger("utils.spool").removeHandler(handler)


async def _fill_and_reopen(folder: Path, messages: list[str]) -> None:
    entry = os.urandom(256 << 10)  # incompressible, like an image
    spool = Spool.open(folder, max_bytes=1 << 30, reserve_bytes=0)
    stored = 0
    with pytest.raises(SpoolError) as refused:
        for _ in range(1000):
            await spool.append(entry, 1)
            stored += 1
    assert refused.value.errno == errno.ENOSPC, refused.value
    assert stored >= 4 and spool.pending_entries == stored
    assert spool.state == "full"
    # The refused append left nothing behind: the file ends on a frame boundary.
    frame_size = HEADER.size + len(entry)
    assert (folder / SPOOL_NAME).stat().st_size == stored * frame_size
    spool.close()

    # A crash in the middle of an append: a torn frame, and the disk full to the byte.
    torn = 0
    with open(folder / SPOOL_NAME, "ab", buffering=0) as handle:
        try:
            handle.write(encode_frame(entry, 1)[:HEADER.size + 10])
            torn = HEADER.size + 10
            while True:
                torn += handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    assert os.statvfs(folder).f_bavail == 0

    spool = Spool.open(folder, max_bytes=1 << 30, reserve_bytes=0)  # the restart
    assert spool.pending_entries == stored
    assert (folder / SPOOL_NAME).stat().st_size == stored * frame_size
    assert not list(folder.glob(f"{SPOOL_NAME}.bad-*"))
    assert any(f"incomplete last frame at offset {stored * frame_size}: {torn} byte(s) "
               "dropped" in m for m in messages), messages
    assert await read_all(spool) == [entry] * stored
    assert {stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()} == {0o600}
    spool.close()

    # Damage (not a torn tail) on a full disk: the copy aside finds no room, so the
    # bytes from the damaged frame on are dropped, and the log says so; the start goes on.
    with open(folder.parent / "filler", "wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
    damaged = 2 * frame_size
    with open(folder / SPOOL_NAME, "r+b") as handle:  # in place: needs no new blocks
        handle.seek(damaged + HEADER.size)
        handle.write(bytes(b ^ 0xFF for b in entry[:8]))
    messages.clear()
    spool = Spool.open(folder, max_bytes=1 << 30, reserve_bytes=0)
    assert spool.pending_entries == 2
    assert (folder / SPOOL_NAME).stat().st_size == damaged
    assert not list(folder.glob(f"{SPOOL_NAME}.bad-*"))
    assert any(f"damaged frame at offset {damaged}: {(stored - 2) * frame_size} byte(s)"
               in m and "dropped, not kept aside" in m for m in messages), messages
    spool.close()


def test_a_full_disk_is_refused_cleanly_and_a_torn_tail_on_it_recovers(
        tmp_path: Path) -> None:
    try:
        full_disk_scenario(str(tmp_path / "fs"))
    except MountRefused:
        run_as_namespace_root("tests.unit.utils.test_spool:full_disk_scenario",
                              str(tmp_path / "fs"))
