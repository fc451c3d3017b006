"""Shared helpers for engine tests: random but well-conditioned Darknet weights, and
OpenCV's Darknet implementation as an independent reference."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from model.darknet import Darknet
from model.layers import RegionLayer
from model.weights import load_weights, save_weights

from tests.paths import DARKNET_DIR, DATA_DIR, PHOTOS_DIR  # noqa: F401 - re-exported

IMAGES_DIR = PHOTOS_DIR


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

    Returns, per yolo (or region) layer, OpenCV's rows: x, y, w, h (relative to the input size),
    objectness, objectness x class probability.
    """
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.enableWinograd(False)  # its 3x3 fast path adds float32 error of ~1e-3 in deep nets
    blob = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
    net.setInput(blob)
    # OpenCV names its [yolo] outputs yolo_<index> and its [region] output detection_out.
    names = [n for n in net.getUnconnectedOutLayersNames()
             if n.startswith("yolo") or n == "detection_out"]
    return list(net.forward(names))


# OpenCV normalises BatchNorm with eps 1e-6 (Darknet: 1e-5); match the reference.
OPENCV_BN_EPS = 1e-6

# Every real cfg in tests/data/darknet (the users' network at full size, the rest small to
# keep CI fast) and
# our own cfgs that exercise the remaining layer types and options.
PARITY_CASES = [
    (DARKNET_DIR / "yolov3-spp-6cls.cfg", 512),
    (DARKNET_DIR / "yolov3-spp.cfg", 160),
    (DARKNET_DIR / "yolov3.cfg", 160),
    (DARKNET_DIR / "yolov3-tiny.cfg", 160),
    (DARKNET_DIR / "yolov4-tiny.cfg", 160),
    (DARKNET_DIR / "yolov2-tiny.cfg", 96),
    (DATA_DIR / "engine-all-layers.cfg", 64),
    (DATA_DIR / "engine-region.cfg", 64),
    (DATA_DIR / "engine-new-coords.cfg", 64),
]


def _opencv_cfg(cfg: Path, out: Path) -> Path:
    """OpenCV zeroes class scores below its yolo/region 'thresh' (default 0.2) and keeps
    the last value of a key: drop the cfg's own thresh lines and set thresh to 0."""
    text = re.sub(r"^[ \t]*thresh[ \t]*=.*$", "", cfg.read_text(), flags=re.M)
    out.write_text(re.sub(r"^\[(yolo|region)\]", r"[\1]\nthresh=0", text, flags=re.M))
    return out


# OpenCV's [region] layer always runs a per-class NMS on its output (RegionLayerImpl,
# nms_threshold 0.4, do_nms_sort): suppressed class scores are set to 0.
OPENCV_REGION_NMS = 0.4


def opencv_region_nms(rows: np.ndarray) -> np.ndarray:
    """Apply OpenCV's in-layer [region] NMS (do_nms_sort) to rows of x, y, w, h, objectness,
    scores (any consistent units): for each class, cv2.dnn.NMSBoxes over all rows, and the
    scores of the rows it does not keep become 0."""
    out = rows.copy()
    rects = np.concatenate((rows[:, :2] - rows[:, 2:4] / 2, rows[:, 2:4]), axis=1)
    for k in range(5, rows.shape[1]):
        kept = cv2.dnn.NMSBoxes(rects.tolist(), rows[:, k].astype(np.float32).tolist(),
                                0.0, OPENCV_REGION_NMS)
        column = np.zeros(len(rows))
        kept = np.asarray(kept, dtype=np.int64).reshape(-1)
        column[kept] = rows[kept, k]
        out[:, k] = column
    return out


def _opencv_rows(outputs: list[np.ndarray], net: Darknet, hw: tuple[int, int]) -> np.ndarray:
    """OpenCV rows (grid y, grid x, anchor order; relative units) in our order and units."""
    heads = [(net.shapes[i].h, net.shapes[i].w) for i, m in enumerate(net.module_list)
             if m in net.yolo_layers]
    rows = []
    for raw, layer, (ny, nx) in zip(outputs, net.yolo_layers, heads):
        per = 5 + layer.num_classes
        rows.append(raw.reshape(ny, nx, layer.num_anchors, per).transpose(2, 0, 1, 3)
                    .reshape(-1, per))
    ref = np.concatenate(rows).astype(np.float64)
    ref[:, [0, 2]] *= hw[1]
    ref[:, [1, 3]] *= hw[0]
    return ref


def _random_net(cfg: Path, size: int, tmp_path: Path) -> tuple[Darknet, Path, np.ndarray]:
    """Random Darknet-format weights for ``cfg`` (written to ``tmp_path``), our fused
    network with them (OpenCV's BatchNorm eps), and a random input image."""
    weights = tmp_path / "random.weights"
    save_weights(randomize(Darknet(cfg, size), seed=size), weights)
    net = Darknet(cfg, size)
    load_weights(net, weights)
    net.set_bn_eps(OPENCV_BN_EPS)
    net.eval().fuse()
    image = np.random.default_rng(1).random((size, size, 3), dtype=np.float32)
    return net, weights, image


