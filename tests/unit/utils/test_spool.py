"""The spool file: durable appends, recovery after a crash, in-order replay, removal."""

from __future__ import annotations

import asyncio
import stat
import struct
from pathlib import Path

import pytest

from utils.spool import HEADER, REJECTED_NAME, SPOOL_NAME, Spool, SpoolError, encode_frame


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


async def test_a_torn_last_append_is_moved_aside_not_replayed(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    await spool.append(b"complete", 1)
    spool.close()
    torn = encode_frame(b"x" * 100, 1)[:60]  # the crash cut the write short
    with open(tmp_path / SPOOL_NAME, "ab") as handle:
        handle.write(torn)

    spool = open_spool(tmp_path)
    assert spool.pending_entries == 1
    assert await read_all(spool) == [b"complete"]
    aside = list(tmp_path.glob(f"{SPOOL_NAME}.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn
    # Users' images: every spool file is private, set-aside ones included.
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in (aside[0], tmp_path / SPOOL_NAME)} \
        == {aside[0].name: 0o600, SPOOL_NAME: 0o600}
    await spool.append(b"next", 1)  # appends go on after the cut
    assert await read_all(spool) == [b"next"]
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
    assert spool.pending_entries == 1
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
