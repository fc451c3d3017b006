"""Images we serve at a bounded size: history thumbnails and the annotated image of the
record page (``GET /detections/{id}/image?annotated=1``).

A rendition is made once and stored in PostgreSQL (``renditions``, keyed by what it
depends on: the image's SHA-256, the boxes, the size and the drawing code), so the next
request reads a small JPEG instead of decoding the original again. Making one is bounded
three ways:

- **size**: the original is decoded straight to about the target size where the format
  allows (Pillow's ``draft``: JPEG scales by 1/2, 1/4 or 1/8 in the DCT domain), then
  reduced to at most :data:`THUMB_SIDE` or :data:`DISPLAY_SIDE` pixels on its long side
  before the boxes are drawn (``model.draw.annotate``);
- **concurrency**: at most ``threads`` renditions at once, on a thread pool of their own
  (not the default executor, which the spool uses), and together at most
  :data:`RENDER_BUDGET_BYTES` of decoded pixels (from the record's width and height); a
  request waits for its place *before* it reads the original from the database, so
  waiting requests hold nothing;
- **repetition**: concurrent requests for the same rendition share one render.

So the memory a burst of requests for huge originals can take is about the budget (or one
decoded original larger than it), whatever the number of requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from PIL import Image, ImageOps

import db
import model.draw
from model.detection import Detection
from model.draw import annotate

log = logging.getLogger(__name__)

THUMB_SIDE = 320  # history cards (shown at about 240 px wide, 2x for dense screens)
DISPLAY_SIDE = 1280  # the record page
SIZES = {"thumb": THUMB_SIDE, "display": DISPLAY_SIDE}
QUALITY = {THUMB_SIDE: 80, DISPLAY_SIDE: 88}
RENDER_THREADS = 2
# Decoded bytes (RGB) of the originals being rendered at once: two 12-megapixel photos
# fit, one 7000x7000 PNG (147 MB) at a time. One image over the budget still runs, alone.
RENDER_BUDGET_BYTES = 256 * 2**20
FORMAT_VERSION = 1  # bump when the way renditions are made changes
BACKGROUND = (114, 114, 114)  # under transparent pixels (the letterbox grey of model/)


@dataclass(frozen=True)
class Rendition:
    content_type: str
    data: bytes


def render(data: bytes, detections: Sequence[Detection], width: int, height: int,
           side: int, quality: int) -> bytes:
    """A JPEG of the image at most ``side`` pixels on its long side, with ``detections``
    (in the coordinates of the ``width`` x ``height`` upright original) drawn by
    :func:`model.draw.annotate`. CPU-bound: run it in a thread."""
    try:
        image = Image.open(io.BytesIO(data))
    except (Image.UnidentifiedImageError, OSError):
        # A format Pillow cannot open in this process: OpenCV's full-size path.
        log.warning("rendition: Pillow cannot open the image; drawing it at full size")
        return annotate(data, detections, quality)
    with image:
        if max(image.size) <= side and not image.getexif().get(0x0112, 1) > 1 \
                and image.mode in ("RGB", "L") and image.format == "JPEG":
            return annotate(data, detections, quality)  # small already: as it is
        image.draft("RGB", (side, side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
        if image.mode not in ("RGB", "RGBA", "L", "LA"):  # palette, 16-bit: resize in RGB(A)
            image = image.convert("RGBA" if _has_alpha(image) else "RGB")
        # Reduce first (no full-size copies: a 7000x7000 RGB image is 147 MB), then
        # turn upright and flatten.
        image.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
        upright = ImageOps.exif_transpose(image) or image
        flat = _flatten(upright)
        flat.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=2.0)
        scale_x, scale_y = flat.width / width, flat.height / height
        scaled = [d.scaled(scale_x, scale_y, flat.width, flat.height) for d in detections]
        buffer = io.BytesIO()
        flat.save(buffer, format="BMP")  # lossless and fast for annotate to read back
    return annotate(buffer.getvalue(), scaled, quality)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with transparent pixels over :data:`BACKGROUND`."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _drawing_version() -> str:
    """Changes whenever ``model/draw.py`` or this format does: stored renditions made by
    other drawing code are not served."""
    source = Path(model.draw.__file__).read_bytes()
    return f"{FORMAT_VERSION}:{hashlib.sha256(source).hexdigest()[:16]}"


class _Budget:
    """A semaphore of weights: holders together at most ``capacity`` (one alone may hold
    more), and at most ``places`` of them."""

    def __init__(self, capacity: int, places: int) -> None:
        self._capacity = capacity
        self._places = places
        self._used = 0
        self._holders = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, weight: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._holders == 0 or (self._holders < self._places
                                               and self._used + weight <= self._capacity))
            self._used += weight
            self._holders += 1
        try:
            yield
        finally:
            async with self._changed:
                self._used -= weight
                self._holders -= 1
                self._changed.notify_all()


class Renditions:
    """Makes, stores and serves renditions (one per application)."""

    def __init__(self, pool: asyncpg.Pool, *, threads: int = RENDER_THREADS,
                 budget_bytes: int = RENDER_BUDGET_BYTES) -> None:
        self._pool = pool
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="rendition")
        self._places = _Budget(budget_bytes, threads)
        self._making: dict[str, asyncio.Future[Rendition]] = {}
        self._version = _drawing_version()
        self.made = 0  # renders run (for tests and logs)

    def key(self, record: db.Record, side: int, annotated: bool) -> str:
        boxes = [d.to_json() for d in record.detections] if annotated else []
        raw = json.dumps([self._version, record.sha256, side, QUALITY[side], boxes],
                         sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()

    async def get(self, record: db.Record, side: int, *, annotated: bool = True) -> Rendition:
        """The rendition of ``record`` (raises db.RecordNotFound without its image)."""
        key = self.key(record, side, annotated)
        stored = await db.get_rendition(self._pool, key)
        if stored is not None:
            return Rendition(*stored)
        making = self._making.get(key)
        if making is None:
            making = asyncio.ensure_future(self._make(key, record, side, annotated))
            self._making[key] = making
            making.add_done_callback(lambda _: self._making.pop(key, None))
        # shield: a client that leaves does not cancel the render the others wait for.
        return await asyncio.shield(making)

    async def _make(self, key: str, record: db.Record, side: int, annotated: bool) -> Rendition:
        weight = 3 * record.width * record.height  # RGB, decoded
        async with self._places.hold(weight):  # before the original is read: waiting is free
            image = await db.get_image_data(self._pool, record.sha256)
            detections = record.detections if annotated else []
            data = await asyncio.get_running_loop().run_in_executor(
                self._executor, render, image.data, detections, record.width,
                record.height, side, QUALITY[side])
            del image
        self.made += 1
        rendition = Rendition("image/jpeg", data)
        try:
            await db.store_rendition(self._pool, key, record.sha256, rendition.content_type,
                                     data)
        except db.UNAVAILABLE_ERRORS as exc:  # served all the same; stored next time
            log.warning("rendition not stored: %s: %s", type(exc).__name__, exc)
        return rendition

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@asynccontextmanager
async def renditions_context(pool: asyncpg.Pool, *,
                             threads: int = RENDER_THREADS) -> AsyncIterator[Renditions]:
    renditions = Renditions(pool, threads=threads)
    try:
        yield renditions
    finally:
        await asyncio.to_thread(renditions.close)
