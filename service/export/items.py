"""One exported image: its boxes (the review's, else the model's at or above the
threshold), where they come from, its split, and its image file as trainers read it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import cv2
from PIL import Image

import db
from model.errors import ImageError
from model.preprocess import decode_image

VALID_SHARE = 0.1  # of the images (by their SHA-256: copies of one image share a split)
JPEG_QUALITY = 95
_ORIENTATION = 0x0112
_PASSED = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png")}


@dataclass(frozen=True)
class Box:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float | None  # None: drawn or confirmed by a person


@dataclass(frozen=True)
class ExportItem:
    record: db.Record
    boxes: list[Box]
    source: str  # "review" or "model"
    reviewer: str | None
    reviewed_at: datetime | None
    content_type: str | None  # None: the image was not kept
    image: bytes | None

    @property
    def split(self) -> str:
        return "valid" if int(self.record.sha256[:8], 16) / 2 ** 32 < VALID_SHARE else "train"

    def manifest(self, file: str | None) -> dict[str, Any]:
        """Its line in manifest.jsonl."""
        line: dict[str, Any] = {"id": str(self.record.id), "filename": self.record.filename,
                                "created_at": self.record.created_at.isoformat(),
                                "model": self.record.model, "source": self.source,
                                "boxes": len(self.boxes)}
        if self.source == "review":
            line["reviewer"] = self.reviewer
            line["reviewed_at"] = self.reviewed_at.isoformat() if self.reviewed_at else None
        if file is None:
            line["left_out"] = "the image was not kept (storage.store_images off)"
        else:
            line.update(file=file, split=self.split)
        return line


def _clip(box: Box, width: int, height: int) -> Box | None:
    x1, x2 = min(max(box.x1, 0.0), width), min(max(box.x2, 0.0), width)
    y1, y2 = min(max(box.y1, 0.0), height), min(max(box.y2, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return Box(box.label, x1, y1, x2, y2, box.confidence)


def item_from_row(row: asyncpg.Record, min_confidence: float | None) -> ExportItem:
    """An export row (``db.export_queries``) as an item."""
    record = db.record_from_row(row)
    if row["review_boxes"] is not None:
        boxes = [Box(b["label"], b["box"]["x1"], b["box"]["y1"], b["box"]["x2"],
                     b["box"]["y2"], None) for b in row["review_boxes"]]
        source = "review"
    else:
        boxes = [Box(d.label, d.x1, d.y1, d.x2, d.y2, d.confidence) for d in record.detections
                 if min_confidence is None or d.confidence >= min_confidence]
        source = "model"
    clipped = [c for b in boxes if (c := _clip(b, record.width, record.height)) is not None]
    data = row["image"]
    return ExportItem(record, clipped, source, row["reviewer"], row["reviewed_at"],
                      row["content_type"], None if data is None else bytes(data))


def image_file(data: bytes, width: int, height: int) -> tuple[bytes, str]:
    """The image as trainers read it, and its extension.

    A JPEG or PNG that is upright already (no EXIF turn), opaque and of the record's
    size goes as stored; any other (WebP, HEIC, a turned photo, transparency) is decoded
    as the detector decoded it (``model.preprocess``: upright, transparency on grey) and
    written as a JPEG, so that Darknet, which ignores EXIF, sees the boxes' pixels.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = "JPEG" if im.format == "MPO" else str(im.format)
            upright = im.getexif().get(_ORIENTATION, 1) == 1
            opaque = im.mode not in ("RGBA", "LA", "PA", "RGBa", "La") \
                and "transparency" not in im.info
            same = im.size == (width, height)
    except (OSError, ValueError, Image.DecompressionBombError):
        fmt, upright, opaque, same = "", False, False, False
    if fmt in _PASSED and upright and opaque and same:
        return data, _PASSED[fmt][1]
    pixels = decode_image(data)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ImageError("could not encode the image as JPEG")
    return encoded.tobytes(), "jpg"
