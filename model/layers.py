"""PyTorch modules for the Darknet layer types that have no direct ``torch.nn`` twin.

Each module computes exactly what Darknet's CPU implementation computes; the comments
name the Darknet behaviour being reproduced.  None of them holds learnable parameters
(convolutions are plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` inside an ``nn.Sequential``).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def _softplus(x: Tensor) -> Tensor:
    # Darknet's softplus with threshold 20 (as torch's default).
    return F.softplus(x, beta=1.0, threshold=20.0)


def _stair(x: Tensor) -> Tensor:
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)


# Darknet activations (activations.h), element-wise, by cfg name.
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x,
    "logistic": torch.sigmoid,
    "loggy": lambda x: 2 * torch.sigmoid(x) - 1,
    "relu": F.relu,
    "relu6": lambda x: torch.clamp(x, 0, 6),
    "elu": lambda x: torch.where(x >= 0, x, torch.expm1(x)),
    "selu": lambda x: torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x)),
    "relie": lambda x: torch.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "leaky": lambda x: F.leaky_relu(x, 0.1),
    "tanh": torch.tanh,
    "plse": lambda x: torch.where(x < -4, 0.01 * (x + 4),
                                  torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)),
    "stair": _stair,
    "hardtan": lambda x: torch.clamp(x, -1, 1),
    "lhtan": lambda x: torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x)),
    "gelu": lambda x: 0.5 * x * (1 + torch.tanh(0.797885 * x + 0.035677 * x * x * x)),
    "swish": lambda x: x * torch.sigmoid(x),
    "mish": lambda x: x * torch.tanh(_softplus(x)),
    "hard_mish": lambda x: torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x,
                                                              torch.zeros_like(x))),
}

ACTIVATION_NAMES = frozenset(_ACTIVATIONS)


class Activation(nn.Module):
    """A Darknet activation by name (``leaky`` is LeakyReLU(0.1), ``swish`` is x*sigmoid(x))."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._fn = _ACTIVATIONS[name]

    def forward(self, x: Tensor) -> Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self.name


class MaxPool(nn.Module):
    """Darknet maxpool: ``padding`` cells in total (left/top get ``padding // 2``), -inf fill."""

    def __init__(self, size: int, stride_y: int, stride_x: int, padding: int) -> None:
        super().__init__()
        self.size, self.stride = size, (stride_y, stride_x)
        before = padding // 2
        self.pads = (before, padding - before, before, padding - before)  # l, r, t, b

    def forward(self, x: Tensor) -> Tensor:
        left, right, top, bottom = self.pads
        if left == right and left <= self.size // 2:
            return F.max_pool2d(x, self.size, self.stride, padding=left)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


class GlobalAvgPool(nn.Module):
    """Darknet avgpool: the mean over each whole channel, giving N x C x 1 x 1."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by an integer stride, times ``scale``."""

    def __init__(self, stride: int, scale: float = 1.0) -> None:
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        y = x[:, :, :, None, :, None].expand(n, c, h, self.stride, w, self.stride)
        y = y.reshape(n, c, h * self.stride, w * self.stride)
        return y * self.scale if self.scale != 1.0 else y


