"""Images served at a bounded size (``service.renditions``): thumbnails and annotated
images are small, drawn where the boxes are, made once and stored; and a burst of
requests for a huge original keeps the real server's memory bounded."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

import db
from model.detection import Detection
from service import renditions
from service.web import keys
from settings import BASE_DIR, Config
from tests.service.test_shutdown import wait_ready, write_service_config

T0 = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
RSS_LIMIT_MB = 800


def big_photo(portrait: bytes, width: int, height: int) -> np.ndarray:
    """The test photo stretched to ``width`` x ``height`` (a real photo's texture, so the
    PNG is as large as a real one would be)."""
    image = cv2.imdecode(np.frombuffer(portrait, np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)


def make_record(data: bytes, width: int, height: int, detections: list[Detection]) -> tuple[
        db.Record, db.StoredImage]:
    sha256 = hashlib.sha256(data).hexdigest()
    record = db.Record(id=uuid.uuid4(), created_at=T0, filename="big.png", sha256=sha256,
                       width=width, height=height, model="m", inference_ms=1.0,
                       detections=detections)
    return record, db.StoredImage(sha256, "image/png", data)


def decoded(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    assert image.format == "JPEG"
    return image.convert("RGB")


async def test_thumbnail_and_display_sizes_are_bounded_and_stored(
        client: Any, portrait_jpeg: bytes) -> None:
    width, height = 3000, 2000
    photo = big_photo(portrait_jpeg, width, height)
    data = cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    box = Detection("stop", 1, 0.9, 600.0, 400.0, 2400.0, 1600.0)
    record, image = make_record(data, width, height, [box])
    pool = client.server.app[keys.db_key]
    await db.save_records(pool, [record], [image])
    made = client.server.app[keys.renditions_key]

    url = f"/detections/{record.id}/image"
    before = made.made
    thumb = await client.get(url + "?annotated=1&size=thumb")
    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
    thumb_body = await thumb.read()
    assert decoded(thumb_body).size == (320, 213)
    assert len(thumb_body) < 40_000, len(thumb_body)  # the original: len(data)
    display = decoded(await (await client.get(url + "?annotated=1")).read())
    assert display.size == (1280, 853)
    assert made.made == before + 2

    # The box is drawn where it is, scaled: its top edge (y = 400 / 2000 * 853 = 171)
    # differs from the plain thumbnail of the same size, the middle of the box does not.
    plain = decoded(await (await client.get(url + "?size=display")).read())
    drawn, clean = np.asarray(display, np.int16), np.asarray(plain, np.int16)
    edge = np.abs(drawn[170:173, 400:900] - clean[170:173, 400:900]).mean()
    inside = np.abs(drawn[400:420, 500:700] - clean[400:420, 500:700]).mean()
    assert edge > 40 and inside < 4, (edge, inside)

    # Made once: asked again (and concurrently), they come from the database.
    again = await asyncio.gather(*(client.get(url + "?annotated=1&size=thumb") for _ in range(4)))
    assert {await r.read() for r in again} == {thumb_body}
    assert made.made == before + 3
    stored = await pool.fetchval("SELECT count(*) FROM renditions WHERE sha256 = $1",
                                 record.sha256)
    assert stored == 3
    # The original is still served as it is.
    assert await (await client.get(url)).read() == data


async def test_bad_size_is_400(client: Any) -> None:
    response = await client.get(f"/detections/{uuid.uuid4()}/image?size=huge")
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_parameter"


def test_render_flattens_transparency_and_turns_exif_upright() -> None:
    rgba = Image.new("RGBA", (2000, 1000), (255, 0, 0, 0))  # transparent red
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    out = decoded(renditions.render(buffer.getvalue(), [], 2000, 1000, 320, 80))
    assert out.size == (320, 160)
    assert np.abs(np.asarray(out, np.int16) - renditions.BACKGROUND).max() < 6

    # A JPEG stored 200x100 with EXIF orientation 6 (turn 90 degrees) is 100x200 upright.
    landscape = Image.new("RGB", (2000, 1000), (0, 0, 255))
    exif = landscape.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    landscape.save(buffer, format="JPEG", exif=exif.tobytes())
    out = decoded(renditions.render(buffer.getvalue(), [], 1000, 2000, 320, 80))
    assert out.size == (160, 320)


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture
def service_config(test_config: Config, tmp_path: Path) -> Path:
    return write_service_config(test_config, tmp_path)


async def test_annotated_requests_for_a_huge_png_keep_the_server_memory_bounded(
        service_config: Path, db_pool: Any, portrait_jpeg: bytes, tmp_path: Path) -> None:
    side = 7000
    data = cv2.imencode(".png", big_photo(portrait_jpeg, side, side),
                        [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    # Eight records of the one image, each with other boxes: eight renditions to make.
    records = []
    for i in range(8):
        box = Detection("go", 0, 0.5 + i / 20, 500.0 + 100 * i, 500.0, 3000.0, 4000.0)
        record, image = make_record(data, side, side, [box])
        records.append(record)
    await db.save_records(db_pool, records, [image])

    port = yaml.safe_load(service_config.read_text())["server"]["port"]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "YOLO_CONFIG")}
    with open(tmp_path / "service.log", "wb") as log_file, subprocess.Popen(
            [sys.executable, "main.py", "--config", str(service_config)], cwd=BASE_DIR,
            env=env, stdout=log_file, stderr=subprocess.STDOUT) as process:
        try:
            await wait_ready(url, process, 120)
            idle = _rss_mb(process.pid, "VmRSS")
            samples: list[float] = []
            done = asyncio.Event()

            async def sample() -> None:
                while not done.is_set():
                    samples.append(_rss_mb(process.pid, "VmRSS"))
                    await asyncio.sleep(0.02)

            sampler = asyncio.create_task(sample())
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                async def get(record: db.Record) -> tuple[int, bytes]:
                    async with session.get(f"{url}/detections/{record.id}/image?annotated=1",
                                           timeout=aiohttp.ClientTimeout(total=300)) as r:
                        return r.status, await r.read()

                first = await asyncio.gather(*(get(r) for r in records))
                same = await asyncio.gather(*(get(records[0]) for _ in range(8)))
            elapsed = time.monotonic() - started
            done.set()
            await sampler
            peak = _rss_mb(process.pid, "VmHWM")  # the kernel's own high-water mark
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
    log_text = (tmp_path / "service.log").read_text(errors="replace")
    assert all(status == 200 for status, _ in first + same), log_text[-2000:]
    for _, body in first + same:
        assert max(decoded(body).size) == renditions.DISPLAY_SIDE
    assert len({body for _, body in first}) == 8
    print(f"\n7000x7000 PNG ({len(data) / 1e6:.0f} MB), 8 + 8 requests in {elapsed:.1f} s: "
          f"server RSS idle {idle:.0f} MB, max sampled {max(samples):.0f} MB, "
          f"VmHWM {peak:.0f} MB")
    assert peak < RSS_LIMIT_MB, (idle, max(samples), peak)
