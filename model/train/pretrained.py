"""The 6-class traffic-light network initialised from Darknet COCO weights.

    python -m model.train.pretrained --stride8 \
        --coco-cfg ../shared/models/yolov4-tiny-coco/yolov4-tiny.cfg \
        --coco-weights ../shared/models/yolov4-tiny-coco/yolov4-tiny.weights \
        --out-cfg model/data/traffic-lights-yolov4-tiny-3l.cfg --out runs/init.pt

With ``--stride8`` (the default model since issue 21): YOLOv4-tiny with a third,
stride-8 head appended in the style of AlexeyAB's ``yolov4-tiny-3l.cfg`` (route back to
the stride-16 branch, 1x1 to 64, upsample, concatenate with the stride-8 backbone layer 15,
3x3 to 128, the 1x1 head), see :func:`stride8_cfg`. Every COCO layer is copied; the new
head's three convolutions start random (its output biases at a low objectness prior). The
two COCO heads keep COCO's anchors; the stride-8 head gets ``SMALL_ANCHORS`` (tall boxes of
9-25 px for lights of 6-40 px at the input).

Without it (the previous default, YOLOv3-tiny):

    python -m model.train.pretrained \
        --coco-cfg ../shared/models/yolov3-tiny-coco/yolov3-tiny.cfg \
        --coco-weights ../shared/models/yolov3-tiny-coco/yolov3-tiny.weights \
        --out-cfg model/data/traffic-lights-yolov3-tiny.cfg --out runs/init.pt

What it does:

* writes a cfg: YOLOv3-tiny with ``classes=6`` (head filters 3 * (5 + 6) = 33) and the
  1024-filter convolution at stride 32 slimmed to ``--slim`` filters (default 512), which
  keeps the network under 60 ms per 512-pixel image on 2 CPU threads (the full 1024 filters
  take ~59 ms in ONNX Runtime);
* copies every COCO weight into it; for the slimmed convolution it keeps the filters with
  the largest BatchNorm scale |gamma| (network-slimming style) and the next 1x1 convolution
  keeps the matching input channels;
* initialises the two detection heads from COCO's class 9 ("traffic light"): for each
  anchor, the box (4) and objectness rows are copied, and every one of the 6 class rows is
  COCO's class-9 row, so real traffic lights are found (class-agnostically) from step 0 and
  training only has to learn the colours and arrows.

The anchors of the COCO heads stay COCO's (their box rows were learnt with them).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.darknet import BN_EPS_DARKNET, BN_EPS_PYTORCH, Darknet
from model.layers import YOLOLayer
from model.weights import load_weights, save_weights

logger = logging.getLogger(__name__)

COCO_TRAFFIC_LIGHT = 9
NUM_CLASSES = 6

HEADER = """# Traffic-light detector (go, stop, stopLeft, goLeft, warning, warningLeft): Darknet
# YOLOv3-tiny with 6 classes, the 1024-filter convolution at stride 32 slimmed to {slim}
# filters. Weights start from the original Darknet YOLOv3-tiny COCO weights (heads from COCO
# class 9, "traffic light"), written by `python -m model.train.pretrained`; see
# model/data/README.md. Anchors are COCO's.
"""


def six_class_cfg(coco_text: str, slim: int = 512, classes: int = NUM_CLASSES) -> str:
    """The YOLOv3-tiny COCO cfg text turned into the ``classes``-class, slimmed cfg."""
    text = re.sub(r"(?m)^\s*#.*\n", "", coco_text)
    text = re.sub(r"(?m)^classes\s*=\s*80\s*$", f"classes={classes}", text)
    text = re.sub(r"(?m)^filters\s*=\s*255\s*$", f"filters={3 * (5 + classes)}", text)
    if slim != 1024:
        text, n = re.subn(r"(?m)^filters\s*=\s*1024\s*$", f"filters={slim}", text)
        if n != 1:
            raise ValueError(f"expected one 1024-filter convolution, found {n}")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return HEADER.format(slim=slim) + text


HEADER_3L = """# Traffic-light detector (go, stop, stopLeft, goLeft, warning, warningLeft): Darknet
# YOLOv4-tiny with 6 classes and a third, stride-8 head (yolov4-tiny-3l style) for small
# lights. Weights start from the official YOLOv4-tiny COCO weights (AlexeyAB/darknet; heads
# from COCO class 9, "traffic light"), written by `python -m model.train.pretrained
# --stride8`; see model/data/README.md. Anchors: the stride-8 head's are for small lights,
# the others COCO's.
"""

# Anchors of the stride-8 head (w, h at the input): lights of 6-40 px, about twice as tall
# as wide (CINTA's median width / height is 0.53).
SMALL_ANCHORS = ((4, 9), (7, 15), (12, 25))

_STRIDE8_HEAD = """
[route]
layers = -3

