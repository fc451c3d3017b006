"""The Darknet engine, standalone (it imports nothing from the service).

Its public face: :class:`~model.inference.Detector` (load a cfg + weights, detect in
decoded images) and :class:`~model.detection.Detection` (what it finds). Both are loaded
on first use, so that importing a light part (``model.formats``, ``model.detection``)
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.detection import Detection
    from model.inference import Detector

__all__ = ["Detection", "Detector"]


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from model.inference import Detector

        return Detector
    if name == "Detection":
        from model.detection import Detection

        return Detection
    raise AttributeError(f"module 'model' has no attribute {name!r}")
