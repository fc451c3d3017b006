"""The merge of a tiled photo's detections (:mod:`model.tiles` plans the windows).

Merge (:func:`merge`): every pass's detections in photo pixels; a window's box that
touches one of its *inner* edges (an edge that is not the photo's border) is cut. A cut
box covered (``COVERED``) by an uncut box of the same class (any class when agnostic) is
dropped: the neighbouring window or the whole pass saw the light entire. Cut boxes left
that overlap each other across a shared edge are joined into their union (the highest
confidence kept): a light cut by a tile edge becomes one box. Then NMS over all passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.postprocess import nms
from model.tiles import Window

EDGE_PX = 2.0  # a box within this many network pixels of an inner edge is cut by it
COVERED = 0.6  # share of a cut box inside an uncut one that makes it a part of that one


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
