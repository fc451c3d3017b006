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


def reorg_cpu_index(w: int, h: int, c: int, stride: int, forward: bool) -> np.ndarray:
    """Flat gather index reproducing Darknet's ``reorg_cpu(x, w, h, c, batch, stride,
    forward, out)`` on one image: ``out.flatten() == x.flatten()[index]``.

    Darknet walks ``(k, j, i)`` over ``c x h x w``; with ``c' = c / stride^2`` and
    ``o = k div c'`` it pairs ``in_index = i + w (j + h k)`` with ``out_index = (i s +
    o mod s) + w s ((j s + o div s) + h s (k mod c'))`` and copies ``out[in_index] =
    x[out_index]`` (forward 0) or ``out[out_index] = x[in_index]`` (forward 1).
    ``c`` must be a multiple of ``stride^2`` (the walk is then a permutation).
    """
    k, j, i = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    small_c = c // (stride * stride)
    offset = k // small_c
    out_index = (i * stride + offset % stride) + w * stride * (
        (j * stride + offset // stride) + h * stride * (k % small_c))
    in_index = i + w * (j + h * k)
    index = np.empty(w * h * c, dtype=np.int64)
    if forward:
        index[out_index.ravel()] = in_index.ravel()
    else:
        index[in_index.ravel()] = out_index.ravel()
    return index


def reorg_index(c: int, h: int, w: int, stride: int) -> np.ndarray:
    """Darknet's ``[reorg]`` (reorg_old_layer.c) on a C x H x W input: ``reorg_cpu`` with
    the *input* dimensions and forward 0; the result is viewed as (C s^2) x (H/s) x (W/s)."""
    return reorg_cpu_index(w, h, c, stride, forward=False)


def reorg_output_shape(c: int, h: int, w: int, stride: int, reverse: bool) -> tuple[int, int, int]:
    """Output C, H, W of both reorg layers (make_reorg_layer / make_reorg_old_layer)."""
    if reverse:
        return c // (stride * stride), h * stride, w * stride
    return c * stride * stride, h // stride, w // stride


def reorg_walk(c: int, h: int, w: int, stride: int, reverse: bool,
               old: bool) -> tuple[int, int, int, bool]:
    """The (w, h, c, forward) that each reorg layer passes to ``reorg_cpu`` for a C x H x W
    input: ``[reorg]`` (old) passes its input dimensions, ``[reorg3d]`` its output ones;
    ``reverse`` selects forward 1."""
    if old:
        return w, h, c, reverse
    out_c, out_h, out_w = reorg_output_shape(c, h, w, stride, reverse)
    return out_w, out_h, out_c, reverse


class Reorg(nn.Module):
    """Darknet's ``[reorg]`` (``old=True``, reorg_old_layer.c) or ``[reorg3d]``
    (reorg_layer.c), forward or ``reverse``, in Darknet's own element order."""

    def __init__(self, stride: int, reverse: bool = False, old: bool = True) -> None:
        super().__init__()
        self.stride, self.reverse, self.old = stride, reverse, old
        self._index: dict[tuple[int, int, int, str], Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        key = (c, h, w, str(x.device))
        index = self._index.get(key)
        if index is None:
            walk = reorg_walk(c, h, w, self.stride, self.reverse, self.old)
            index = torch.from_numpy(reorg_cpu_index(*walk[:3], self.stride, walk[3]))
            index = index.to(x.device)
            self._index[key] = index
        shape = reorg_output_shape(c, h, w, self.stride, self.reverse)
        return x.reshape(n, -1)[:, index].reshape(n, *shape)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, reverse={self.reverse}, old={self.old}"


class LocalAvgPool(nn.Module):
    """Darknet's ``[local_avgpool]`` (forward_local_avgpool_layer): the mean of the window's
    pixels that lie inside the image (padding is not counted); ``padding`` cells in total,
    ``padding // 2`` of them before, as for ``[maxpool]``."""

    def __init__(self, size: int, stride_y: int, stride_x: int, padding: int) -> None:
        super().__init__()
        self.size, self.stride, self.padding = size, (stride_y, stride_x), padding

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        before = self.padding // 2
        out_h = (h + self.padding - self.size) // self.stride[0] + 1
        out_w = (w + self.padding - self.size) // self.stride[1] + 1
        # Pad enough on the right/bottom for the last window, with zeros that count 0.
        after_h = max((out_h - 1) * self.stride[0] + self.size - h - before, 0)
        after_w = max((out_w - 1) * self.stride[1] + self.size - w - before, 0)
        pads = (before, after_w, before, after_h)
        ones = torch.ones_like(x[:1, :1])
        total = F.avg_pool2d(F.pad(x, pads), self.size, self.stride)
        count = F.avg_pool2d(F.pad(ones, pads), self.size, self.stride)
        return (total / count)[:, :, :out_h, :out_w]


class XnorConv2d(nn.Conv2d):
    """Darknet's XNOR convolution (``xnor=1``), as its CPU inference path computes it.

    The input is binarised to +1 where > 0, else -1 (binarize_cpu); each filter's weights
    to +-mean(|w|) by the sign of w > 0 (binarize_weights).  Darknet's bit-packed path
    (fuse_conv_batchnorm + gemm_nn_custom_bin_mean_transposed, used when stride_x ==
    stride_y) treats the padding as -1, its float path as 0: ``pad_value``.  ``padding``
    here is Darknet's (the module's own ``nn.Conv2d`` padding is 0).
    """

    def __init__(self, *args: object, darknet_padding: int = 0, pad_value: float = -1.0,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.darknet_padding, self.pad_value = darknet_padding, pad_value

    def binary_weight(self) -> Tensor:
        w = self.weight
        mean = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        return torch.where(w > 0, mean, -mean)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x))
        p = self.darknet_padding
        if p:
            x = F.pad(x, (p, p, p, p), value=self.pad_value)
        return F.conv2d(x, self.binary_weight(), self.bias, self.stride, 0, self.dilation,
                        self.groups)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", xnor, darknet_padding={self.darknet_padding}, "
                f"pad_value={self.pad_value}")


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

    def _per_anchor(self, x: Tensor, per: int) -> Tensor:
        """The head's map as (n, anchors, ny, nx, per): each cell's values per anchor."""
        n, _, ny, nx = x.shape
        return x.view(n, self.num_anchors, per, ny, nx).permute(0, 1, 3, 4, 2)

    def _cells(self, p: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """For a (n, anchors, ny, nx, per) map: the cell grid, the input pixels per cell
        (x, y) and the anchors, shaped to broadcast against it."""
        ny, nx = p.shape[2], p.shape[3]
        grid = self._grid(ny, nx, p.device)
        scale = p.new_tensor([input_hw[1] / nx, input_hw[0] / ny])
        anchors = self.anchors.to(p.device).view(1, self.num_anchors, 1, 1, 2)
        return grid, scale, anchors

    def forward(self, x: Tensor, input_hw: tuple[int, int]) -> Tensor:
        n = x.shape[0]
        p = self._per_anchor(x, 5 + self.num_classes)
        if self.training:
            return p.contiguous()
        p = p.float()
        grid, scale, anchors = self._cells(p, input_hw)
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


class RegionLayer(YOLOLayer):
    """Darknet's ``[region]`` head (YOLOv2, region_layer.c), in the [yolo] output contract.

    Per anchor the map holds x, y, w, h, objectness and the classes (coords=4).  Darknet
    applies the logistic to objectness and, with ``softmax=1``, a softmax over the classes
    (forward_region_layer; with ``softmax=0`` the class values stay raw); get_region_box
    gives x = (col + logistic(tx)) / nx, w = exp(tw) * anchor_w / nx: the anchors are in
    grid cells.  Eval rows: cx, cy, w, h in input pixels, objectness, class scores.
    """

    def __init__(self, anchors: list[tuple[float, float]], num_classes: int,
                 softmax: bool = True, stride: int = 0) -> None:
        super().__init__(anchors, num_classes, stride=stride)
        self.softmax = softmax

    def forward(self, x: Tensor, input_hw: tuple[int, int]) -> Tensor:
        n = x.shape[0]
        p = self._per_anchor(x, 5 + self.num_classes)
        if self.training:
            return p.contiguous()
        p = p.float()
        grid, scale, anchors = self._cells(p, input_hw)
        xy = (torch.sigmoid(p[..., :2]) + grid) * scale
        wh = torch.exp(p[..., 2:4]) * anchors * scale
        obj = torch.sigmoid(p[..., 4:5])
        cls = torch.softmax(p[..., 5:], dim=-1) if self.softmax else p[..., 5:]
        return torch.cat((xy, wh, obj, cls), -1).view(n, -1, 5 + self.num_classes)


# yolo_point of [Gaussian_yolo]: where (x, y) sits in the box, as a multiple of (w, h)
# added to reach the centre (get_gaussian_yolo_box).
GAUSSIAN_POINTS = {"center": 0.0, "left_top": 0.5, "right_bottom": -0.5}


class GaussianYOLOLayer(YOLOLayer):
    """Darknet's ``[Gaussian_yolo]`` head (gaussian_yolo_layer.c), in the [yolo] contract.

    Per anchor the map holds x, sigma_x, y, sigma_y, w, sigma_w, h, sigma_h, objectness and
    the classes; every entry but w and h goes through the logistic, and x, y are scaled by
    ``scale_x_y`` as in [yolo].  The box is (col + x) / nx, exp(w) * anchor_w / net_w,
    shifted by ``yolo_point``.  Darknet scores a class as objectness * p * (1 - mean of
    the four sigmas) (get_gaussian_yolo_detections): the eval rows keep objectness and
    give p * (1 - mean sigma) as the class score, so that objectness times class score
    is Darknet's score; the sigmas themselves are not output.
    """

    def __init__(self, anchors: list[tuple[float, float]], num_classes: int,
                 scale_x_y: float = 1.0, point: str = "center", stride: int = 0) -> None:
        super().__init__(anchors, num_classes, scale_x_y=scale_x_y, stride=stride)
        self.point = point

    def forward(self, x: Tensor, input_hw: tuple[int, int]) -> Tensor:
        n = x.shape[0]
        p = self._per_anchor(x, 9 + self.num_classes)
        if self.training:
            return p.contiguous()
        p = p.float()
        grid, scale, anchors = self._cells(p, input_hw)
        s = self.scale_x_y
        mu = torch.sigmoid(p[..., [0, 2]]) * s - 0.5 * (s - 1)
        wh = torch.exp(p[..., [4, 6]]) * anchors
        sigma = torch.sigmoid(p[..., [1, 3, 5, 7]]).mean(-1, keepdim=True)
        xy = (mu + grid) * scale + GAUSSIAN_POINTS[self.point] * wh
        obj = torch.sigmoid(p[..., 8:9])
        cls = torch.sigmoid(p[..., 9:]) * (1.0 - sigma)
        return torch.cat((xy, wh, obj, cls), -1).view(n, -1, 5 + self.num_classes)
