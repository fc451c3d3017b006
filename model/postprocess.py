"""Post-processing of raw YOLO output: confidence filtering, NMS and box rescaling."""

from __future__ import annotations

import cv2
import numpy as np
import torch

# Candidates kept per image (by confidence) before NMS, to bound its quadratic cost.
MAX_NMS_CANDIDATES = 30_000


def xywh2xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Convert (..., 4) centre/size boxes (cx, cy, w, h) to corners (x1, y1, x2, y2)."""
    half = boxes[..., 2:4] / 2
    return torch.cat((boxes[..., 0:2] - half, boxes[..., 0:2] + half), dim=-1)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (n, 4) and (m, 4) corner boxes, as an (n, m) tensor."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    union = area1[:, None] + area2[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny),
                       torch.zeros_like(inter))


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.3, iou_thres: float = 0.6,
                        agnostic: bool = False, max_det: int = 300) -> list[torch.Tensor]:
    """Filter raw detections and suppress overlapping boxes, image by image.

    Args:
        pred: (N, A, 5 + nc) engine output: cx, cy, w, h, objectness, class probabilities.
        conf_thres: keep boxes whose confidence (objectness * best class probability) is
            strictly greater than this.
        iou_thres: a box is suppressed when its IoU with a kept, more confident box (of
            the same class unless ``agnostic``) is strictly greater than this.
        agnostic: suppress across classes too.
        max_det: keep at most this many boxes per image.

    Each box gets its single best class. Returns one (n, 6) float tensor per image on
    ``pred``'s device: x1, y1, x2, y2, confidence, class id; sorted by confidence
    (highest first).
    """
    if pred.ndim != 3 or pred.shape[2] < 6:
        raise ValueError(f"pred must be (N, A, 5 + nc) with nc >= 1, got {tuple(pred.shape)}")
    if not 0.0 <= iou_thres <= 1.0:
        raise ValueError(f"iou_thres must be in [0, 1], got {iou_thres}")
    if not 0.0 <= conf_thres <= 1.0:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if max_det < 1:
        raise ValueError(f"max_det must be >= 1, got {max_det}")
    output = []
    for image_pred in pred:
        # Objectness bounds the confidence, so it is a cheap first filter.
        rows = image_pred[image_pred[:, 4] > conf_thres]
        conf, cls = (rows[:, 5:] * rows[:, 4:5]).max(dim=1)
        boxes = xywh2xyxy(rows[:, :4])
        keep = (conf > conf_thres) & torch.isfinite(boxes).all(dim=1) & torch.isfinite(conf)
        dets = torch.cat((boxes, conf[:, None], cls[:, None].to(boxes.dtype)), dim=1)[keep]
        if dets.shape[0] > MAX_NMS_CANDIDATES:
            dets = dets[dets[:, 4].topk(MAX_NMS_CANDIDATES).indices]
        if dets.shape[0]:
            dets = dets[_nms_indices(dets, iou_thres, agnostic, max_det)]
        output.append(dets)
    return output


def nms(dets: torch.Tensor, iou_thres: float, agnostic: bool = False,
        max_det: int = 300) -> torch.Tensor:
    """Greedy NMS of (n, 6) rows x1, y1, x2, y2, confidence, class: the kept rows, most
    confident first (as :func:`non_max_suppression` keeps them)."""
    if dets.shape[0] == 0:
        return dets
    return dets[_nms_indices(dets, iou_thres, agnostic, max_det)]


def _nms_indices(dets: torch.Tensor, iou_thres: float, agnostic: bool,
                 max_det: int) -> torch.Tensor:
    """Greedy NMS with OpenCV's ``cv2.dnn.NMSBoxes``; kept indices, most confident first."""
    order = torch.sort(dets[:, 4], descending=True, stable=True).indices
    array = dets[order].detach().to("cpu", torch.float64).numpy()
    boxes = array[:, :4].copy()
    if not agnostic:
        # Move each class to its own region so that boxes of different classes never
        # overlap: shift everything to non-negative coordinates first, then offset by
        # class id times the largest extent. (cv2.dnn.NMSBoxesBatched assumes
        # non-negative coordinates, which predicted boxes need not have.)
        boxes -= boxes.min()
        boxes += array[:, 5:6] * (boxes.max() + 1.0)
    rects = np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), axis=1)  # x, y, w, h
    # OpenCV wants positive float32 scores; ranks keep the exact order of the confidences
    # (no float32 rounding ties) and are exact in float32 up to 2**24 candidates.
    ranks = np.arange(len(array), 0, -1, dtype=np.float32)
    kept = cv2.dnn.NMSBoxes(rects, ranks, score_threshold=0.0, nms_threshold=float(iou_thres))
    kept = np.sort(np.asarray(kept, dtype=np.int64).reshape(-1))[:max_det]
    return order[torch.from_numpy(kept).to(order.device)]


def scale_boxes(boxes: torch.Tensor | np.ndarray, ratio: float, pad: tuple[float, float],
                original_shape: tuple[int, int]) -> torch.Tensor | np.ndarray:
    """Map (n, >=4) corner boxes from letterboxed to original-image pixels (undo ``letterbox``).

    ``ratio`` and ``pad`` (left, top) are what ``letterbox`` returned and
    ``original_shape`` is the original (height, width); boxes are clipped to the
    original image. Returns a new array/tensor of the input's kind; columns after the
    first four are copied unchanged.
    """
    height, width = original_shape
    out = boxes.clone() if isinstance(boxes, torch.Tensor) else np.array(boxes, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - pad[0]) / ratio
    out[:, [1, 3]] = (out[:, [1, 3]] - pad[1]) / ratio
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out
