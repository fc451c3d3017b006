"""Shared helpers for engine tests: random but well-conditioned Darknet weights, and
OpenCV's Darknet implementation as an independent reference."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from model.darknet import Darknet

SHARED = Path(__file__).resolve().parents[2] / "shared"
DARKNET_DIR = SHARED / "darknet"
IMAGES_DIR = SHARED / "images"
DATA_DIR = Path(__file__).resolve().parent / "data"


@torch.no_grad()
def randomize(net: Darknet, seed: int = 0) -> Darknet:
    """Give the network random weights whose activations stay O(1) at any depth.

    Convolutions get Gaussian weights; BatchNorm statistics are calibrated on one random
    image (a data-dependent init, so deep residual stacks neither explode nor vanish), then
    perturbed, and the affine parameters are random.  The heads' logits then span a few
    units, so boxes, objectness and class probabilities all vary across rows.
    """
    gen = torch.Generator().manual_seed(seed)
    blocks = [b for b in net.module_list if isinstance(b, nn.Sequential) and hasattr(b, "Conv2d")]
    for block in blocks:
        conv = block.Conv2d
        fan_in = conv.weight[0].numel()
        gain = 2.0 if hasattr(block, "BatchNorm2d") else 0.5  # heads: logits of a few units
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(gain / fan_in))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.2)
        if hasattr(block, "BatchNorm2d"):
            bn = block.BatchNorm2d
            bn.momentum = None  # running stats = this batch's statistics
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) * 0.5 + 0.75)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.2)
            bn.reset_running_stats()
    was_training = net.training
    net.train()
    h, w = net.img_size
    net(torch.rand((2, 3, h, w), generator=gen))
    for block in blocks:
        if hasattr(block, "BatchNorm2d"):
            bn = block.BatchNorm2d
            bn.running_var.mul_(torch.rand(bn.running_var.shape, generator=gen) * 0.4 + 0.8)
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=gen) * 0.05)
            bn.momentum = 0.03
            bn.num_batches_tracked.zero_()
    net.train(was_training)
    return net


def opencv_forward(cfg: Path, weights: Path, image: np.ndarray) -> list[np.ndarray]:
    """Run OpenCV's Darknet importer on one float RGB image (H x W x 3, 0..1).

    Returns, per yolo layer, OpenCV's rows: x, y, w, h (relative to the input size),
    objectness, objectness x class probability.
    """
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    blob = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
    net.setInput(blob)
    names = [n for n in net.getUnconnectedOutLayersNames() if n.startswith("yolo")]
    return list(net.forward(names))
