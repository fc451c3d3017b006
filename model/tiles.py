"""Tiled inference: the windows of a photo and the merge of their detections.

A large photo shrunk to the network's input (512) turns a 40-px traffic light into 16 px
or less. Tiling runs the network on the whole photo *and* on overlapping windows of it,
each window shrunk less, then merges the detections. Pure functions (plain arithmetic,
no arrays, so the service's config may read a setting), no network here:
:meth:`model.inference.Detector.detect_tiled` runs the windows of a photo as one batch.

Settings (:func:`parse_tiles`; a model's ``tiles:`` and the request's ``tiles=``):

* ``off`` - the whole photo only (one pass);
* ``auto`` - the whole photo, plus, when its long side is at least ``AUTO_MIN_RATIO`` (2)
  times the network size, windows of side ``T = max(net, long / (2 - AUTO_OVERLAP))``:
  two windows along the long side overlapping by ``AUTO_OVERLAP`` (20%) of ``T``, so each
  is seen at 1.8 times the whole pass's resolution (never more than the photo's own
  pixels). Along the short side, one window spans it when it is at most ``SPAN_SLACK``
  (1.15) times ``T``, else windows of ``T`` overlap by at least 20%. 1280x960 at 512:
  2 x 2 windows of 711 (5 passes); 1920x1080: 2 x 1 of 1067 x 1080 (3); 4032x3024: 2 x 2
  of 2240 (5). Smaller photos: one pass, as ``off``;
* ``{size, overlap}`` (or the text ``SIZE:OVERLAP``, e.g. ``640:0.2``) - the whole photo
  plus windows of ``size`` photo pixels overlapping by ``overlap`` (0 <= overlap < 1) of
  it, whenever the photo is larger than ``size`` on either side.

The merge of the windows' detections is :mod:`model.tile_merge`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


AUTO_MIN_RATIO = 2.0
AUTO_OVERLAP = 0.2
SPAN_SLACK = 1.15  # auto: one window spans an axis at most this many times its side


@dataclass(frozen=True)
class TileSetting:
    """``mode`` is "off", "auto" or "fixed" (then ``size`` photo pixels, ``overlap``)."""

    mode: str = "off"
    size: int = 0
    overlap: float = AUTO_OVERLAP

    def __str__(self) -> str:
        return f"{self.size}:{self.overlap:g}" if self.mode == "fixed" else self.mode


OFF = TileSetting("off")
AUTO = TileSetting("auto")


def parse_tiles(value: object) -> TileSetting:
    """A tile setting from ``None`` (off), ``"off"``, ``"auto"``, ``"SIZE:OVERLAP"``, a
    mapping ``{size, overlap}`` or a :class:`TileSetting`; ValueError names what is wrong."""
    if value is None or isinstance(value, TileSetting):
        return value or OFF
    if isinstance(value, bool):
        raise ValueError(f"tiles must be off, auto or {{size, overlap}}, got {value!r}")
    if isinstance(value, Mapping):
        unknown = set(value) - {"size", "overlap"}
        if unknown or "size" not in value:
            raise ValueError("tiles must be off, auto or {size, overlap}: "
                             + (f"unknown key {sorted(unknown)[0]!r}" if unknown
                                else "size is missing"))
        return _fixed(value["size"], value.get("overlap", AUTO_OVERLAP))
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "auto"):
            return TileSetting(text)
        size, sep, overlap = text.partition(":")
        try:
            return _fixed(int(size), float(overlap) if sep else AUTO_OVERLAP)
        except ValueError as exc:
            raise ValueError(f"tiles must be off, auto or SIZE:OVERLAP (e.g. 640:0.2), got "
                             f"{value!r}: {exc}") from None
    raise ValueError(f"tiles must be off, auto or {{size, overlap}}, got {value!r}")


def _fixed(size: object, overlap: object) -> TileSetting:
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"tiles size must be an integer >= 32, got {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) \
            or not 0 <= overlap < 1:
        raise ValueError(f"tiles overlap must be a number in [0, 1), got {overlap!r}")
    return TileSetting("fixed", size, float(overlap))


@dataclass(frozen=True)
class Window:
    """A rectangle of the photo in its pixels, end exclusive; ``whole`` for the photo."""

    x1: int
    y1: int
    x2: int
    y2: int
    whole: bool = False

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1


def tile_side(width: int, height: int, net_size: int, setting: TileSetting) -> int:
    """The side of the windows for a ``width`` x ``height`` photo, 0 for none."""
    long_side = max(width, height)
    if setting.mode == "fixed":
        return setting.size if long_side > setting.size else 0
    if setting.mode == "auto" and long_side >= AUTO_MIN_RATIO * net_size:
        return max(net_size, math.ceil(long_side / (2 - setting.overlap)))
    return 0


def _spans(length: int, side: int, overlap: float, slack: float) -> list[tuple[int, int]]:
    """(start, end) of the windows along one axis of ``length`` pixels."""
    if length <= side * slack:
        return [(0, length)]
    step = side * (1 - overlap)
    n = math.ceil((length - side) / max(step, 1.0) - 1e-9) + 1
    starts = [round(i * (length - side) / (n - 1)) for i in range(n)]
    return [(x, min(x + side, length)) for x in starts]


def plan_windows(width: int, height: int, net_size: int,
                 setting: TileSetting = OFF) -> list[Window]:
    """The whole photo first, then the tiles (row by row) of ``setting``."""
    if width < 1 or height < 1 or net_size < 1:
        raise ValueError(f"need a positive photo and network size, got {width}x{height}, "
                         f"{net_size}")
    windows = [Window(0, 0, width, height, whole=True)]
    side = tile_side(width, height, net_size, setting)
    if side:
        slack = SPAN_SLACK if setting.mode == "auto" else 1.0
        columns = _spans(width, side, setting.overlap, slack)
        rows = _spans(height, side, setting.overlap, slack)
        windows += [Window(x1, y1, x2, y2) for y1, y2 in rows for x1, x2 in columns]
    return windows


def passes(width: int, height: int, net_size: int, setting: TileSetting = OFF) -> int:
    """How many forward passes a photo takes (1 without tiles)."""
    return len(plan_windows(width, height, net_size, setting))


def decode_long_side(width: int, height: int, net_size: int, setting: TileSetting = OFF
                     ) -> int:
    """The long side a photo must keep when decoded at a reduced scale so that every
    window is still seen at full resolution: ``net_size`` without tiles, else
    ``net_size * long / T``."""
    side = tile_side(width, height, net_size, setting)
    if not side:
        return net_size
    return math.ceil(net_size * max(width, height) / side)


def view_scale(window: Window, net_size: int) -> float:
    """Network pixels per photo pixel in ``window`` (the letterbox scale)."""
    return net_size / max(window.width, window.height)
