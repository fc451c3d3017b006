"""The 6-class traffic-light network initialised from Darknet's YOLOv3-tiny COCO weights.

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

The anchors stay COCO's (the heads' box rows were learnt with them).
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
    """Copy ``coco``'s weights into ``net`` (same topology up to class count and slimming)."""
    src_blocks, dst_blocks = _conv_blocks(coco), _conv_blocks(net)
    if [i for i, _ in src_blocks] != [i for i, _ in dst_blocks]:
        raise ValueError("the two networks do not have the same layers")
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


def build(coco_cfg: Path, coco_weights: Path, out_cfg: Path, slim: int = 512) -> Darknet:
    """Write the 6-class cfg to ``out_cfg``; the network with the COCO weights moved in."""
    out_cfg.parent.mkdir(parents=True, exist_ok=True)
    out_cfg.write_text(six_class_cfg(coco_cfg.read_text(), slim))
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    net = build(args.coco_cfg, args.coco_weights, args.out_cfg, args.slim)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, args.out, training_results="initialised from YOLOv3-tiny COCO")
    logger.info("wrote %s and %s", args.out_cfg, args.out)


if __name__ == "__main__":
    main()
