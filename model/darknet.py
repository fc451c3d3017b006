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
from model.layers import (ACTIVATION_NAMES, GAUSSIAN_POINTS, Activation, GaussianYOLOLayer,
                          GlobalAvgPool, LocalAvgPool, MaxPool, RegionLayer, Reorg, Route, Sam,
                          ScaleChannels, Shortcut, Upsample, XnorConv2d, YOLOLayer,
                          reorg_output_shape)

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


# Darknet activations (get_activation) that this engine does not implement.
_UNIMPLEMENTED_ACTIVATIONS = frozenset({
    "normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval",
    "revleaky",
})

# The detection layers, by section type.
DETECTION_TYPES = ("yolo", "region", "gaussian_yolo")

# Darknet layer types this engine does not build, and why.
_UNSUPPORTED = {
    "crnn": "a recurrent layer: its output depends on the frames seen before (Darknet "
            "keeps its state across calls), which a detector of single images cannot "
            "reproduce",
    "rnn": "a recurrent layer (state kept across frames)",
    "gru": "a recurrent layer (state kept across frames)",
    "lstm": "a recurrent layer (state kept across frames)",
    "conv_lstm": "a recurrent layer (state kept across frames)",
    "history": "it stacks the previous frames (state kept across calls)",
    "connected": "a fully connected (classifier) layer",
    "softmax": "a classifier output layer",
    "crop": "a training-time crop layer of classifiers",
    "cost": "a training loss layer",
    "detection": "YOLO v1's [detection] layer",
    "local": "a locally connected layer",
    "normalization": "local response normalisation",
    "batchnorm": "a stand-alone batch-norm layer",
    "implicit": "YOLOR's implicit knowledge layer",
}


def _activation(section: Section, default: str = "linear") -> str:
    """Darknet's get_activation: an unknown name is ReLU (with a warning, as Darknet's
    "Couldn't find activation function")."""
    name = section.get_str("activation", default)
    if name in ACTIVATION_NAMES:
        return name
    if name in _UNIMPLEMENTED_ACTIVATIONS:
        raise section.error(f"'{name}' is not supported by this engine", "activation")
    section.warn(f"'{name}' is not a Darknet activation; Darknet uses relu", "activation")
    return "relu"


def _layer_ref(section: Section, key: str, value: int, index: int) -> int:
    """Resolve a route/shortcut reference (negative: relative to this layer)."""
    target = index + value if value < 0 else value
    if not 0 <= target < index:
        raise section.error(f"layer reference {value} resolves to {target}, outside the "
                            f"{index} earlier layers", key)
    return target


def _build_conv(s: Section, shape: Shape,
                share: tuple[int, nn.Sequential] | None = None) -> tuple[nn.Module, Shape]:
    for key in ("binary", "bin_output", "sway", "rotate", "stretch", "stretch_sway",
                "antialiasing", "coordconv", "flipped", "dontload", "dontloadscales"):
        # bin_output only changes how the GPU stores an output (not what it is), but it
        # is only meaningful with xnor.
        if key == "bin_output" and s.get_int("xnor", 0):
            continue
        s.require_default(key, 0)
    filters = s.get_int("filters", 1, minimum=1)
    size = s.get_int("size", 1, minimum=1)
    # parse_convolutional: stride_x / stride_y when both are >= 1, else stride for those not.
    stride_x, stride_y = s.get_int("stride_x", -1), s.get_int("stride_y", -1)
    stride = s.get_int("stride", 1)
    stride_x = stride_x if stride_x >= 1 else stride
    stride_y = stride_y if stride_y >= 1 else stride
    if stride_x < 1 or stride_y < 1:
        raise s.error(f"stride {stride} must be at least 1", "stride")
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
    # cbn=1 (cross-iteration batch norm) only changes training statistics.
    batch_normalize = bool(s.get_int("batch_normalize", 0) or s.get_int("cbn", 0))
    activation = _activation(s, "logistic")
    xnor = bool(s.get_int("xnor", 0))

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
    if xnor:
        _check_xnor(s, shape, size, stride_x, stride_y, padding, dilation, (out_h, out_w))
        conv: nn.Conv2d = XnorConv2d(shape.c, filters, size, stride=(stride_y, stride_x),
                                     padding=0, dilation=dilation, groups=groups,
                                     bias=not batch_normalize, darknet_padding=padding,
                                     pad_value=-1.0)
    else:
        conv = nn.Conv2d(shape.c, filters, size, stride=(stride_y, stride_x),
                         padding=padding * dilation, dilation=dilation, groups=groups,
                         bias=not batch_normalize)
    block.add_module("Conv2d", conv)
    if share is not None:
        _share(s, block, *share)
    elif batch_normalize:
        block.add_module("BatchNorm2d", nn.BatchNorm2d(filters, eps=BN_EPS_PYTORCH,
                                                       momentum=BN_MOMENTUM))
    if activation != "linear":
        block.add_module("activation", Activation(activation))
    return block, Shape(filters, out_h, out_w)