[convolutional]
batch_normalize=1
filters=64
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers = -1, 15

[convolutional]
batch_normalize=1
filters=128
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters={filters}
activation=linear

"""


def stride8_cfg(coco_text: str, classes: int = NUM_CLASSES,
                small_anchors: tuple[tuple[int, int], ...] = SMALL_ANCHORS) -> str:
    """The YOLOv4-tiny COCO cfg text turned into the ``classes``-class cfg with a third,
    stride-8 head. The anchors become ``small_anchors`` + COCO's six (its stride-16 and
    stride-32 anchors, 81,82 listed for both), ``num=9``, masks 6,7,8 / 3,4,5 / 0,1,2."""
    text = re.sub(r"(?m)^\s*#.*\n", "", coco_text)
    masks = re.findall(r"(?m)^mask\s*=\s*(.*)$", text)
    if masks != ["3,4,5", "1,2,3"]:
        raise ValueError(f"expected YOLOv4-tiny's masks 3,4,5 and 1,2,3, found {masks}")
    coco = [int(v) for v in re.search(r"(?m)^anchors\s*=\s*(.*)$", text).group(1).split(",")]
    pairs = [tuple(coco[i:i + 2]) for i in range(0, len(coco), 2)]
    anchors = list(small_anchors) + pairs[1:4] + pairs[3:6]
    line = ", ".join(f"{w},{h}" for w, h in anchors)
    text = re.sub(r"(?m)^classes\s*=\s*80\s*$", f"classes={classes}", text)
    text = re.sub(r"(?m)^filters\s*=\s*255\s*$", f"filters={3 * (5 + classes)}", text)
    text = re.sub(r"(?m)^anchors\s*=.*$", f"anchors = {line}", text)
    text = re.sub(r"(?m)^num\s*=.*$", "num=9", text)
    new_masks = iter(["6,7,8", "3,4,5"])
    text = re.sub(r"(?m)^mask\s*=.*$", lambda _: f"mask = {next(new_masks)}", text)
    last_yolo = text[text.rindex("[yolo]"):].strip().replace("mask = 3,4,5", "mask = 0,1,2")
    text = re.sub(r"\n{3,}", "\n\n", text).rstrip()
    head = _STRIDE8_HEAD.format(filters=3 * (5 + classes))
    return HEADER_3L + text + "\n" + head + last_yolo + "\n"


def _conv_blocks(net: Darknet) -> list[tuple[int, nn.Sequential]]:
    return [(i, m) for i, m in enumerate(net.module_list)
            if isinstance(m, nn.Sequential) and hasattr(m, "Conv2d")]


def head_rows(num_anchors: int, src_classes: int, src_class: int, dst_classes: int
              ) -> list[int]:
    """For every output row of a ``dst_classes`` head, the row of the source head it copies:
    per anchor its 4 box rows and objectness, then ``src_class``'s row for every class."""
    rows = []
    for a in range(num_anchors):
        base = a * (5 + src_classes)
        rows += [base + k for k in range(5)]
        rows += [base + 5 + src_class] * dst_classes
    return rows