def assert_matches_opencv(cfg: Path, size: int, tmp_path: Path,
                          backend: Callable[[Darknet], Callable[[torch.Tensor], tuple]]) -> None:
    """Random Darknet-format weights, read by both OpenCV and our engine (run through
    ``backend(fused_net)``): boxes and objectness within 1e-3 relative, class
    probabilities (times objectness, as OpenCV reports them) within 1e-3 absolute."""
    net, weights, image = _random_net(cfg, size, tmp_path)
    with torch.inference_mode():
        ours = backend(net)(torch.from_numpy(image.transpose(2, 0, 1).copy())[None])[0][0]
    ours = ours.double().numpy()
    scores = ours.copy()
    scores[:, 5:] *= scores[:, 4:5]  # OpenCV reports objectness x class probability
    if any(isinstance(m, RegionLayer) for m in net.yolo_layers):
        scores = opencv_region_nms(scores)

    ref = _opencv_rows(opencv_forward(_opencv_cfg(cfg, tmp_path / "ref.cfg"), weights, image),
                       net, (size, size))
    assert ours.shape == ref.shape
    # The network is not degenerate: objectness and box sizes really vary.
    assert ours[:, 4].max() - ours[:, 4].min() > 0.5
    np.testing.assert_allclose(ours[:, :5], ref[:, :5], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(scores[:, 5:], ref[:, 5:], rtol=0, atol=1e-3)


def compare_with_opencv(cfg: Path, size: int, tmp_path: Path) -> dict[str, float]:
    """Random Darknet-format weights read by OpenCV and by our engine, for the coverage
    sweep over deep real cfgs; returns how closely they agree.

    Deep random networks are badly conditioned (our own float32 result can differ from
    the float64 one by more than 1e-3, and some logits explode), so besides the share of
    elements within :func:`assert_matches_opencv`'s tolerances (``strict``: 1.0 when all
    are) this reports the largest differences and our own float32-vs-float64 error.  Rows
    whose float64 value is not finite are left out (``finite``: the share kept).  Asserts
    that at least half the rows are finite, 99% of the elements within the tolerances,
    and every element within 1e-2 (relative for boxes and objectness, absolute for the
    class scores) or within four times our own float32 error (``self_rel``, ``self_score``): an
    implementation that computed something else would be far off on many elements.
    """
    net, weights, image = _random_net(cfg, size, tmp_path)
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())[None]
    with torch.inference_mode():
        ours = net(x)[0][0].double().numpy()
        exact = net.double()(x.double())[0][0].numpy()
    ref = _opencv_rows(opencv_forward(_opencv_cfg(cfg, tmp_path / "ref.cfg"), weights, image),
                       net, (size, size))
    assert ours.shape == ref.shape == exact.shape

    def scores(rows: np.ndarray) -> np.ndarray:
        out = rows.copy()
        out[:, 5:] *= out[:, 4:5]
        if any(isinstance(m, RegionLayer) for m in net.yolo_layers):
            out = opencv_region_nms(out)
        return out

    ours, exact = scores(ours), scores(exact)
    finite = (np.isfinite(exact).all(axis=1) & np.isfinite(ours).all(axis=1)
              & (np.abs(exact[:, 2:4]) < 1e30).all(axis=1))
    assert finite.mean() >= 0.5, f"only {finite.mean():.0%} of the rows are finite"
    ours, exact, ref = ours[finite], exact[finite], ref[finite]
    rel = np.abs(ref[:, :5] - ours[:, :5]) / (np.abs(ref[:, :5]) + 1e-3)
    strict = np.concatenate(
        [np.abs(ref[:, :5] - ours[:, :5]) <= 1e-3 * np.abs(ref[:, :5]) + 1e-6,
         np.abs(ref[:, 5:] - ours[:, 5:]) <= 1e-3], axis=1)
    self_rel = np.abs(ours[:, :5] - exact[:, :5]) / (np.abs(exact[:, :5]) + 1e-3)
    stats = {"finite": float(finite.mean()), "strict": float(strict.mean()),
             "max_rel": float(rel.max()),
             "max_score": float(np.abs(ref[:, 5:] - ours[:, 5:]).max()),
             "self_rel": float(self_rel.max()),
             "self_score": float(np.abs(ours[:, 5:] - exact[:, 5:]).max()),
             "obj_range": float(ours[:, 4].max() - ours[:, 4].min())}
    assert stats["strict"] >= 0.99, stats
    assert stats["max_rel"] <= max(1e-2, 4 * stats["self_rel"]), stats
    assert stats["max_score"] <= max(1e-2, 4 * stats["self_score"]), stats
    return stats