def _share(s: Section, block: nn.Sequential, index: int, target: nn.Sequential) -> None:
    """``share_index``: the convolution uses layer ``index``'s weights, biases and batch
    norm (make_convolutional_layer points at the shared layer's arrays; the .weights file
    holds nothing for it), with its own stride, padding, dilation and activation.  Darknet
    fuses the shared layer's batch norm into those arrays at load time
    (fuse_conv_batchnorm, which also clears the sharing layer's own batch_normalize), so
    the sharing layer computes the shared layer's conv + batch norm whatever its own
    ``batch_normalize`` says."""
    conv, other = block.Conv2d, target.Conv2d
    if type(conv) is not type(other) or conv.weight.shape != other.weight.shape:
        raise s.error(f"layer {index}'s weights {tuple(other.weight.shape)} do not fit this "
                      f"convolution's {tuple(conv.weight.shape)}", "share_index")
    conv.weight = other.weight
    conv.bias = other.bias
    if hasattr(target, "BatchNorm2d"):
        block.add_module("BatchNorm2d", target.BatchNorm2d)
    block.share_index = index  # type: ignore[attr-defined]


def _check_xnor(s: Section, shape: Shape, size: int, stride_x: int, stride_y: int,
                padding: int, dilation: int, out_hw: tuple[int, int]) -> None:
    """Accept only the XNOR convolutions whose result Darknet's CPU inference path
    (forward_convolutional_layer, bit-packed) defines: equal strides, no dilation, and for
    inputs whose channels are not a multiple of 32 only the same-size 3x3 case that
    im2col_cpu_custom_bin implements (otherwise Darknet leaves the columns empty)."""
    if stride_x != stride_y:
        raise s.error("xnor=1 with stride_x != stride_y takes Darknet's float path, which "
                      "this engine does not implement", "xnor")
    if dilation != 1:
        raise s.error("xnor=1 with dilation is not computed by Darknet's binary path", "xnor")
    if shape.c % 32 and not (stride_x == 1 and padding == 1 and size == 3
                             and out_hw == (shape.h, shape.w)):
        raise s.error(f"xnor=1 on {shape.c} input channels (not a multiple of 32) is only "
                      "defined by Darknet for size=3, stride=1, pad=1", "xnor")


def _build_maxpool(s: Section, shape: Shape) -> tuple[nn.Module, Shape]:
    s.require_default("antialiasing", 0)
    s.require_default("maxpool_depth", 0)
    if s.has("out_channels"):
        raise s.error("channel-wise maxpool is not supported by this engine", "out_channels")
    s.require_default("maxpool_zero_nonmax", 0)
    return _pool(s, shape, MaxPool)


def _pool(s: Section, shape: Shape, kind: type) -> tuple[nn.Module, Shape]:
    """[maxpool] and [local_avgpool] (parse_maxpool / parse_local_avgpool)."""
    stride = s.get_int("stride", 1, minimum=1)
    stride_x = s.get_int("stride_x", stride, minimum=1)
    stride_y = s.get_int("stride_y", stride, minimum=1)
    size = s.get_int("size", stride, minimum=1)
    padding = s.get_int("padding", size - 1, minimum=0)
    out_h = (shape.h + padding - size) // stride_y + 1
    out_w = (shape.w + padding - size) // stride_x + 1
    if out_h <= 0 or out_w <= 0:
        raise s.error(f"input {shape.h}x{shape.w} is too small for this pooling")
    return kind(size, stride_y, stride_x, padding), Shape(shape.c, out_h, out_w)


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
    # AlexeyAB's parse_shortcut reads no alpha / beta (pjreddie's does): plain sums.
    return Shortcut(sources, _activation(s)), shape


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


def _build_reorg(s: Section, shape: Shape, old: bool) -> tuple[nn.Module, Shape]:
    """[reorg] (reorg_old_layer.c, ``old``) and [reorg3d] (reorg_layer.c)."""
    stride = s.get_int("stride", 1, minimum=1)
    reverse = bool(s.get_int("reverse", 0))
    square = stride * stride
    # The divisibility that makes Darknet's reorg_cpu walk a permutation of the input.
    if reverse:
        needed = square if old else square * square
        ok = shape.c % needed == 0
        rule = f"channels by stride^{2 if old else 4}"
    else:
        ok = shape.h % stride == 0 and shape.w % stride == 0 and shape.c % (
            square if old else 1) == 0
        rule = "height and width by stride" + (", channels by stride^2" if old else "")
    if not ok:
        raise s.error(f"input {shape.c}x{shape.h}x{shape.w} does not divide ({rule}, "
                      f"stride {stride})", "stride")
    return Reorg(stride, reverse, old), Shape(*reorg_output_shape(shape.c, shape.h, shape.w,
                                                                   stride, reverse))


