"""The YOLO loss: CIoU against hand-computed values, target assignment, and its gradient."""

from __future__ import annotations

import math

import pytest
import torch

from model.train.loss import LayerInfo, YoloLoss, assign_targets, bbox_ciou


def test_ciou_of_identical_boxes_is_one() -> None:
    b = torch.tensor([[10.0, 20.0, 4.0, 8.0], [0.5, 0.5, 1.0, 3.0]])
    assert torch.allclose(bbox_ciou(b, b), torch.ones(2), atol=1e-5)


def test_ciou_matches_a_hand_computation() -> None:
    # box1: x 0..2, y 0..2 ; box2: x 1..4, y 0..2 (same height, wider)
    b1 = torch.tensor([[1.0, 1.0, 2.0, 2.0]])
    b2 = torch.tensor([[2.5, 1.0, 3.0, 2.0]])
    iou = 2.0 / (4 + 6 - 2)
    dist2, diag2 = 1.5 ** 2, 4.0 ** 2 + 2.0 ** 2
    v = 4 / math.pi ** 2 * (math.atan(3 / 2) - math.atan(1.0)) ** 2
    alpha = v / (1 - iou + v)
    expected = iou - dist2 / diag2 - alpha * v
    assert bbox_ciou(b1, b2).item() == pytest.approx(expected, abs=1e-5)


def test_ciou_of_far_apart_boxes_is_negative() -> None:
    b1 = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b2 = torch.tensor([[10.0, 0.0, 1.0, 1.0]])
    assert bbox_ciou(b1, b2).item() < -0.5


def _layer(scale: float = 1.0) -> LayerInfo:
    return LayerInfo(anchors=torch.tensor([[8.0, 24.0], [40.0, 6.0], [64.0, 64.0]]), stride=8,
                     scale_x_y=scale)


def test_assignment_picks_cell_and_anchors_by_shape_ratio() -> None:
    # image 1, class 4, centre (21, 13) px -> cell (2, 1) at stride 8, a tall 10 x 30 box
    t = torch.tensor([[1.0, 4.0, 21.0, 13.0, 10.0, 30.0]])
    a = assign_targets(t, _layer(), ny=8, nx=8, anchor_t=4.0)
    assert a.anchor.tolist() == [0]  # 40x6: 30/6 = 5 > 4; 64x64: 64/10 = 6.4 > 4
    assert (a.image.tolist(), a.gx.tolist(), a.gy.tolist(), a.cls.tolist()) == ([1], [2], [1], [4])
    assert torch.allclose(a.box, torch.tensor([[21 / 8 - 2, 13 / 8 - 1, 10 / 8, 30 / 8]]))


def test_assignment_uses_neighbour_cells_when_predictions_can_reach_them() -> None:
    t = torch.tensor([[0.0, 0.0, 21.0, 13.0, 10.0, 30.0]])  # frac x = .625, frac y = .625
    a = assign_targets(t, _layer(scale=2.0), ny=8, nx=8, anchor_t=4.0)
    cells = sorted(zip(a.gx.tolist(), a.gy.tolist()))
    assert cells == [(2, 1), (2, 2), (3, 1)]
    # offsets stay within what 2*sigmoid - 0.5 can produce
    assert float(a.box[:, :2].min()) > -0.5 and float(a.box[:, :2].max()) < 1.5


def _raw_for(target_px: tuple[float, float, float, float], layer: LayerInfo, nc: int,
             obj_logit: float) -> torch.Tensor:
    """A raw (1, na, 8, 8, 5+nc) map whose anchor-0 prediction decodes to ``target_px``."""
    out = torch.full((1, 3, 8, 8, 5 + nc), -12.0)
    cx, cy, w, h = (v / layer.stride for v in target_px)
    gx, gy = int(cx), int(cy)
    out[0, 0, gy, gx, 0] = math.log((cx - gx) / (1 - (cx - gx)))
    out[0, 0, gy, gx, 1] = math.log((cy - gy) / (1 - (cy - gy)))
    out[0, 0, gy, gx, 2] = math.log(w / (layer.anchors[0, 0].item() / layer.stride))
    out[0, 0, gy, gx, 3] = math.log(h / (layer.anchors[0, 1].item() / layer.stride))
    out[0, 0, gy, gx, 4] = obj_logit
    out[0, 0, gy, gx, 5 + 2] = 12.0
    return out


def test_perfect_prediction_has_small_loss_and_worse_predictions_larger() -> None:
    layer = _layer()
    loss = YoloLoss([layer], num_classes=3, img_size=64)
    t = torch.tensor([[0.0, 2.0, 21.0, 13.0, 10.0, 30.0]])
    good = _raw_for((21.0, 13.0, 10.0, 30.0), layer, 3, obj_logit=12.0)
    total, parts = loss([good], t)
    assert parts[0].item() < 1e-4 and parts[2].item() < 1e-4 and parts[1].item() < 1e-3
    shifted = _raw_for((23.0, 15.5, 14.0, 22.0), layer, 3, obj_logit=12.0)
    wrong_class = good.clone()
    wrong_class[0, 0, 1, 2, 5 + 2], wrong_class[0, 0, 1, 2, 5 + 0] = -12.0, 12.0
    assert loss([shifted], t)[1][0] > parts[0] + 0.01
    assert loss([wrong_class], t)[1][2] > parts[2] + 1.0


def test_gradient_step_reduces_the_loss() -> None:
    torch.manual_seed(0)
    layer = _layer(scale=2.0)
    loss = YoloLoss([layer], num_classes=3, img_size=64)
    t = torch.tensor([[0.0, 1.0, 21.0, 13.0, 10.0, 30.0], [0.0, 0.0, 45.0, 40.0, 30.0, 12.0]])
    raw = (torch.randn(1, 3, 8, 8, 8) * 0.1).requires_grad_(True)
    first, _ = loss([raw], t)
    opt = torch.optim.Adam([raw], lr=0.1)
    for _ in range(20):
        value, _ = loss([raw], t)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert loss([raw], t)[0].item() < 0.5 * first.item()


def test_no_targets_gives_objectness_loss_only() -> None:
    loss = YoloLoss([_layer()], num_classes=3, img_size=64)
    total, parts = loss([torch.zeros(2, 3, 8, 8, 8)], torch.zeros((0, 6)))
    assert parts[0] == 0 and parts[2] == 0 and parts[1] > 0
    assert total.item() == pytest.approx(2 * parts[1].item(), rel=1e-6)
