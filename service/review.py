"""Reviews: the boxes a person says are in an image, stored beside the model's output.

A review is the whole truth for one record: its boxes (label and pixel box, and for a
box that confirms or relabels one of the model's the index of that detection), who
reviewed and when. An empty list means "nothing there". The model's detections are never
changed; reviewing again replaces the review (``migrations/0010_reviews.sql``).

:func:`parse_boxes` checks a review against its record (labels, image bounds) and
raises :class:`InvalidReview` (400 in ``service/web/errors.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import asyncpg

import db

MAX_BOXES = 1000  # per image
MAX_LABEL_LENGTH = 200


class InvalidReview(ValueError):
    """A review body that is malformed or does not fit its record."""


@dataclass(frozen=True)
class ReviewBox:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    detection: int | None = None  # the model's detection it confirms or relabels

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label,
                               "box": {"x1": self.x1, "y1": self.y1,
                                       "x2": self.x2, "y2": self.y2}}
        if self.detection is not None:
            out["detection"] = self.detection
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReviewBox:
        box = data["box"]
        return cls(str(data["label"]), float(box["x1"]), float(box["y1"]), float(box["x2"]),
                   float(box["y2"]), data.get("detection"))


@dataclass(frozen=True)
class Review:
    detection_id: UUID
    boxes: list[ReviewBox]
    reviewer: str | None
    reviewed_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"boxes": [b.to_json() for b in self.boxes], "reviewer": self.reviewer,
                "reviewed_at": self.reviewed_at.isoformat()}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise InvalidReview(f"{where}: must be a finite number, got {json.dumps(value)[:40]}")
    return float(value)


def parse_boxes(body: Any, *, width: int, height: int, labels: Sequence[str],
                detections: int) -> list[ReviewBox]:
    """The boxes of a review body ``{"boxes": [...]}`` for a record of ``width`` x
    ``height`` pixels with ``detections`` model boxes; ``labels`` are the labels allowed.

    Raises :class:`InvalidReview` naming the first problem.
    """
    if not isinstance(body, dict) or set(body) - {"boxes"} or "boxes" not in body:
        raise InvalidReview('the body must be a JSON object {"boxes": [...]}')
    items = body["boxes"]
    if not isinstance(items, list):
        raise InvalidReview("boxes: must be a list (empty: nothing in the image)")
    if len(items) > MAX_BOXES:
        raise InvalidReview(f"boxes: at most {MAX_BOXES} boxes per image, got {len(items)}")
    out: list[ReviewBox] = []
    seen: set[int] = set()
    for i, item in enumerate(items):
        where = f"boxes[{i}]"
        if not isinstance(item, dict) or not {"label", "box"} <= set(item) \
                or set(item) - {"label", "box", "detection"}:
            raise InvalidReview(f'{where}: must be {{"label": ..., "box": {{"x1", "y1", '
                                f'"x2", "y2"}}}} (and optionally "detection")')
        label = item["label"]
        if not isinstance(label, str) or label not in labels:
            shown = json.dumps(label)[:MAX_LABEL_LENGTH]
            raise InvalidReview(f"{where}.label: unknown label {shown}; known labels: "
                                f"{', '.join(labels)}")
        box = item["box"]
        if not isinstance(box, dict) or set(box) != {"x1", "y1", "x2", "y2"}:
            raise InvalidReview(f'{where}.box: must be {{"x1", "y1", "x2", "y2"}}')
        x1, y1, x2, y2 = (_number(box[k], f"{where}.box.{k}") for k in ("x1", "y1", "x2", "y2"))
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise InvalidReview(
                f"{where}.box: ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is not a box inside the "
                f"{width}x{height} image (0 <= x1 < x2 <= {width}, 0 <= y1 < y2 <= {height})")
        detection = item.get("detection")
        if detection is not None:
            if isinstance(detection, bool) or not isinstance(detection, int) \
                    or not 0 <= detection < detections:
                raise InvalidReview(f"{where}.detection: must be the index of one of the "
                                    f"record's {detections} detections")
            if detection in seen:
                raise InvalidReview(f"{where}.detection: detection {detection} is used twice")
            seen.add(detection)
        out.append(ReviewBox(label, x1, y1, x2, y2, detection))
    return out


def _review(row: asyncpg.Record) -> Review:
    return Review(row["detection_id"], [ReviewBox.from_json(b) for b in row["boxes"]],
                  row["reviewer"], row["reviewed_at"])


async def save_review(pool: asyncpg.Pool, detection_id: UUID, boxes: Sequence[ReviewBox],
                      reviewer: str | None) -> Review:
    """Store (or replace) the review of a record; raises ``db.RecordNotFound``."""
    row = await pool.fetchrow(
        "INSERT INTO reviews (detection_id, boxes, num_boxes, reviewer, reviewed_at) "
        "SELECT d.id, $2::jsonb, $3, $4, $5 FROM detections d WHERE d.id = $1 "
        "ON CONFLICT (detection_id) DO UPDATE SET boxes = EXCLUDED.boxes, "
        "num_boxes = EXCLUDED.num_boxes, reviewer = EXCLUDED.reviewer, "
        "reviewed_at = EXCLUDED.reviewed_at RETURNING *",
        detection_id, [b.to_json() for b in boxes], len(boxes), reviewer,
        datetime.now(timezone.utc))
    if row is None:
        raise db.RecordNotFound(f"no detection with id {detection_id}")
    return _review(row)


async def get_review(pool: asyncpg.Pool, detection_id: UUID) -> Review | None:
    """The review of a record, or None."""
    row = await pool.fetchrow("SELECT * FROM reviews WHERE detection_id = $1", detection_id)
    return None if row is None else _review(row)


async def reviewed_ids(pool: asyncpg.Pool, ids: Sequence[UUID]) -> set[UUID]:
    """Which of these records have a review."""
    rows = await pool.fetch("SELECT detection_id FROM reviews WHERE detection_id = ANY($1)",
                            list(ids))
    return {row["detection_id"] for row in rows}


async def delete_review(pool: asyncpg.Pool, detection_id: UUID) -> bool:
    """Remove a record's review (back to the model's output); whether there was one."""
    return await pool.fetchval("DELETE FROM reviews WHERE detection_id = $1 RETURNING true",
                               detection_id) is not None