def _anchors(s: Section, total: int, read_all: bool, stop_at_hash: bool
             ) -> list[tuple[float, float]]:
    """Anchors as Darknet reads them: biases start at .5 (make_*_layer), then the first
    ``2 * total`` numbers are read (all of them when ``read_all``, Gaussian_yolo)."""
    values = [0.5] * (2 * total)
    if s.has("anchors"):
        numbers = s.get_floats("anchors", stop_at_hash)
        if len(numbers) > 2 * total:
            if read_all:
                raise s.error(f"{len(numbers)} numbers for num={total}: Darknet writes past "
                              f"its {2 * total} anchors", "anchors")
            s.warn(f"has {len(numbers)} numbers; Darknet reads the first {2 * total} "
                   f"(num={total})", "anchors")
        elif len(numbers) < 2 * total:
            s.warn(f"has {len(numbers)} numbers, num={total} needs {2 * total}; Darknet "
                   "uses 0.5 for the others", "anchors")
        for i, value in enumerate(numbers[:2 * total]):
            values[i] = value
    else:
        s.warn(f"no anchors: Darknet uses 0.5 for all {2 * total}")
    return [(values[2 * i], values[2 * i + 1]) for i in range(total)]


def _mask(s: Section, total: int) -> list[int]:
    mask = s.get_ints("mask", list(range(total)), stop_at_hash=True)
    if any(not 0 <= m < total for m in mask):
        raise s.error(f"mask {mask} refers to anchors outside 0..{total - 1} (num={total}); "
                      "Darknet would read past its anchors", "mask")
    return mask


def _refuse_maps(s: Section) -> None:
    if s.has("map"):
        raise s.error("a class map file (map=) is not supported by this engine", "map")


def _head_anchors(s: Section, shape: Shape, per_anchor: int, *, read_all: bool,
                  stop_at_hash: bool) -> tuple[int, list[tuple[float, float]]]:
    """A [yolo]-style head's class count and the anchors its mask picks, checked against
    the previous layer's channels (``per_anchor`` + classes for each anchor)."""
    _refuse_maps(s)
    classes = s.get_int("classes", 20, minimum=1)
    total = s.get_int("num", 1, minimum=1)
    mask = _mask(s, total)
    all_anchors = _anchors(s, total, read_all=read_all, stop_at_hash=stop_at_hash)
    needed = len(mask) * (per_anchor + classes)
    if shape.c != needed:
        raise s.error(f"the previous layer has {shape.c} channels; {len(mask)} anchors x "
                      f"({per_anchor} + {classes} classes) need {needed}")
    return classes, [all_anchors[m] for m in mask]


def _build_yolo(s: Section, shape: Shape, img_hw: tuple[int, int]) -> tuple[YOLOLayer, Shape]:
    classes, anchors = _head_anchors(s, shape, 5, read_all=False, stop_at_hash=True)
    stride = round(img_hw[0] / shape.h)
    layer = YOLOLayer(anchors, classes, s.get_float("scale_x_y", 1.0),
                      bool(s.get_int("new_coords", 0)), stride)
    return layer, shape


def _build_gaussian_yolo(s: Section, shape: Shape,
                         img_hw: tuple[int, int]) -> tuple[YOLOLayer, Shape]:
    classes, anchors = _head_anchors(s, shape, 9, read_all=True, stop_at_hash=False)
    point = s.get_str("yolo_point", "center")
    if point not in GAUSSIAN_POINTS:
        point = "center"  # parse_gaussian_yolo: anything else is the centre
    layer = GaussianYOLOLayer(anchors, classes,
                              s.get_float("scale_x_y", 1.0), point,
                              round(img_hw[0] / shape.h))
    return layer, shape


def _build_region(s: Section, shape: Shape, img_hw: tuple[int, int]) -> tuple[YOLOLayer, Shape]:
    if s.has("tree"):
        raise s.error(f"tree={s.options['tree']}: the hierarchical softmax of YOLO9000 is "
                      "not supported by this engine (it needs Darknet's tree file, and "
                      "its detections walk that tree)", "tree")
    _refuse_maps(s)
    coords = s.get_int("coords", 4)
    if coords != 4:
        raise s.error(f"coords={coords} is not supported by this engine (only 4)", "coords")
    classes = s.get_int("classes", 20, minimum=1)
    total = s.get_int("num", 1, minimum=1)
    anchors = _anchors(s, total, read_all=False, stop_at_hash=False)
    needed = total * (coords + 1 + classes)
    if shape.c != needed:
        raise s.error(f"the previous layer has {shape.c} channels; num={total} x "
                      f"(5 + {classes} classes) need {needed}")
    layer = RegionLayer(anchors, classes, bool(s.get_int("softmax", 0)),
                        round(img_hw[0] / shape.h))
    return layer, shape


