"""Detection metrics: matching detections to labels, precision / recall and AP at an IoU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (n, 4) against (m, 4) x1y1x2y2 boxes: (n, m)."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.clip(br - tl, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match_image(det: np.ndarray, gt_cls: np.ndarray, gt_boxes: np.ndarray,
                iou_thres: float = 0.5) -> np.ndarray:
    """True-positive flags for one image's detections (n, 6: x1y1x2y2, conf, cls).

    Detections are taken most confident first; each takes the unmatched label of its class
    with the highest IoU, if that IoU reaches ``iou_thres``.
    """
    tp = np.zeros(len(det), dtype=bool)
    if len(det) == 0 or len(gt_cls) == 0:
        return tp
    ious = iou_matrix(det[:, :4], gt_boxes)
    ious[det[:, 5][:, None].astype(np.int64) != gt_cls[None, :]] = -1.0
    used = np.zeros(len(gt_cls), dtype=bool)
    for i in np.argsort(-det[:, 4], kind="stable"):
        candidates = np.where(used, -1.0, ious[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_thres:
            used[j] = True
            tp[i] = True
    return tp


def average_precision(tp: np.ndarray, conf: np.ndarray, n_labels: int) -> float:
    """Area under the interpolated precision-recall curve (all points, as in VOC 2010+)."""
    if n_labels == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    order = np.argsort(-conf, kind="stable")
    hits = tp[order].astype(np.float64)
    tps = np.cumsum(hits)
    fps = np.cumsum(1.0 - hits)
    recall = tps / n_labels
    precision = tps / (tps + fps)
    r = np.concatenate(([0.0], recall, [recall[-1]]))
    p = np.concatenate(([1.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


@dataclass(frozen=True)
class ClassResult:
    """Scores of one class."""

    labels: int
    precision: float
    recall: float
    ap: float


class DetectionStats:
    """Accumulates matched detections over images; ``results`` gives per-class scores."""

    def __init__(self, num_classes: int, iou_thres: float = 0.5) -> None:
        self.num_classes = num_classes
        self.iou_thres = iou_thres
        self._tp: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._cls: list[np.ndarray] = []
        self._labels = np.zeros(num_classes, dtype=np.int64)
        self.images = 0

    def add(self, det: np.ndarray, gt_cls: np.ndarray, gt_boxes: np.ndarray) -> None:
        """Add one image: detections (n, 6: x1y1x2y2, conf, cls) and its labels."""
        det = np.asarray(det, dtype=np.float64).reshape(-1, 6)
        gt_cls = np.asarray(gt_cls, dtype=np.int64)
        self._tp.append(match_image(det, gt_cls, np.asarray(gt_boxes, np.float64).reshape(-1, 4),
                                    self.iou_thres))
        self._conf.append(det[:, 4])
        self._cls.append(det[:, 5].astype(np.int64))
        self._labels += np.bincount(gt_cls, minlength=self.num_classes)[:self.num_classes]
        self.images += 1

    def results(self, conf_thres: float) -> list[ClassResult]:
        """Per class: labels, precision and recall at ``conf_thres``, and AP."""
        tp = np.concatenate(self._tp) if self._tp else np.zeros(0, bool)
        conf = np.concatenate(self._conf) if self._conf else np.zeros(0)
        cls = np.concatenate(self._cls) if self._cls else np.zeros(0, np.int64)
        out = []
        for c in range(self.num_classes):
            mine = cls == c
            n = int(self._labels[c])
            ap = average_precision(tp[mine], conf[mine], n)
            kept = mine & (conf > conf_thres)
            n_det = int(kept.sum())
            hits = int(tp[kept].sum())
            precision = hits / n_det if n_det else float("nan")
            recall = hits / n if n else float("nan")
            out.append(ClassResult(labels=n, precision=precision, recall=recall, ap=ap))
        return out

    def mean_ap(self) -> float:
        """Mean of the per-class APs over classes that have labels."""
        aps = [r.ap for r in self.results(0.0) if r.labels > 0]
        return float(np.mean(aps)) if aps else float("nan")


# -- class-agnostic matching, box-size bands and colour (real-photo evaluation) ---------------

SIZE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<16", 0.0, 16.0), ("16-32", 16.0, 32.0), ("32-96", 32.0, 96.0), (">96", 96.0, np.inf))
# Bands of the label's long side at the network's view of the whole photo (issue 21).
VIEW_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<8", 0.0, 8.0), ("8-16", 8.0, 16.0), ("16-32", 16.0, 32.0), ("32-96", 32.0, 96.0),
    (">96", 96.0, np.inf))


def long_side(boxes: np.ndarray) -> np.ndarray:
    """Long side of (n, 4) x1y1x2y2 boxes."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def match_agnostic(det: np.ndarray, gt_boxes: np.ndarray, iou_thres: float = 0.5
                   ) -> np.ndarray:
    """For each detection (most confident first), the index of the label it matches
    regardless of class (IoU >= ``iou_thres``, each label used once), else -1."""
    det = np.asarray(det, np.float64).reshape(-1, 6)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    out = np.full(len(det), -1, dtype=np.int64)
    if len(det) == 0 or len(gt_boxes) == 0:
        return out
    ious = iou_matrix(det[:, :4], gt_boxes)
    used = np.zeros(len(gt_boxes), dtype=bool)
    for i in np.argsort(-det[:, 4], kind="stable"):
        candidates = np.where(used, -1.0, ious[i])
        j = int(np.argmax(candidates))
        if candidates[j] >= iou_thres:
            used[j] = True
            out[i] = j
    return out


def agnostic_stats(images: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   iou_thres: float = 0.5, band: tuple[float, float] | None = None
                   ) -> DetectionStats:
    """Class-agnostic statistics over (det, gt_cls, gt_boxes) triples, optionally limited
    to labels whose long side is in ``band`` = [low, high): a detection then counts when it
    matches such a label or, matching no label, when its own long side is in the band;
    detections matching a label outside the band are left out."""
    stats = DetectionStats(1, iou_thres)
    for det, _, gt_boxes in images:
        det = np.asarray(det, np.float64).reshape(-1, 6).copy()
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        if band is not None:
            gt_in = (long_side(gt_boxes) >= band[0]) & (long_side(gt_boxes) < band[1])
            matched = match_agnostic(det, gt_boxes, iou_thres)
            own = long_side(det[:, :4])
            keep = np.where(matched >= 0, gt_in[np.maximum(matched, 0)],
                            (own >= band[0]) & (own < band[1]))
            det, gt_boxes = det[keep], gt_boxes[gt_in]
        det[:, 5] = 0
        stats.add(det, np.zeros(len(gt_boxes), np.int64), gt_boxes)
    return stats


def colour_accuracy(images: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    class_colour: tuple[int, ...], conf_thres: float = 0.3,
                    iou_thres: float = 0.5) -> tuple[int, int, int]:
    """(found, colour right, class right) over the labels found class-agnostically by a
    detection above ``conf_thres``: how often the found light gets the right colour."""
    found = colour = exact = 0
    for det, gt_cls, gt_boxes in images:
        det = np.asarray(det, np.float64).reshape(-1, 6)
        det = det[det[:, 4] > conf_thres]
        matched = match_agnostic(det, gt_boxes, iou_thres)
        for i in np.where(matched >= 0)[0]:
            found += 1
            pred, true = int(det[i, 5]), int(gt_cls[matched[i]])
            colour += class_colour[pred] == class_colour[true]
            exact += pred == true
    return found, colour, exact
