"""Tests for model.postprocess, against brute-force numpy reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.postprocess import box_iou, non_max_suppression, scale_boxes, xywh2xyxy
from model.preprocess import letterbox


def _iou_reference(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two corner boxes, written out long-hand."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms_reference(pred: np.ndarray, conf_thres: float, iou_thres: float, agnostic: bool,
                   max_det: int) -> np.ndarray:
    """Greedy NMS for one image, one box at a time, in float64."""
    candidates = []
    for row in pred:
        cx, cy, w, h, obj = row[:5]
        scores = obj * row[5:]
        cls = int(np.argmax(scores))
        if scores[cls] > conf_thres:
            candidates.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores[cls], cls))
    candidates.sort(key=lambda det: -det[4])  # stable: ties keep anchor order
    kept: list[tuple] = []
    for det in candidates:
        if len(kept) == max_det:
            break
        if all(_iou_reference(np.array(det[:4]), np.array(k[:4])) <= iou_thres
               for k in kept if agnostic or k[5] == det[5]):
            kept.append(det)
    return np.array(kept, dtype=np.float64).reshape(-1, 6)


def _random_pred(rng: np.random.Generator, batch: int, anchors: int, nc: int,
                 extent: float = 200.0, sizes: tuple[float, float] = (8.0, 60.0)) -> np.ndarray:
    """Clustered boxes, so plenty of them overlap; some stick out past 0 (negative x1/y1)."""
    pred = np.empty((batch, anchors, 5 + nc), np.float32)
    pred[..., 0:2] = rng.uniform(-10, extent, (batch, anchors, 2))
    pred[..., 2:4] = rng.uniform(*sizes, (batch, anchors, 2))
    pred[..., 4] = rng.uniform(0, 1, (batch, anchors))
    pred[..., 5:] = rng.uniform(0, 1, (batch, anchors, nc))
    return pred


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_brute_force(agnostic: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = _random_pred(rng, batch=2, anchors=400, nc=4)
    out = non_max_suppression(torch.from_numpy(pred), conf_thres=0.25, iou_thres=0.45,
                              agnostic=agnostic)
    assert len(out) == 2
    for image_pred, dets in zip(pred, out, strict=True):
        expected = _nms_reference(image_pred.astype(np.float64), 0.25, 0.45, agnostic, 300)
        assert dets.shape == expected.shape and dets.shape[0] > 10
        np.testing.assert_allclose(dets.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_nms_class_aware_keeps_more_than_agnostic() -> None:
    pred = torch.from_numpy(_random_pred(np.random.default_rng(3), 1, 400, 4))
    aware = non_max_suppression(pred, 0.2, 0.5)[0]
    agnostic = non_max_suppression(pred, 0.2, 0.5, agnostic=True)[0]
    assert aware.shape[0] > agnostic.shape[0]


@pytest.mark.parametrize("max_det", [1, 7])
def test_nms_max_det_keeps_the_most_confident(max_det: int) -> None:
    # Densely packed boxes: the most confident ones suppress many of their neighbours.
    pred = _random_pred(np.random.default_rng(4), 1, 300, 2, extent=40.0, sizes=(20.0, 24.0))
    dets = non_max_suppression(torch.from_numpy(pred), 0.1, 0.5, max_det=max_det)[0]
    expected = _nms_reference(pred[0].astype(np.float64), 0.1, 0.5, False, max_det)
    assert dets.shape == (max_det, 6)
    np.testing.assert_allclose(dets.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_nms_max_det_counts_kept_boxes_not_candidates() -> None:
    # Ten near-copies of one box outrank three separate boxes: max_det=3 must still give
    # the best copy plus the two best separate boxes.
    copies = [[50 + i * 0.1, 50, 20, 20, 0.95 - i * 0.01, 1.0] for i in range(10)]
    separate = [[150 + 40 * i, 50, 20, 20, 0.5 - i * 0.1, 1.0] for i in range(3)]
    pred = torch.tensor([copies + separate])
    dets = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.5, max_det=3)[0]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.95, 0.5, 0.4]))


def test_nms_output_sorted_and_above_threshold() -> None:
    pred = _random_pred(np.random.default_rng(5), 3, 300, 6)
    for dets in non_max_suppression(torch.from_numpy(pred), conf_thres=0.4):
        conf = dets[:, 4]
        assert (conf > 0.4).all()
        assert (conf[:-1] >= conf[1:]).all()
        assert ((dets[:, 5] >= 0) & (dets[:, 5] < 6)).all()


def test_nms_confidence_is_objectness_times_class_probability() -> None:
    pred = torch.tensor([[[50, 50, 20, 10, 0.8, 0.1, 0.5, 0.2]]])
    dets = non_max_suppression(pred, conf_thres=0.3)[0]
    torch.testing.assert_close(dets, torch.tensor([[40.0, 45.0, 60.0, 55.0, 0.4, 1.0]]))
    assert non_max_suppression(pred, conf_thres=0.45)[0].shape == (0, 6)


def test_nms_classes_do_not_suppress_each_other_with_negative_coordinates() -> None:
    # Identical boxes partly outside the image (negative corners), different classes.
    box = [-5.0, -5.0, 30.0, 30.0]
    pred = torch.tensor([[[*box, 0.9, 1.0, 0.0], [*box, 0.8, 0.0, 1.0],
                          [*box, 0.7, 1.0, 0.0]]])
    dets = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.5)[0]
    assert dets[:, 5].tolist() == [0.0, 1.0]
    assert non_max_suppression(pred, 0.1, 0.5, agnostic=True)[0].shape == (1, 6)


def test_nms_no_candidates_gives_empty_tensors() -> None:
    pred = torch.zeros((2, 50, 8))
    out = non_max_suppression(pred)
    assert [d.shape for d in out] == [(0, 6), (0, 6)]


def test_nms_drops_non_finite_boxes() -> None:
    pred = torch.tensor([[[float("nan"), 10, 5, 5, 0.9, 1.0],
                          [10, 10, float("inf"), 5, 0.9, 1.0],
                          [10, 10, 5, 5, 0.9, 1.0]]])
    dets = non_max_suppression(pred)[0]
    assert dets.shape == (1, 6) and torch.isfinite(dets).all()


def test_nms_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros((10, 8)))
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros((1, 10, 8)), iou_thres=1.5)
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros((1, 10, 8)), max_det=0)


def test_xywh2xyxy() -> None:
    boxes = torch.tensor([[10.0, 20.0, 4.0, 6.0], [0.0, 0.0, 2.0, 2.0]])
    expected = torch.tensor([[8.0, 17.0, 12.0, 23.0], [-1.0, -1.0, 1.0, 1.0]])
    torch.testing.assert_close(xywh2xyxy(boxes), expected)


def test_box_iou_matches_reference() -> None:
    rng = np.random.default_rng(6)
    corners = rng.uniform(0, 50, (12, 2))
    a = np.concatenate([corners[:7], corners[:7] + rng.uniform(1, 30, (7, 2))], axis=1)
    b = np.concatenate([corners[7:], corners[7:] + rng.uniform(1, 30, (5, 2))], axis=1)
    iou = box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    expected = np.array([[_iou_reference(x, y) for y in b] for x in a])
    np.testing.assert_allclose(iou, expected, rtol=1e-12)
    assert box_iou(torch.zeros((1, 4)), torch.zeros((1, 4))).item() == 0.0  # no 0/0


# --- scale_boxes -----------------------------------------------------------------------

@pytest.mark.parametrize("shape, size", [((300, 500), 256), ((500, 300), 256), ((90, 60), 320)])
def test_scale_boxes_inverts_letterbox_on_a_drawn_rectangle(shape: tuple[int, int],
                                                            size: int) -> None:
    img = np.zeros((*shape, 3), np.uint8)
    x1, y1, x2, y2 = shape[1] // 5, shape[0] // 4, shape[1] * 3 // 4, shape[0] * 4 // 5
    img[y1:y2, x1:x2] = 255
    boxed, ratio, pad = letterbox(img, size)
    ys, xs = np.nonzero(boxed[..., 0] > 127)
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
    restored = scale_boxes(found, ratio, pad, shape)
    np.testing.assert_allclose(restored[0], [x1, y1, x2, y2], atol=1.5 / min(ratio, 1) + 0.5)


def test_scale_boxes_exact_inverse_and_clipping() -> None:
    ratio, pad, shape = 0.5, (16.0, 4.0), (100, 200)
    original = np.array([[10.0, 20.0, 110.0, 90.0, 0.9, 2.0]])
    forward = original.copy()
    forward[:, [0, 2]] = forward[:, [0, 2]] * ratio + pad[0]
    forward[:, [1, 3]] = forward[:, [1, 3]] * ratio + pad[1]
    np.testing.assert_allclose(scale_boxes(forward, ratio, pad, shape), original)

    outside = torch.tensor([[0.0, 0.0, 500.0, 500.0]])
    torch.testing.assert_close(scale_boxes(outside, ratio, pad, shape),
                               torch.tensor([[0.0, 0.0, 200.0, 100.0]]))


def test_scale_boxes_does_not_modify_its_input() -> None:
    boxes = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    scale_boxes(boxes, 2.0, (1.0, 1.0), (50, 50))
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 10.0, 20.0, 20.0]]))
