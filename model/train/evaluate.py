"""mAP@0.5 and per-class precision / recall / AP of a model on a held-out generated set.

    python -m model.train.evaluate --cfg model/data/traffic-lights-tiny-spp.cfg \
        --weights model/data/traffic-lights-tiny-spp.pt --seed 2026 --count 500 \
        --img-size 320 --scene-size 256

Scenes come from ``make_scene(seed, i, h, w)``; training samples are drawn from
(seed, epoch, i) triples, so no evaluation scene is ever a training scene. Images go
through the service's pipeline: letterbox, the network, non-maximum suppression, boxes
mapped back to the original image.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.darknet import Darknet
from model.postprocess import non_max_suppression, scale_boxes
from model.preprocess import letterbox, to_tensor
from model.train.dataset import source_shape
from model.train.metrics import DetectionStats
from model.train.scenes import Scene, make_scene
from model.weights import load_weights

logger = logging.getLogger(__name__)

DEFAULT_NAMES = Path(__file__).resolve().parent.parent / "data" / "traffic_light.names"


def held_out_scene(seed: int, index: int, size: int) -> Scene:
    """Scene ``index`` of the held-out set ``seed``, square or not, long side ``size``."""
    h, w = source_shape(np.random.default_rng([seed, 1_000_003, index]), size)
    return make_scene(seed, index, h, w)


@torch.no_grad()
def detect(net: Darknet, images: list[np.ndarray], img_size: int, conf_thres: float,
           iou_thres: float) -> list[np.ndarray]:
    """Detections (n, 6: x1y1x2y2 conf cls) in original pixels for BGR images."""
    boxed = [letterbox(img, img_size, stride=net.max_stride) for img in images]
    pred = net(to_tensor([b[0] for b in boxed]))[0]
    out = []
    for det, (_, ratio, pad), img in zip(non_max_suppression(pred, conf_thres, iou_thres),
                                         boxed, images):
        out.append(scale_boxes(det, ratio, pad, img.shape[:2]).numpy())
    return out


def evaluate(net: Darknet, seed: int, count: int, img_size: int, scene_size: int | None = None,
             batch: int = 16, conf_thres: float = 0.001, iou_thres: float = 0.5,
             progress: bool = False) -> DetectionStats:
    """Run ``net`` (switched to eval mode) on ``count`` held-out scenes; matched statistics."""
    net.eval()
    stats = DetectionStats(net.num_classes)
    size = scene_size or img_size
    bar = tqdm(total=count, desc="evaluate", disable=not progress, unit="img")
    for start in range(0, count, batch):
        scenes = [held_out_scene(seed, i, size) for i in range(start, min(count, start + batch))]
        dets = detect(net, [s.image for s in scenes], img_size, conf_thres, iou_thres)
        for det, scene in zip(dets, scenes):
            stats.add(det, scene.classes, scene.boxes)
        bar.update(len(scenes))
    bar.close()
    return stats


def format_table(stats: DetectionStats, names: list[str], conf_thres: float) -> str:
    """A text table: per class labels, P and R at ``conf_thres``, AP@0.5; then all classes."""
    rows = stats.results(conf_thres)
    lines = [f"{'class':<12}{'labels':>8}{'P':>8}{'R':>8}{'AP@0.5':>9}"]
    for name, r in zip(names, rows):
        lines.append(f"{name:<12}{r.labels:>8}{r.precision:>8.3f}{r.recall:>8.3f}{r.ap:>9.3f}")
    labelled = [r for r in rows if r.labels]
    lines.append(f"{'all':<12}{sum(r.labels for r in rows):>8}"
                 f"{np.nanmean([r.precision for r in labelled]):>8.3f}"
                 f"{np.nanmean([r.recall for r in labelled]):>8.3f}{stats.mean_ap():>9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--names", type=Path, default=DEFAULT_NAMES)
    parser.add_argument("--seed", type=int, default=2026, help="held-out set (not a training seed)")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--img-size", type=int, default=320, help="network input size")
    parser.add_argument("--scene-size", type=int, default=256,
                        help="long side of the generated scenes (the shipped model was trained "
                             "on 256-pixel scenes magnified to its 320-pixel input)")
    parser.add_argument("--conf-thres", type=float, default=0.3,
                        help="confidence for the P and R columns (AP uses every detection)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    names = args.names.read_text().split()
    net = Darknet(args.cfg, img_size=args.img_size)
    load_weights(net, args.weights)
    started = time.perf_counter()
    stats = evaluate(net, args.seed, args.count, args.img_size, args.scene_size, progress=True)
    elapsed = time.perf_counter() - started
    logger.info("%d images in %.1f s (%.1f ms/image including generation)", args.count, elapsed,
                1000 * elapsed / max(1, args.count))
    print(format_table(stats, names, args.conf_thres))


if __name__ == "__main__":
    main()
