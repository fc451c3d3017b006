"""Tiled inference: the windows of a photo and the merge of their detections.

A large photo shrunk to the network's input (512) turns a 40-px traffic light into 16 px
or less. Tiling runs the network on the whole photo *and* on overlapping windows of it,
each window shrunk less, then merges the detections. Pure functions, no network here:
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

Merge (:func:`merge`): every pass's detections in photo pixels; a window's box that
touches one of its *inner* edges (an edge that is not the photo's border) is cut. A cut
box covered (``COVERED``) by an uncut box of the same class (any class when agnostic) is
dropped: the neighbouring window or the whole pass saw the light entire. Cut boxes left
that overlap each other across a shared edge are joined into their union (the highest
confidence kept): a light cut by a tile edge becomes one box. Then NMS over all passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.postprocess import nms

AUTO_MIN_RATIO = 2.0
AUTO_OVERLAP = 0.2
SPAN_SLACK = 1.15  # auto: one window spans an axis at most this many times its side
EDGE_PX = 2.0  # a box within this many network pixels of an inner edge is cut by it
COVERED = 0.6  # share of a cut box inside an uncut one that makes it a part of that one


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


def _cut_flags(rows: np.ndarray, window: Window, width: int, height: int, tol: float
               ) -> np.ndarray:
    """Whether each box (n, >=4, photo pixels) touches an inner edge of ``window``."""
    if window.whole or len(rows) == 0:
        return np.zeros(len(rows), bool)
    cut = np.zeros(len(rows), bool)
    if window.x1 > 0:
        cut |= rows[:, 0] <= window.x1 + tol
    if window.y1 > 0:
        cut |= rows[:, 1] <= window.y1 + tol
    if window.x2 < width:
        cut |= rows[:, 2] >= window.x2 - tol
    if window.y2 < height:
        cut |= rows[:, 3] >= window.y2 - tol
    return cut


def _inter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of (n, 4) against (m, 4) boxes: (n, m)."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return w.clip(0) * h.clip(0)


def _area(a: np.ndarray) -> np.ndarray:
    return ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])).clip(1e-9)


def merge(per_window: Sequence[np.ndarray], windows: Sequence[Window], width: int,
          height: int, net_size: int, iou_thres: float, agnostic: bool, max_det: int
          ) -> np.ndarray:
    """One photo's detections from all its windows, merged: (n, 6) x1, y1, x2, y2,
    confidence, class in photo pixels, most confident first (see the module's text)."""
    rows, cut = [], []
    for dets, window in zip(per_window, windows, strict=True):
        dets = np.asarray(dets, np.float64).reshape(-1, 6)
        tol = EDGE_PX * max(window.width, window.height) / net_size
        rows.append(dets)
        cut.append(_cut_flags(dets, window, width, height, tol))
    if not rows:
        return np.zeros((0, 6))
    all_rows, is_cut = np.concatenate(rows), np.concatenate(cut)
    if is_cut.any():
        all_rows = _resolve_cut(all_rows, is_cut, agnostic)
    if len(all_rows) == 0:
        return all_rows.reshape(0, 6)
    return nms(torch.from_numpy(all_rows), iou_thres, agnostic, max_det).numpy()


def _same_class(a: np.ndarray, b: np.ndarray, agnostic: bool) -> np.ndarray:
    if agnostic:
        return np.ones((len(a), len(b)), bool)
    return a[:, None, 5] == b[None, :, 5]


def _resolve_cut(rows: np.ndarray, is_cut: np.ndarray, agnostic: bool) -> np.ndarray:
    whole, parts = rows[~is_cut], rows[is_cut]
    if len(whole):
        covered = (_inter(parts, whole) / _area(parts)[:, None] >= COVERED) \
            & _same_class(parts, whole, agnostic)
        parts = parts[~covered.any(axis=1)]
    # Join the parts that overlap (transitively), most confident first.
    joined: list[np.ndarray] = []
    for part in parts[np.argsort(-parts[:, 4], kind="stable")]:
        for i, box in enumerate(joined):
            if _inter(part[None], box[None])[0, 0] > 0 and \
                    _same_class(part[None], box[None], agnostic)[0, 0]:
                joined[i] = np.array([min(box[0], part[0]), min(box[1], part[1]),
                                      max(box[2], part[2]), max(box[3], part[3]),
                                      box[4], box[5]])
                break
        else:
            joined.append(part.copy())
    return np.concatenate([whole, np.array(joined).reshape(-1, 6)])