class Route(nn.Module):
    """Concatenate earlier outputs along channels; with ``groups`` take one channel slice of each."""

    def __init__(self, layers: list[int], groups: int = 1, group_id: int = 0) -> None:
        super().__init__()
        self.layers, self.groups, self.group_id = layers, groups, group_id

    def forward(self, outputs: list[Tensor | None]) -> Tensor:
        parts = []
        for index in self.layers:
            x = outputs[index]
            if self.groups > 1:
                size = x.shape[1] // self.groups
                x = x[:, self.group_id * size:(self.group_id + 1) * size]
            parts.append(x)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _add_into(out: Tensor, add: Tensor, alpha: float, beta: float) -> Tensor:
    """Darknet shortcut_cpu: add ``add`` into ``out`` over the common channels.

    Spatial sizes may differ by an integer factor: the larger map is sampled at that stride.
    """
    c = min(out.shape[1], add.shape[1])
    stride = max(add.shape[3] // out.shape[3], 1)
    sample = max(out.shape[3] // add.shape[3], 1)
    src = add[:, :c, ::stride, ::stride]
    h = min(src.shape[2], math.ceil(out.shape[2] / sample))
    w = min(src.shape[3], math.ceil(out.shape[3] / sample))
    src = src[:, :, :h, :w]
    if c == out.shape[1] and stride == sample == 1 and src.shape == out.shape:
        return alpha * out + beta * src if (alpha, beta) != (1.0, 1.0) else out + src
    result = out * alpha if alpha != 1.0 else out.clone()
    target = result[:, :c, ::sample, ::sample][:, :, :h, :w]
    result[:, :c, ::sample, ::sample][:, :, :h, :w] = target + beta * src
    return result


class Shortcut(nn.Module):
    """Residual add of the previous output and ``from`` layers, then an activation.

    Channels beyond the smaller input are passed through from the previous layer, as in
    Darknet (the output has the previous layer's shape).
    """

    def __init__(self, sources: list[int], activation: str, alpha: float = 1.0,
                 beta: float = 1.0) -> None:
        super().__init__()
        self.sources, self.alpha, self.beta = sources, alpha, beta
        self.activation = Activation(activation)

    def forward(self, x: Tensor, outputs: list[Tensor | None]) -> Tensor:
        for index in self.sources:
            x = _add_into(x, outputs[index], self.alpha, self.beta)
        return self.activation(x)


class ScaleChannels(nn.Module):
    """Multiply the ``from`` output by the previous output (per channel, or per pixel)."""

    def __init__(self, source: int, activation: str, scale_wh: bool = False) -> None:
        super().__init__()
        self.source, self.scale_wh = source, scale_wh
        self.activation = Activation(activation)

    def forward(self, x: Tensor, outputs: list[Tensor | None]) -> Tensor:
        return self.activation(outputs[self.source] * x)


class Sam(nn.Module):
    """Spatial attention: element-wise product of the ``from`` output and the previous output."""

    def __init__(self, source: int, activation: str) -> None:
        super().__init__()
        self.source = source
        self.activation = Activation(activation)

    def forward(self, x: Tensor, outputs: list[Tensor | None]) -> Tensor:
        return self.activation(outputs[self.source] * x)


def reorg_index(c: int, h: int, w: int, stride: int) -> np.ndarray:
    """Flat gather index reproducing Darknet's [reorg] on one C x H x W input.

    Darknet's forward pass calls ``reorg_cpu(input, w, h, c, stride, forward=0)`` with the
    layer's *input* dimensions: output element ``(k, j, i)`` of a C x H x W walk is read
    from the flat input position of ``(k mod C', j s + o div s, i s + o mod s)`` in a
    C' x Hs x Ws layout, where C' = C / s^2 and o = k div C'.  The flat result is then
    viewed as (C s^2) x (H/s) x (W/s).  Returns ``index`` with
    ``out.flatten() == in.flatten()[index]``.
    """
    k, j, i = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    small_c = c // (stride * stride)
    offset = k // small_c
    src = (i * stride + offset % stride) + w * stride * (
        (j * stride + offset // stride) + h * stride * (k % small_c))
    return src.ravel().astype(np.int64)


class Reorg(nn.Module):
    """Darknet's [reorg]: space-to-depth in Darknet's own channel order."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self._index: dict[tuple[int, int, int, str], Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        s = self.stride
        key = (c, h, w, str(x.device))
        index = self._index.get(key)
        if index is None:
            index = torch.from_numpy(reorg_index(c, h, w, s)).to(x.device)
            self._index[key] = index
        return x.reshape(n, -1)[:, index].reshape(n, c * s * s, h // s, w // s)


class YOLOLayer(nn.Module):
    """Darknet [yolo] head.

    Training mode returns the raw map as (N, A, ny, nx, 5 + nc).  Eval mode returns
    (N, A * ny * nx, 5 + nc): cx, cy, w, h in input pixels, objectness and per-class
    probabilities, rows ordered anchor, grid y, grid x.
    """

    def __init__(self, anchors: list[tuple[float, float]], num_classes: int,
                 scale_x_y: float = 1.0, new_coords: bool = False, stride: int = 0) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32),
                             persistent=False)
        self.num_anchors = len(anchors)
        self.num_classes = num_classes
        self.scale_x_y = scale_x_y
        self.new_coords = new_coords
        self.stride = stride
        self._grids: dict[tuple[int, int, str], Tensor] = {}

    def _grid(self, ny: int, nx: int, device: torch.device) -> Tensor:
        key = (ny, nx, str(device))
        grid = self._grids.get(key)
        if grid is None:
            ys, xs = torch.meshgrid(torch.arange(ny, device=device),
                                    torch.arange(nx, device=device), indexing="ij")
            grid = torch.stack((xs, ys), -1).view(1, 1, ny, nx, 2).float()
            self._grids[key] = grid
        return grid

    def forward(self, x: Tensor, input_hw: tuple[int, int]) -> Tensor:
        n, _, ny, nx = x.shape
        p = x.view(n, self.num_anchors, 5 + self.num_classes, ny, nx).permute(0, 1, 3, 4, 2)
        if self.training:
            return p.contiguous()
        p = p.float()
        grid = self._grid(ny, nx, p.device)
        scale = p.new_tensor([input_hw[1] / nx, input_hw[0] / ny])
        anchors = self.anchors.to(p.device).view(1, self.num_anchors, 1, 1, 2)
        s = self.scale_x_y
        if self.new_coords:
            xy = p[..., :2] * s - 0.5 * (s - 1)
            wh = 4 * p[..., 2:4] ** 2 * anchors
            rest = p[..., 4:]
        else:
            xy = torch.sigmoid(p[..., :2])
            xy = xy * s - 0.5 * (s - 1) if s != 1.0 else xy
            wh = torch.exp(p[..., 2:4]) * anchors
            rest = torch.sigmoid(p[..., 4:])
        out = torch.cat(((xy + grid) * scale, wh, rest), -1)
        return out.view(n, -1, 5 + self.num_classes)
