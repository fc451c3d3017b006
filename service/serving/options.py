"""What one request asks of a model, as typed data: each option is one field here (None:
the model's configured value). The APIs' codecs build it from their own parameters."""

from __future__ import annotations

from dataclasses import dataclass

from model.tiles import TileSetting


@dataclass(frozen=True)
class DetectOptions:
    """A request's options; None: the model's setting."""

    conf_thres: float | None = None
    iou_thres: float | None = None
    agnostic: bool | None = None
    max_det: int | None = None
    tiles: TileSetting | None = None  # off or auto (model.tiles)
