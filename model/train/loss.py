"""YOLOv3 training loss: CIoU box loss, objectness BCE and class BCE.

Targets are assigned to every anchor whose shape is within ``anchor_t`` of the box shape
(width and height ratios), in the cell holding the box centre and, when the layer's
``scale_x_y`` lets predictions reach past their cell, in the nearest neighbouring cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Objectness weight per stride: small objects (fine grids) are the hardest.
_STRIDE_BALANCE = {8: 4.0, 16: 1.0, 32: 0.4}
_MAX_LOG_WH = 4.0  # clamp of the raw w/h logit before exp(), as far as training goes


@dataclass(frozen=True)
class LossConfig:
    """Loss gains and the anchor matching threshold."""

    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.1
    anchor_t: float = 4.0
    iou_ratio: float = 0.5  # objectness target = (1 - r) + r * IoU


@dataclass(frozen=True)
class LayerInfo:
    """What the loss needs to know about one yolo layer."""

    anchors: Tensor  # (na, 2) in input pixels
    stride: int
    scale_x_y: float


def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU of matching rows of two (n, 4) cx, cy, w, h box tensors."""
    b1x1, b1x2 = box1[:, 0] - box1[:, 2] / 2, box1[:, 0] + box1[:, 2] / 2
    b1y1, b1y2 = box1[:, 1] - box1[:, 3] / 2, box1[:, 1] + box1[:, 3] / 2
    b2x1, b2x2 = box2[:, 0] - box2[:, 2] / 2, box2[:, 0] + box2[:, 2] / 2
    b2y1, b2y2 = box2[:, 1] - box2[:, 3] / 2, box2[:, 1] + box2[:, 3] / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(min=0) * \
        (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(min=0)
    w1, h1 = box1[:, 2], box1[:, 3] + eps
    w2, h2 = box2[:, 2], box2[:, 3] + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    diag2 = cw ** 2 + ch ** 2 + eps
    dist2 = (box2[:, 0] - box1[:, 0]) ** 2 + (box2[:, 1] - box1[:, 1]) ** 2
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (dist2 / diag2 + v * alpha)


@dataclass(frozen=True)
class Assignment:
    """Targets matched to one layer: indices into (N, na, ny, nx) and the target boxes."""

    image: Tensor
    anchor: Tensor
    gy: Tensor
    gx: Tensor
    box: Tensor  # (n, 4): x, y offset from the cell corner, w, h; all in grid units
    cls: Tensor  # (n,)


def assign_targets(targets: Tensor, layer: LayerInfo, ny: int, nx: int,
                   anchor_t: float) -> Assignment:
    """Match targets (M, 6: image, class, cx, cy, w, h in input pixels) to one layer."""
    anchors = layer.anchors.to(targets) / layer.stride
    t = targets.clone()
    t[:, 2:6] /= layer.stride
    ratio = t[None, :, 4:6] / anchors[:, None, :]  # (na, M, 2)
    worst = torch.max(ratio, 1.0 / ratio).amax(dim=2)
    anchor_idx, target_idx = (worst < anchor_t).nonzero(as_tuple=True)
    matched = t[target_idx]
    gxy = matched[:, 2:4]
    cell = gxy.floor()
    frac = gxy - cell
    reach = (layer.scale_x_y - 1.0) / 2.0  # how far past its cell a prediction can go
    offsets = [torch.zeros_like(gxy)]
    keeps = [torch.ones_like(frac[:, 0], dtype=torch.bool)]
    if reach > 0:
        limits = torch.tensor([nx, ny], device=gxy.device)
        for axis in (0, 1):
            low = torch.zeros_like(gxy)
            low[:, axis] = -1
            keeps.append((frac[:, axis] < reach) & (cell[:, axis] > 0))
            offsets.append(low)
            high = torch.zeros_like(gxy)
            high[:, axis] = 1
            keeps.append((frac[:, axis] > 1 - reach) & (cell[:, axis] < limits[axis] - 1))
            offsets.append(high)
    cells, rows, anchor_rows = [], [], []
    for keep, offset in zip(keeps, offsets):
        cells.append(cell[keep] + offset[keep])
        rows.append(matched[keep])
        anchor_rows.append(anchor_idx[keep])
    cells_t = torch.cat(cells)
    rows_t = torch.cat(rows)
    gx = cells_t[:, 0].long().clamp(0, nx - 1)
    gy = cells_t[:, 1].long().clamp(0, ny - 1)
    box = torch.cat((rows_t[:, 2:4] - torch.stack((gx, gy), 1).to(rows_t), rows_t[:, 4:6]), 1)
    return Assignment(image=rows_t[:, 0].long(), anchor=torch.cat(anchor_rows), gy=gy, gx=gx,
                      box=box, cls=rows_t[:, 1].long())


class YoloLoss:
    """Callable loss over the raw outputs of all yolo layers of a net in training mode."""

    def __init__(self, layers: list[LayerInfo], num_classes: int, img_size: int,
                 config: LossConfig | None = None) -> None:
        self.layers = layers
        self.num_classes = num_classes
        self.config = config or LossConfig()
        # Objectness is averaged over every cell: keep its weight independent of image size.
        self.obj_gain = self.config.obj * (img_size / 640) ** 2 * 3 / len(layers)
        self.box_gain = self.config.box * 3 / len(layers)
        self.cls_gain = self.config.cls * 3 / len(layers)

    def __call__(self, outputs: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """Total loss (scaled by batch size) and a detached (box, obj, cls) breakdown."""
        device = outputs[0].device
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        for out, layer in zip(outputs, self.layers):
            n, na, ny, nx, _ = out.shape
            tobj = torch.zeros(out.shape[:4], device=device, dtype=out.dtype)
            if targets.shape[0]:
                a = assign_targets(targets, layer, ny, nx, self.config.anchor_t)
                if a.image.numel():
                    p = out[a.image, a.anchor, a.gy, a.gx]
                    s = layer.scale_x_y
                    pxy = torch.sigmoid(p[:, :2]) * s - (s - 1) / 2
                    anchors = layer.anchors.to(out) / layer.stride
                    pwh = torch.exp(p[:, 2:4].clamp(max=_MAX_LOG_WH)) * anchors[a.anchor]
                    ciou = bbox_ciou(torch.cat((pxy, pwh), 1), a.box)
                    lbox = lbox + (1.0 - ciou).mean()
                    r = self.config.iou_ratio
                    tobj[a.image, a.anchor, a.gy, a.gx] = \
                        (1.0 - r) + r * ciou.detach().clamp(min=0).to(tobj.dtype)
                    if self.num_classes > 1:
                        tcls = F.one_hot(a.cls, self.num_classes).to(p.dtype)
                        lcls = lcls + F.binary_cross_entropy_with_logits(p[:, 5:], tcls)
            balance = _STRIDE_BALANCE.get(layer.stride, 1.0)
            lobj = lobj + balance * F.binary_cross_entropy_with_logits(out[..., 4], tobj)
        lbox = lbox * self.box_gain
        lobj = lobj * self.obj_gain
        lcls = lcls * self.cls_gain
        batch = outputs[0].shape[0]
        total = (lbox + lobj + lcls) * batch
        return total, torch.stack((lbox, lobj, lcls)).detach()
