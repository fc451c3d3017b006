"""The one detection type: what the engine finds, what crosses the worker pipe, what a
record holds and what is drawn.

A :class:`Detection` is plain data (builtin ``str``, ``int`` and ``float`` fields), so it
pickles cheaply between processes; :meth:`Detection.to_json` gives the API's and the
database's shape, ``{"label", "class_id", "confidence", "box": {"x1", "y1", "x2", "y2"}}``,
with the box in the original image's pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BOX_KEYS = ("x1", "y1", "x2", "y2")


@dataclass(frozen=True, slots=True)
class Detection:
    """One object: its class, the model's confidence, and its box (pixels, x right, y down)."""

    label: str
    class_id: int
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def from_row(cls, row: tuple[float, ...] | list[float], names: list[str]) -> Detection:
        """From an NMS row ``x1, y1, x2, y2, confidence, class_id`` (rounded as the API
        reports it: confidence to 4 places, the box to 2)."""
        x1, y1, x2, y2, confidence, class_id = row
        return cls(label=names[int(class_id)], class_id=int(class_id),
                   confidence=round(float(confidence), 4), x1=round(float(x1), 2),
                   y1=round(float(y1), 2), x2=round(float(x2), 2), y2=round(float(y2), 2))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Detection:
        """The inverse of :meth:`to_json`; raises KeyError / TypeError / ValueError."""
        box = data["box"]
        return cls(label=str(data["label"]), class_id=int(data["class_id"]),
                   confidence=float(data["confidence"]),
                   **{key: float(box[key]) for key in BOX_KEYS})

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "class_id": self.class_id, "confidence": self.confidence,
                "box": {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}}

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.x1, self.y1, self.x2, self.y2

    def scaled(self, scale_x: float, scale_y: float, width: int, height: int) -> Detection:
        """The box multiplied by the scales and clipped to ``width`` x ``height``."""
        return Detection(self.label, self.class_id, self.confidence,
                         x1=round(min(self.x1 * scale_x, width), 2),
                         y1=round(min(self.y1 * scale_y, height), 2),
                         x2=round(min(self.x2 * scale_x, width), 2),
                         y2=round(min(self.y2 * scale_y, height), 2))
