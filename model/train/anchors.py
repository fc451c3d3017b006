"""Anchors fitted to generated data: k-means on box sizes with 1 - IoU as the distance.

    python -m model.train.anchors --cfg model/data/traffic-lights-tiny-spp.cfg \
        --img-size 320 --count 3000 --seed 0

rewrites every ``anchors =`` line of the cfg with the fitted anchors (sorted by area).
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import numpy as np

from model.train.dataset import source_shape
from model.train.scenes import make_scene

logger = logging.getLogger(__name__)

_ANCHORS_LINE = re.compile(r"^(\s*anchors\s*=).*$", re.MULTILINE)


def wh_iou(wh: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """IoU of (n, 2) sizes against (k, 2) sizes, boxes aligned at a corner: (n, k)."""
    inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * \
        np.minimum(wh[:, None, 1], centres[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centres[:, 0] * centres[:, 1])[None, :] - inter
    return inter / union


def kmeans_anchors(wh: np.ndarray, k: int, seed: int, iterations: int = 300) -> np.ndarray:
    """k anchor sizes (k, 2) sorted by area, clustering ``wh`` (n, 2) by 1 - IoU.

    Centres start at k-means++ style picks and move to the median of their members.
    """
    if len(wh) < k:
        raise ValueError(f"need at least {k} boxes to fit {k} anchors, got {len(wh)}")
    rng = np.random.default_rng(seed)
    centres = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        dist = 1.0 - wh_iou(wh, np.array(centres)).max(axis=1)
        p = dist ** 2
        centres.append(wh[rng.choice(len(wh), p=p / p.sum())])
    c = np.array(centres, dtype=np.float64)
    assign = np.full(len(wh), -1)
    for _ in range(iterations):
        new = wh_iou(wh, c).argmax(axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = wh[assign == j]
            if len(members):
                c[j] = np.median(members, axis=0)
    return c[np.argsort(c.prod(axis=1))]


def mean_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Average over boxes of the IoU with their best anchor."""
    return float(wh_iou(wh, anchors).max(axis=1).mean())


def write_anchors(cfg_text: str, anchors: np.ndarray) -> str:
    """``cfg_text`` with every ``anchors =`` line replaced by ``anchors`` (k, 2), rounded."""
    value = ",  ".join(f"{max(1, round(w))},{max(1, round(h))}" for w, h in anchors)
    text, count = _ANCHORS_LINE.subn(lambda m: f"{m.group(1)} {value}", cfg_text)
    if count == 0:
        raise ValueError("the cfg has no 'anchors =' line")
    return text


def collect_sizes(seed: int, count: int, img_size: int,
                  scene_size: int | None = None) -> np.ndarray:
    """Box sizes (n, 2) in input pixels of ``count`` generated scenes of long side
    ``scene_size`` (default ``img_size``) scaled to ``img_size``."""
    scene_size = scene_size or img_size
    rng = np.random.default_rng([seed, 7])
    sizes = []
    for i in range(count):
        h, w = source_shape(rng, scene_size)
        scene = make_scene(seed, i, h, w)
        sizes.append(scene.boxes[:, 2:4] - scene.boxes[:, 0:2])
    return np.concatenate(sizes).astype(np.float64) * (img_size / scene_size)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, required=True, help="cfg to rewrite in place")
    parser.add_argument("--img-size", type=int, default=320, help="network input size")
    parser.add_argument("--scene-size", type=int, default=None,
                        help="long side of the generated scenes (default: --img-size)")
    parser.add_argument("--count", type=int, default=3000, help="scenes to measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num", type=int, default=9, help="number of anchors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    wh = collect_sizes(args.seed, args.count, args.img_size, args.scene_size)
    anchors = kmeans_anchors(wh, args.num, args.seed)
    logger.info("%d boxes; anchors %s; mean best IoU %.3f", len(wh),
                np.round(anchors, 1).tolist(), mean_best_iou(wh, anchors))
    args.cfg.write_text(write_anchors(args.cfg.read_text(), anchors))
    logger.info("wrote anchors into %s", args.cfg)


if __name__ == "__main__":
    main()
