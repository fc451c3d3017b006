"""A Darknet network built from its ``.cfg`` as a PyTorch module.

``Darknet(cfg, img_size)`` parses the cfg (:mod:`model.cfg`), infers every layer's output
shape with Darknet's own formulas, and builds one module per cfg section in
``module_list`` (parameter names follow the ultralytics/yolov3 checkpoint format, e.g.
``module_list.3.Conv2d.weight``).  Strides of the detection heads come from the inferred
shapes.  See :class:`Darknet` for the output contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.cfg import Section, parse_cfg
from model.errors import CfgError
from model.layers import (ACTIVATION_NAMES, Activation, GlobalAvgPool, MaxPool, Reorg, Route,
                          Sam, ScaleChannels, Shortcut, Upsample, YOLOLayer)

# BatchNorm settings of the ultralytics training code (its checkpoints were trained with them).
BN_EPS_PYTORCH = 1e-4
BN_MOMENTUM = 0.03
# Darknet normalises with sqrt(variance + .00001f).
BN_EPS_DARKNET = 1e-5


@dataclass(frozen=True)
class Shape:
    c: int
    h: int
    w: int


def _image_size(img_size: int | tuple[int, int] | None, net: Section) -> tuple[int, int]:
    if img_size is None:
        return net.get_int("height", 416, minimum=1), net.get_int("width", 416, minimum=1)
    if isinstance(img_size, int):
        img_size = (img_size, img_size)
    h, w = (int(v) for v in img_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"img_size must be positive, got {img_size}")
    return h, w


def _activation(section: Section, default: str = "linear") -> str:
    return section.get_str("activation", default, choices=ACTIVATION_NAMES)


def _layer_ref(section: Section, key: str, value: int, index: int) -> int:
    """Resolve a route/shortcut reference (negative: relative to this layer)."""
    target = index + value if value < 0 else value
    if not 0 <= target < index:
        raise section.error(f"layer reference {value} resolves to {target}, outside the "
                            f"{index} earlier layers", key)
    return target


def _build_conv(s: Section, shape: Shape) -> tuple[nn.Module, Shape]:
    for key in ("binary", "xnor", "bin_output", "flipped", "sway", "rotate", "stretch",
                "stretch_sway", "antialiasing", "deform", "coordconv"):
        s.require_default(key, 0)
    if s.has("share_index"):
        raise s.error("shared weights are not supported by this engine", "share_index")
    filters = s.get_int("filters", 1, minimum=1)
    size = s.get_int("size", 1, minimum=1)
    stride = s.get_int("stride", 1, minimum=1)
    stride_y = s.get_int("stride_y", stride, minimum=1)
    stride_x = s.get_int("stride_x", stride, minimum=1)
    dilation = s.get_int("dilation", 1, minimum=1)
    if size == 1:
        dilation = 1  # Darknet ignores dilation for 1x1 kernels
    padding = s.get_int("padding", 0, minimum=0)
    if s.get_int("pad", 0):
        padding = size // 2
    groups = s.get_int("groups", 1, minimum=1)
    if shape.c % groups or filters % groups:
        raise s.error(f"groups={groups} must divide the input channels ({shape.c}) and "
                      f"filters ({filters})", "groups")
    batch_normalize = bool(s.get_int("batch_normalize", 0))
    activation = _activation(s, "logistic")

    out_h = (shape.h + 2 * padding - size) // stride_y + 1
    out_w = (shape.w + 2 * padding - size) // stride_x + 1
    # Darknet pads by padding * dilation; check that its size formula agrees with the
    # computation it really performs (true for the usual pad = size // 2).
    eff = dilation * (size - 1) + 1
    real_h = (shape.h + 2 * padding * dilation - eff) // stride_y + 1
    real_w = (shape.w + 2 * padding * dilation - eff) // stride_x + 1
    if (out_h, out_w) != (real_h, real_w):
        raise s.error(f"dilation={dilation} with padding={padding} and size={size} has no "
                      "consistent output size in Darknet", "dilation")
    if out_h <= 0 or out_w <= 0:
        raise s.error(f"input {shape.h}x{shape.w} is too small for this convolution")

    block = nn.Sequential()
    block.add_module("Conv2d", nn.Conv2d(
        shape.c, filters, size, stride=(stride_y, stride_x), padding=padding * dilation,
        dilation=dilation, groups=groups, bias=not batch_normalize))
    if batch_normalize:
        block.add_module("BatchNorm2d", nn.BatchNorm2d(filters, eps=BN_EPS_PYTORCH,
                                                       momentum=BN_MOMENTUM))
    if activation != "linear":
        block.add_module("activation", Activation(activation))
    return block, Shape(filters, out_h, out_w)


def _build_maxpool(s: Section, shape: Shape) -> tuple[nn.Module, Shape]:
    s.require_default("antialiasing", 0)
    s.require_default("maxpool_depth", 0)
    if s.has("out_channels"):
        raise s.error("channel-wise maxpool is not supported by this engine", "out_channels")
    size = s.get_int("size", 1, minimum=1)
    stride = s.get_int("stride", 1, minimum=1)
    stride_y = s.get_int("stride_y", stride, minimum=1)
    stride_x = s.get_int("stride_x", stride, minimum=1)
    padding = s.get_int("padding", size - 1, minimum=0)
    out_h = (shape.h + padding - size) // stride_y + 1
    out_w = (shape.w + padding - size) // stride_x + 1
    if out_h <= 0 or out_w <= 0:
        raise s.error(f"input {shape.h}x{shape.w} is too small for this maxpool")
    return MaxPool(size, stride_y, stride_x, padding), Shape(shape.c, out_h, out_w)


def _build_upsample(s: Section, shape: Shape) -> tuple[nn.Module, Shape]:
    stride = s.get_int("stride", 2)
    if stride <= 0:
        raise s.error("negative (down-sampling) stride is not supported by this engine",
                      "stride")
    scale = s.get_float("scale", 1.0)
    return Upsample(stride, scale), Shape(shape.c, shape.h * stride, shape.w * stride)


def _build_route(s: Section, index: int, shapes: list[Shape]) -> tuple[nn.Module, Shape]:
    layers = [_layer_ref(s, "layers", v, index) for v in s.get_ints("layers")]
    groups = s.get_int("groups", 1, minimum=1)
    group_id = s.get_int("group_id", 0, minimum=0)
    if group_id >= groups:
        raise s.error(f"group_id {group_id} must be below groups {groups}", "group_id")
    first = shapes[layers[0]]
    channels = 0
    for target in layers:
        shape = shapes[target]
        if (shape.h, shape.w) != (first.h, first.w):
            raise s.error(f"layers {layers[0]} ({first.h}x{first.w}) and {target} "
                          f"({shape.h}x{shape.w}) have different sizes", "layers")
        if shape.c % groups:
            raise s.error(f"layer {target} has {shape.c} channels, not divisible by "
                          f"groups={groups}", "groups")
        channels += shape.c // groups
    return Route(layers, groups, group_id), Shape(channels, first.h, first.w)


def _build_shortcut(s: Section, index: int, shapes: list[Shape],
                    shape: Shape) -> tuple[nn.Module, Shape]:
    s.require_default("weights_type", "none")
    sources = [_layer_ref(s, "from", v, index) for v in s.get_ints("from")]
    for target in sources:
        other = shapes[target]
        big, small = (other.w, shape.w) if other.w >= shape.w else (shape.w, other.w)
        big_h, small_h = (other.h, shape.h) if other.h >= shape.h else (shape.h, other.h)
        if big % small or big_h % small_h or big // small != big_h // small_h:
            raise s.error(f"layer {target} ({other.h}x{other.w}) cannot be added to "
                          f"{shape.h}x{shape.w}", "from")
    module = Shortcut(sources, _activation(s), s.get_float("alpha", 1.0),
                      s.get_float("beta", 1.0))
    return module, shape


def _build_scale(s: Section, index: int, shapes: list[Shape], shape: Shape,
                 kind: str) -> tuple[nn.Module, Shape]:
    source = _layer_ref(s, "from", s.get_int("from"), index)
    target = shapes[source]
    if kind == "sam":
        if target != shape:
            raise s.error(f"layer {source} {target} and the previous layer {shape} must have "
                          "the same shape", "from")
        return Sam(source, _activation(s)), target
    scale_wh = bool(s.get_int("scale_wh", 0))
    expected = (1, target.h, target.w) if scale_wh else (target.c, 1, 1)
    if (shape.c, shape.h, shape.w) != expected:
        raise s.error(f"the previous layer is {shape.c}x{shape.h}x{shape.w}, expected "
                      f"{'x'.join(map(str, expected))} to scale layer {source}", "from")
    return ScaleChannels(source, _activation(s), scale_wh), target


def _build_reorg(s: Section, shape: Shape) -> tuple[nn.Module, Shape]:
    for key in ("reverse", "flatten", "extra"):
        s.require_default(key, 0)
    stride = s.get_int("stride", 1, minimum=1)
    if shape.h % stride or shape.w % stride or shape.c % (stride * stride):
        raise s.error(f"input {shape.c}x{shape.h}x{shape.w} does not divide by stride "
                      f"{stride} (channels by stride^2)", "stride")
    return Reorg(stride), Shape(shape.c * stride * stride, shape.h // stride,
                                shape.w // stride)


def _build_yolo(s: Section, shape: Shape, img_hw: tuple[int, int]) -> tuple[YOLOLayer, Shape]:
    classes = s.get_int("classes", 20, minimum=1)
    total = s.get_int("num", 1, minimum=1)
    values = s.get_floats("anchors") if s.has("anchors") else []
    if len(values) != 2 * total:
        raise s.error(f"has {len(values)} numbers, num={total} needs {2 * total}", "anchors")
    mask = s.get_ints("mask", list(range(total)))
    if any(not 0 <= m < total for m in mask):
        raise s.error(f"mask {mask} refers to anchors outside 0..{total - 1}", "mask")
    needed = len(mask) * (5 + classes)
    if shape.c != needed:
        raise s.error(f"the previous layer has {shape.c} channels; {len(mask)} anchors x "
                      f"(5 + {classes} classes) need {needed}")
    anchors = [(values[2 * m], values[2 * m + 1]) for m in mask]
    stride = round(img_hw[0] / shape.h)
    layer = YOLOLayer(anchors, classes, s.get_float("scale_x_y", 1.0),
                      bool(s.get_int("new_coords", 0)), stride)
    return layer, shape


class Darknet(nn.Module):
    """A Darknet network.

    In eval mode ``net(x)`` (``x``: float N x 3 x H x W, RGB in 0..1) returns a tuple whose
    first element is (N, A, 5 + nc): cx, cy, w, h in input pixels, objectness and per-class
    probabilities, rows ordered by yolo layer (cfg order), anchor, grid y, grid x; the second
    is the list of per-head raw maps.  In training mode it returns the list of raw maps
    (N, anchors, ny, nx, 5 + nc), one per yolo layer.
    """

    def __init__(self, cfg_path: str | Path, img_size: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        sections = parse_cfg(cfg_path)
        net = sections[0]
        self.cfg_path = str(cfg_path)
        self.sections = sections[1:]
        self.img_size = _image_size(img_size, net)
        channels = net.get_int("channels", 3, minimum=1)
        self.module_list = nn.ModuleList()
        shapes: list[Shape] = []
        shape = Shape(channels, *self.img_size)
        for index, section in enumerate(self.sections):
            module, shape = self._build(section, index, shapes, shape)
            self.module_list.append(module)
            shapes.append(shape)
        self.shapes = shapes
        self.yolo_layers = [m for m in self.module_list if isinstance(m, YOLOLayer)]
        if not self.yolo_layers:
            raise CfgError("the network has no [yolo] layer", self.cfg_path)
        classes = {layer.num_classes for layer in self.yolo_layers}
        if len(classes) != 1:
            raise CfgError(f"[yolo] layers disagree on classes: {sorted(classes)}", self.cfg_path)
        self.num_classes = classes.pop()
        self.strides = [layer.stride for layer in self.yolo_layers]
        self.max_stride = max(self.strides)
        # Outputs that later layers read; others are dropped as soon as they are used.
        self._keep = sorted({i for m in self.module_list for i in _sources(m)})

    def _build(self, section: Section, index: int, shapes: list[Shape],
               shape: Shape) -> tuple[nn.Module, Shape]:
        kind = section.type
        if kind == "convolutional":
            return _build_conv(section, shape)
        if kind == "maxpool":
            return _build_maxpool(section, shape)
        if kind == "avgpool":
            return GlobalAvgPool(), Shape(shape.c, 1, 1)
        if kind == "upsample":
            return _build_upsample(section, shape)
        if kind == "route":
            return _build_route(section, index, shapes)
        if kind == "shortcut":
            return _build_shortcut(section, index, shapes, shape)
        if kind in ("scale_channels", "sam"):
            return _build_scale(section, index, shapes, shape, kind)
        if kind == "reorg":
            return _build_reorg(section, shape)
        if kind == "dropout":
            section.get_float("probability", 0.5)
            return nn.Identity(), shape
        if kind == "yolo":
            return _build_yolo(section, shape, self.img_size)
        raise section.error("is not supported by this engine")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]:
        input_hw = (x.shape[2], x.shape[3])
        outputs: list[torch.Tensor | None] = [None] * len(self.module_list)
        keep = set(self._keep)
        heads: list[torch.Tensor] = []
        raw: list[torch.Tensor] = []
        for index, module in enumerate(self.module_list):
            if isinstance(module, Route):
                x = module(outputs)
            elif isinstance(module, (Shortcut, ScaleChannels, Sam)):
                x = module(x, outputs)
            elif isinstance(module, YOLOLayer):
                if self.training:
                    raw.append(module(x, input_hw))
                else:
                    raw.append(x)
                    heads.append(module(x, input_hw))
            else:
                x = module(x)
            if index in keep:
                outputs[index] = x
        if self.training:
            return raw
        return torch.cat(heads, 1), raw

    @torch.no_grad()
    def fuse(self) -> "Darknet":
        """Fold every BatchNorm into its convolution (inference only; call after loading)."""
        for block in self.module_list:
            if isinstance(block, nn.Sequential) and hasattr(block, "BatchNorm2d"):
                conv, bn = block.Conv2d, block.BatchNorm2d
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                  conv.stride, conv.padding, conv.dilation, conv.groups,
                                  bias=True).to(conv.weight.device)
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                fused.bias.copy_(bn.bias - bn.running_mean * scale)
                block.Conv2d = fused
                del block.BatchNorm2d
        self.fused = True
        return self

    def set_bn_eps(self, eps: float) -> None:
        """Set the BatchNorm epsilon (it depends on the framework the weights come from)."""
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = eps


def _sources(module: nn.Module) -> list[int]:
    if isinstance(module, Route):
        return list(module.layers)
    if isinstance(module, Shortcut):
        return list(module.sources)
    if isinstance(module, (ScaleChannels, Sam)):
        return [module.source]
    return []