def _refuse_non_detectors(sections: list[Section], path: str) -> None:
    """This service serves detectors: a cfg without a detection layer is refused first,
    naming what it is, before any layer is built."""
    if any(s.type in DETECTION_TYPES for s in sections):
        return
    classifier = [s.header for s in sections if s.type in ("softmax", "connected", "crop",
                                                           "cost")]
    kind = (f"a classifier ({', '.join(dict.fromkeys(classifier))})" if classifier
            else "not a detector")
    raise CfgError(f"the network is {kind}: it has no [yolo], [region] or [Gaussian_yolo] "
                   "layer, and this service serves detectors only", path)


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
        _refuse_non_detectors(sections, str(cfg_path))
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
        classes = {layer.num_classes for layer in self.yolo_layers}
        if len(classes) != 1:
            raise CfgError(f"the detection layers disagree on classes: {sorted(classes)}",
                           self.cfg_path)
        self.num_classes = classes.pop()
        self.strides = [layer.stride for layer in self.yolo_layers]
        self.max_stride = max(self.strides)
        # Outputs that later layers read; others are dropped as soon as they are used.
        self._keep = sorted({i for m in self.module_list for i in _sources(m)})

    def _build(self, section: Section, index: int, shapes: list[Shape],
               shape: Shape) -> tuple[nn.Module, Shape]:
        kind = section.type
        if kind == "convolutional":
            return _build_conv(section, shape, self._shared(section, index))
        if kind == "maxpool":
            return _build_maxpool(section, shape)
        if kind == "local_avgpool":
            return _pool(section, shape, LocalAvgPool)
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
        if kind in ("reorg", "reorg3d"):
            return _build_reorg(section, shape, old=kind == "reorg")
        if kind == "contrastive":
            # A training-only loss (with the yolo layer it names): at inference nothing
            # reads its output, so it may only come last.
            if index != len(self.sections) - 1:
                raise section.error("is supported only as the last layer (a training "
                                    "loss whose output nothing reads)")
            return nn.Identity(), shape
        if kind in ("dropout", "empty"):
            return nn.Identity(), shape  # dropout is the identity at inference
        if kind == "activation":
            return Activation(_activation(section)), shape
        if kind == "yolo":
            return _build_yolo(section, shape, self.img_size)
        if kind == "region":
            return _build_region(section, shape, self.img_size)
        if kind == "gaussian_yolo":
            return _build_gaussian_yolo(section, shape, self.img_size)
        reason = _UNSUPPORTED.get(kind, "not a layer this engine builds")
        raise section.error(f"is not supported by this engine: {reason}")

    def _shared(self, section: Section, index: int) -> tuple[int, nn.Sequential] | None:
        """The convolution layer that ``share_index`` names (parse_convolutional: >= 0 is
        absolute, else relative to this layer), or None."""
        if not section.has("share_index"):
            return None
        value = section.get_int("share_index")
        target = value if value >= 0 else index + value
        module = self.module_list[target] if 0 <= target < index else None
        if not (isinstance(module, nn.Sequential) and hasattr(module, "Conv2d")):
            raise section.error(f"share_index={value} is not an earlier convolution",
                                "share_index")
        return target, module

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
            target = getattr(block, "share_index", None)
            if target is not None:  # after its (earlier) shared layer: tie to the fused one
                shared = self.module_list[target].Conv2d
                fused = _fused_like(block.Conv2d).to(shared.weight.device)
                fused.weight, fused.bias = shared.weight, shared.bias
                block.Conv2d = fused
                if hasattr(block, "BatchNorm2d"):
                    del block.BatchNorm2d
                continue
            if isinstance(block, nn.Sequential) and hasattr(block, "BatchNorm2d"):
                conv, bn = block.Conv2d, block.BatchNorm2d
                fused = _fused_like(conv).to(conv.weight.device)
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


def _fused_like(conv: nn.Conv2d) -> nn.Conv2d:
    """An empty convolution of ``conv``'s kind and geometry, with a bias. (Folding a
    BatchNorm into an XNOR convolution is exact: binarising s * w gives s times the
    binarised w, as Darknet's fuse_conv_batchnorm relies on.)"""
    args = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups)
    if isinstance(conv, XnorConv2d):
        return XnorConv2d(*args, bias=True, darknet_padding=conv.darknet_padding,
                          pad_value=conv.pad_value)
    return nn.Conv2d(*args, bias=True)


def _sources(module: nn.Module) -> list[int]:
    if isinstance(module, Route):
        return list(module.layers)
    if isinstance(module, Shortcut):
        return list(module.sources)
    if isinstance(module, (ScaleChannels, Sam)):
        return [module.source]
    return []