@torch.no_grad()
def transfer(coco: Darknet, net: Darknet, src_class: int = COCO_TRAFFIC_LIGHT) -> None:
    """Copy ``coco``'s weights into ``net`` (same topology up to class count and slimming;
    ``net`` may have more layers after COCO's, e.g. a stride-8 head: those keep their
    initial weights, and a head among them gets a low objectness prior)."""
    src_blocks, dst_blocks = _conv_blocks(coco), _conv_blocks(net)
    if [i for i, _ in src_blocks] != [i for i, _ in dst_blocks][:len(src_blocks)]:
        raise ValueError("the two networks do not have the same layers")
    _init_new_heads(net, dst_blocks[len(src_blocks):])
    heads = {i - 1 for i, m in enumerate(net.module_list) if isinstance(m, YOLOLayer)}
    keep_in: np.ndarray | None = None  # input channels kept because the previous conv slimmed
    eps_shift = BN_EPS_DARKNET - BN_EPS_PYTORCH  # the same normalisation under PyTorch's eps
    for (index, src), (_, dst) in zip(src_blocks, dst_blocks):
        w = src.Conv2d.weight
        if keep_in is not None:
            w = w[:, torch.as_tensor(keep_in)]
            keep_in = None
        out_src, out_dst = w.shape[0], dst.Conv2d.weight.shape[0]
        if index in heads:
            layer = net.module_list[index + 1]
            src_classes = out_src // layer.num_anchors - 5
            rows = torch.as_tensor(head_rows(layer.num_anchors, src_classes, src_class,
                                             layer.num_classes))
            dst.Conv2d.weight.copy_(w[rows])
            dst.Conv2d.bias.copy_(src.Conv2d.bias[rows])
            continue
        if out_src == out_dst:
            rows = torch.arange(out_src)
        else:  # slimmed: keep the filters whose BatchNorm scale is largest
            gamma = src.BatchNorm2d.weight.abs()
            rows = torch.sort(torch.argsort(gamma, descending=True)[:out_dst]).values
            keep_in = rows.numpy()
            logger.info("layer %d: kept %d of %d filters (|gamma| >= %.3f)", index, out_dst,
                        out_src, float(gamma[rows].min()))
        dst.Conv2d.weight.copy_(w[rows])
        if hasattr(dst, "BatchNorm2d"):
            sb, db = src.BatchNorm2d, dst.BatchNorm2d
            db.weight.copy_(sb.weight[rows])
            db.bias.copy_(sb.bias[rows])
            db.running_mean.copy_(sb.running_mean[rows])
            db.running_var.copy_((sb.running_var[rows] + eps_shift).clamp(min=1e-6))
        else:
            dst.Conv2d.bias.copy_(src.Conv2d.bias[rows])


def _init_new_heads(net: Darknet, new_blocks: list[tuple[int, nn.Sequential]]) -> None:
    """Output biases of heads that COCO does not have: objectness at a prior of about one
    object per 400 cells, classes near uniform (as ``train.init_head_biases``)."""
    modules = list(net.module_list)
    for index, block in new_blocks:
        layer = modules[index + 1] if index + 1 < len(modules) else None
        if not isinstance(layer, YOLOLayer) or block.Conv2d.bias is None:
            continue
        logger.info("layer %d: new head (stride %d), random weights", index, layer.stride)
        with torch.no_grad():
            bias = block.Conv2d.bias.view(layer.num_anchors, -1)
            bias[:, :4] = 0.0
            bias[:, 4] = -6.0
            bias[:, 5:] = float(np.log(0.6 / max(layer.num_classes - 0.99, 0.01)))


def build(coco_cfg: Path, coco_weights: Path, out_cfg: Path, slim: int = 512,
          stride8: bool = False) -> Darknet:
    """Write the 6-class cfg to ``out_cfg``; the network with the COCO weights moved in."""
    out_cfg.parent.mkdir(parents=True, exist_ok=True)
    text = coco_cfg.read_text()
    out_cfg.write_text(stride8_cfg(text) if stride8 else six_class_cfg(text, slim))
    coco = Darknet(coco_cfg)
    load_weights(coco, coco_weights)
    net = Darknet(out_cfg)
    transfer(coco, net)
    return net


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco-cfg", type=Path, required=True)
    parser.add_argument("--coco-weights", type=Path, required=True)
    parser.add_argument("--out-cfg", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="initial weights (.pt)")
    parser.add_argument("--slim", type=int, default=512,
                        help="filters of the stride-32 convolution that has 1024 in COCO")
    parser.add_argument("--stride8", action="store_true",
                        help="YOLOv4-tiny COCO in, a third (stride-8) head appended")
    parser.add_argument("--seed", type=int, default=0, help="for the new head's weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.manual_seed(args.seed)
    net = build(args.coco_cfg, args.coco_weights, args.out_cfg, args.slim, args.stride8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, args.out, training_results=f"initialised from {args.coco_weights.name}")
    logger.info("wrote %s and %s", args.out_cfg, args.out)


if __name__ == "__main__":
    main()
