"""Scores of a model on held-out real photos and on a held-out generated set.

    python -m model.train.evaluate --cfg model/data/traffic-lights-yolov3-tiny.cfg \
        --weights model/data/traffic-lights-yolov3-tiny.pt --seed 2026 --count 500 \
        --img-size 512 --scene-size 256 --real ../shared/datasets/cinta-train

With ``--real`` (a folder of ``images/`` + YOLO ``labels/``, e.g. CINTA), the held-out
split of those photos (by source photo, see :mod:`model.train.real`) is scored first,
through the engine's own pipeline (:mod:`model.train.tiled_eval`) once per ``--tiles``
setting (default: off and auto): per class and class-agnostic precision / recall (at
``--conf-thres``) and AP at IoU 0.5 and 0.3, per size band (the label's long side at the
network's view: <8, 8-16, 16-32, 32-96, >96 px), and the share of found lights given the
right colour. Then the held-out small-light proxy (:mod:`model.train.proxy`,
``--proxy-count`` scenes per canvas size 1280x960, 1920x1080, 4032x3024; 0: none), per
canvas and tiles setting, with passes and time per photo. Then, unless ``--count 0``,
the generated set (mAP@0.5 per class; its 256-px scenes are never tiled).

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

import cv2
import numpy as np
import torch
from tqdm import tqdm

from model.darknet import Darknet
from model.postprocess import non_max_suppression, scale_boxes
from model.preprocess import letterbox, to_tensor
from model.tiles import parse_tiles
from model.train.dataset import source_shape
from model.train.metrics import (
    VIEW_BANDS,
    DetectionStats,
    agnostic_stats,
    colour_accuracy,
)
from model.train.proxy import CANVASES, proxy_scene
from model.train.real import CLASS_COLOUR, RealImage, list_real
from model.train.scenes import Scene, make_scene
from model.train.tiled_eval import (
    Forward,
    ImageResult,
    engine,
    format_runs,
    proxy_photos,
    real_photos,
    run_tiled,
    to_view,
)
from model.weights import load_weights

logger = logging.getLogger(__name__)

DEFAULT_NAMES = Path(__file__).resolve().parent.parent / "data" / "traffic_light.names"


def held_out_scene(seed: int, index: int, size: int) -> Scene:
    """Scene ``index`` of the held-out set ``seed``, square or not, long side ``size``."""
    h, w = source_shape(np.random.default_rng([seed, 1_000_003, index]), size)
    return make_scene(seed, index, h, w)




@torch.no_grad()
def detect(net: Darknet, images: list[np.ndarray], img_size: int, conf_thres: float,
           iou_thres: float, forward: Forward | None = None) -> list[np.ndarray]:
    """Detections (n, 6: x1y1x2y2 conf cls) in original pixels for BGR images; ``forward``
    runs the network instead of ``net`` (e.g. an ONNX Runtime session of it)."""
    boxed = [letterbox(img, img_size, stride=net.max_stride) for img in images]
    pred = (forward or net)(to_tensor([b[0] for b in boxed]))[0]
    out = []
    for det, (_, ratio, pad), img in zip(non_max_suppression(pred, conf_thres, iou_thres),
                                         boxed, images):
        out.append(scale_boxes(det, ratio, pad, img.shape[:2]).numpy())
    return out


def evaluate(net: Darknet, seed: int, count: int, img_size: int, scene_size: int | None = None,
             batch: int = 16, conf_thres: float = 0.001, iou_thres: float = 0.5,
             progress: bool = False, forward: Forward | None = None) -> DetectionStats:
    """Run ``net`` (switched to eval mode) on ``count`` held-out scenes; matched statistics."""
    net.eval()
    stats = DetectionStats(net.num_classes)
    size = scene_size or img_size
    bar = tqdm(total=count, desc="evaluate", disable=not progress, unit="img")
    for start in range(0, count, batch):
        scenes = [held_out_scene(seed, i, size) for i in range(start, min(count, start + batch))]
        dets = detect(net, [s.image for s in scenes], img_size, conf_thres, iou_thres, forward)
        for det, scene in zip(dets, scenes):
            stats.add(det, scene.classes, scene.boxes)
        bar.update(len(scenes))
    bar.close()
    return stats


def run_proxy(net: Darknet, photos: list[RealImage], seed: int, count: int, img_size: int,
              canvases: tuple[tuple[int, int], ...] = ((1280, 960),), conf_thres: float = 0.001,
              iou_thres: float = 0.5, forward: Forward | None = None) -> list[ImageResult]:
    """The whole-photo (untiled) results on ``count`` proxy scenes of each canvas, in view
    pixels (see :mod:`model.train.proxy`)."""
    net.eval()
    out: list[ImageResult] = []
    for canvas in canvases:
        for i in range(count):
            scene = proxy_scene(photos, seed, canvas, i, img_size)
            det = detect(net, [scene.image], img_size, conf_thres, iou_thres, forward)[0]
            out.append(to_view((det, scene.classes, scene.boxes),
                               img_size / max(scene.image.shape[:2])))
    return out


def run_real(net: Darknet, photos: list[RealImage], img_size: int, conf_thres: float = 0.001,
             iou_thres: float = 0.5, batch: int = 8, progress: bool = False,
             forward: Forward | None = None) -> list[ImageResult]:
    """Detections (in photo pixels) and labels of every photo, through the service pipeline."""
    net.eval()
    out: list[ImageResult] = []
    bar = tqdm(total=len(photos), desc="real photos", disable=not progress, unit="img")
    for start in range(0, len(photos), batch):
        loaded = [p.load() for p in photos[start:start + batch]]
        dets = detect(net, [img for img, _, _ in loaded], img_size, conf_thres, iou_thres,
                      forward)
        out += [(det, cls, boxes) for det, (_, cls, boxes) in zip(dets, loaded)]
        bar.update(len(loaded))
    bar.close()
    return out


def real_stats(results: list[ImageResult], num_classes: int, iou_thres: float
               ) -> DetectionStats:
    """Per-class statistics of ``run_real`` results at one IoU."""
    stats = DetectionStats(num_classes, iou_thres)
    for det, cls, boxes in results:
        stats.add(det, cls, boxes)
    return stats


def real_summary(results: list[ImageResult], conf_thres: float = 0.3) -> dict[str, float]:
    """The headline numbers: class-agnostic P, R, AP@0.5 and AP@0.3, and colour accuracy."""
    s50 = agnostic_stats(results, 0.5).results(conf_thres)[0]
    s30 = agnostic_stats(results, 0.3).results(conf_thres)[0]
    found, colour, exact = colour_accuracy(results, CLASS_COLOUR, conf_thres)
    return {"labels": s50.labels, "precision": s50.precision, "recall": s50.recall,
            "ap50": s50.ap, "recall30": s30.recall, "ap30": s30.ap, "found": found,
            "colour": colour / found if found else float("nan"),
            "class": exact / found if found else float("nan")}


def format_real(results: list[ImageResult], names: list[str], conf_thres: float) -> str:
    """The real-photo tables: per class, class-agnostic per size band (of the boxes as
    given: pass them at the network's view, :func:`to_view`), colour accuracy."""
    r50 = real_stats(results, len(names), 0.5).results(conf_thres)
    r30 = real_stats(results, len(names), 0.3).results(conf_thres)
    head = (f"{'':<12}{'labels':>8}{'P':>8}{'R':>8}{'AP@0.5':>9}{'R@0.3':>8}{'AP@0.3':>9}")
    lines = [(f"real photos: {len(results)} images, P/R at confidence {conf_thres}, "
              "R@0.3 / AP@0.3: at IoU 0.3"), "per class", head]
    dets = sum(int((np.asarray(d)[:, 4] > conf_thres).sum()) for d, _, _ in results)
    for name, a, b in zip(names, r50, r30):
        lines.append(f"{name:<12}{a.labels:>8}{a.precision:>8.3f}{a.recall:>8.3f}{a.ap:>9.3f}"
                     f"{b.recall:>8.3f}{b.ap:>9.3f}")
    lines += ["class-agnostic, by label long side (pixels at the network's view)", head]
    for label, low, high in (("all", 0.0, np.inf),) + VIEW_BANDS:
        band = None if label == "all" else (low, high)
        a = agnostic_stats(results, 0.5, band).results(conf_thres)[0]
        b = agnostic_stats(results, 0.3, band).results(conf_thres)[0]
        lines.append(f"{label:<12}{a.labels:>8}{a.precision:>8.3f}{a.recall:>8.3f}{a.ap:>9.3f}"
                     f"{b.recall:>8.3f}{b.ap:>9.3f}")
    found, colour, exact = colour_accuracy(results, CLASS_COLOUR, conf_thres)
    if found:
        lines.append(f"colour right on {colour}/{found} found lights ({colour / found:.3f}); "
                     f"exact class right on {exact}/{found} ({exact / found:.3f}); "
                     f"{dets} detections above {conf_thres}")
    return "\n".join(lines)


def _nanmean(values: list[float]) -> float:
    """Mean of the values that are not NaN (NaN, without a warning, when there are none)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def format_table(stats: DetectionStats, names: list[str], conf_thres: float) -> str:
    """A text table: per class labels, P and R at ``conf_thres``, AP@0.5; then all classes."""
    rows = stats.results(conf_thres)
    lines = [f"{'class':<12}{'labels':>8}{'P':>8}{'R':>8}{'AP@0.5':>9}"]
    for name, r in zip(names, rows):
        lines.append(f"{name:<12}{r.labels:>8}{r.precision:>8.3f}{r.recall:>8.3f}{r.ap:>9.3f}")
    labelled = [r for r in rows if r.labels]
    lines.append(f"{'all':<12}{sum(r.labels for r in rows):>8}"
                 f"{_nanmean([r.precision for r in labelled]):>8.3f}"
                 f"{_nanmean([r.recall for r in labelled]):>8.3f}{stats.mean_ap():>9.3f}")
    return "\n".join(lines)


def _forward(net: Darknet, args: argparse.Namespace) -> Forward | None:
    """The ONNX Runtime session to run instead of ``net`` (None: PyTorch)."""
    if args.backend == "torch" and args.precision == "fp32":
        return None
    from model.onnx_backend import OnnxRunner
    from model.quantize import Calibration

    photos: tuple[Path, ...] = ()
    if args.calibration_photos is not None:
        train = list_real(args.calibration_photos, "train")
        step = max(1, len(train) // (args.calibration_count or 48))
        photos = tuple(p.path for p in train[::step][:args.calibration_count or 48])
    net.fuse()
    runner = OnnxRunner.from_darknet(
        net, (args.img_size, args.img_size), args.onnx_cache, args.threads, args.precision,
        Calibration(photos=photos, exclude_heads=not args.int8_heads,
                    averaging=None if args.global_ranges else Calibration.averaging))
    logger.info("running %s (%s) in ONNX Runtime", runner.path.name, runner.precision)
    return runner


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--names", type=Path, default=DEFAULT_NAMES)
    parser.add_argument("--seed", type=int, default=2026, help="held-out set (not a training seed)")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--img-size", type=int, default=512,
                        help="network input size (the service runs at 512)")
    parser.add_argument("--scene-size", type=int, default=256,
                        help="long side of the generated scenes (the shipped model was trained "
                             "on 256-pixel scenes magnified to its 320-pixel input)")
    parser.add_argument("--conf-thres", type=float, default=0.3,
                        help="confidence for the P and R columns (AP uses every detection)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--real", type=Path, default=None,
                        help="folder with images/ and YOLO labels/ (e.g. CINTA): score its "
                             "held-out split too")
    parser.add_argument("--split", default="val", choices=("val", "train", "all"),
                        help="which part of --real to score (default: the held-out split)")
    parser.add_argument("--negatives", type=Path, nargs="*", default=[],
                        help="photos without traffic lights: list what is found on them at "
                             "--negative-conf (the service's default confidence)")
    parser.add_argument("--negative-conf", type=float, default=0.5)
    parser.add_argument("--tiles", nargs="+", default=["off", "auto"],
                        help="tile settings to score the real photos, the proxy and the "
                             "negatives with (model.tiles: off, auto, SIZE:OVERLAP)")
    parser.add_argument("--proxy-count", type=int, default=40,
                        help="small-light proxy scenes per canvas size (needs --real; 0: none)")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnxruntime"),
                        help="what runs the network: PyTorch, or ONNX Runtime on its export "
                             "(the service's CPU backend)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "int8"),
                        help="int8: ONNX Runtime on the int8 quantization (model.quantize) "
                             "the service runs with workers.precision: int8")
    parser.add_argument("--onnx-cache", type=Path, default=None,
                        help="keep the ONNX (and int8) exports here and reuse them")
    parser.add_argument("--int8-heads", action="store_true",
                        help="int8: quantize the convolution before each YOLO head too "
                             "(default: it stays fp32)")
    parser.add_argument("--global-ranges", action="store_true",
                        help="int8: calibrate to the extremes over every image instead of "
                             "the moving average of the per-image ones")
    parser.add_argument("--calibration-photos", type=Path, default=None,
                        help="int8: also calibrate on the train split of this folder of "
                             "images/ + labels/ (e.g. CINTA), never on the held-out split")
    parser.add_argument("--calibration-count", type=int, default=None,
                        help="int8: how many of those photos (default: 48)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    names = args.names.read_text().split()
    net = Darknet(args.cfg, img_size=args.img_size)
    load_weights(net, args.weights)
    net.eval()
    forward = _forward(net, args)
    detector = engine(net, names, args.img_size, forward)
    settings = [parse_tiles(t) for t in args.tiles]
    for path in args.negatives:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"{path}: not a readable image")
        for setting in settings:
            found = detector.detect_tiled([img], setting, args.negative_conf, 0.45,
                                          agnostic=True)[0]
            listed = ", ".join(f"{d.label} {d.confidence:.2f}" for d in found.detections)
            print(f"{path.name} (no traffic lights) at confidence {args.negative_conf}, tiles "
                  f"{setting} ({found.passes} passes): {len(found.detections)} detections: "
                  f"{listed or 'nothing'}")
    if args.real is not None:
        photos = list_real(args.real, args.split)
        for setting in settings:
            started = time.perf_counter()
            run = run_tiled(detector, real_photos(photos), setting)
            logger.info("%d real photos (%d sources), tiles %s, in %.1f s", len(photos),
                        len({p.source for p in photos}), setting, time.perf_counter() - started)
            print(f"tiles {setting}: " + format_real(run.results, names, args.conf_thres))
            print()
        held = list_real(args.real, "val")
        for canvas in CANVASES if args.proxy_count > 0 else ():
            runs = [run_tiled(detector, proxy_photos(held, args.seed, canvas, args.proxy_count,
                                                     args.img_size), setting)
                    for setting in settings]
            print(format_runs(f"small-light proxy {canvas[0]}x{canvas[1]} (seed {args.seed}, "
                              f"{args.proxy_count} scenes)", runs, args.conf_thres))
            print()
    if args.count <= 0:
        return
    started = time.perf_counter()
    stats = evaluate(net, args.seed, args.count, args.img_size, args.scene_size, progress=True,
                     forward=forward)
    elapsed = time.perf_counter() - started
    logger.info("%d images in %.1f s (%.1f ms/image including generation)", args.count, elapsed,
                1000 * elapsed / max(1, args.count))
    print(format_table(stats, names, args.conf_thres))


if __name__ == "__main__":
    main()
