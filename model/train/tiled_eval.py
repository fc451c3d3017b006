"""Scores through the engine's own pipeline, tiles off and on: real photos and the
held-out small-light proxy (:mod:`model.train.proxy`), by label size at the network's view.

Each photo goes as the service takes it: its file's bytes (a made proxy scene: JPEG,
quality 95) decoded by
:func:`model.preprocess.decode_for_network` with the tile setting (a large photo is decoded
at a reduced scale when the windows allow it), then
:meth:`model.inference.Detector.detect_decoded_tiled` (per-class NMS at IoU 0.5, every
detection above 0.001, as :mod:`model.train.evaluate` scores). Sizes are the label's long
side at the network's view of the whole photo (photo pixels x 512 / long side), so a band
means the same thing for a 416-px CINTA photo and a 4032-px phone photo. The time per
photo is the wall time of decode + detection (median), on the threads the session has.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from model.darknet import Darknet
from model.inference import Detector
from model.preprocess import decode_for_network
from model.tiles import TileSetting
from model.train.metrics import VIEW_BANDS, agnostic_stats
from model.train.proxy import proxy_scene
from model.train.real import RealImage

SMALL_TARGET = (8.0, float("inf"))  # the proxy target: lights of 8 px and more at the view

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]
ImageResult = tuple[np.ndarray, np.ndarray, np.ndarray]  # detections, label classes, boxes


def to_view(result: ImageResult, scale: float) -> ImageResult:
    """``result`` with detection and label boxes multiplied by ``scale`` (photo pixels to
    the network's view of the whole photo: IoU is unchanged, sizes become view sizes)."""
    det, cls, boxes = result
    det = np.asarray(det, np.float64).reshape(-1, 6).copy()
    det[:, :4] *= scale
    return det, cls, np.asarray(boxes, np.float64).reshape(-1, 4) * scale


def engine(net: Darknet, names: list[str], img_size: int,
           forward: Forward | None = None) -> Detector:
    """The engine's Detector around an evaluated network (and its ONNX Runtime runner)."""
    return Detector(net.eval(), names, torch.device("cpu"), img_size, "evaluated",
                    runner=forward, backend="onnxruntime" if forward else "torch")


@dataclass
class TiledRun:
    """Results (in view pixels), forward passes and seconds of each photo of one run."""

    tiles: TileSetting
    results: list[ImageResult] = field(default_factory=list)
    passes: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


Photo = tuple[bytes | np.ndarray, np.ndarray, np.ndarray]  # file bytes or BGR, labels


def run_tiled(detector: Detector, photos: Iterable[Photo], tiles: TileSetting,
              conf_thres: float = 0.001, iou_thres: float = 0.5) -> TiledRun:
    """Run every (file bytes or BGR image, classes, boxes in its pixels) through the
    service's path."""
    run = TiledRun(tiles)
    for img, classes, boxes in photos:
        if isinstance(img, bytes):
            data = img
        else:
            ok, encoded = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise ValueError("cannot encode the photo as JPEG")
            data = encoded.tobytes()
        started = time.perf_counter()
        decoded = decode_for_network(data, None, detector.img_size, tiles)
        found = detector.detect_decoded_tiled([decoded], tiles, conf_thres, iou_thres,
                                              max_det=1000)[0]
        run.seconds.append(time.perf_counter() - started)
        run.passes.append(found.passes)
        det = np.array([[*d.box, d.confidence, d.class_id] for d in found.detections],
                       np.float64).reshape(-1, 6)
        long_side = max(decoded.width, decoded.height)
        run.results.append(to_view((det, classes, boxes), detector.img_size / long_side))
    return run


def real_photos(photos: list[RealImage]) -> Iterator[Photo]:
    """The labelled photos' file bytes and labels (in pixels), one at a time."""
    for photo in photos:
        _, classes, boxes = photo.load()
        yield photo.path.read_bytes(), classes, boxes


def proxy_photos(photos: list[RealImage], seed: int, canvas: tuple[int, int], count: int,
                 view: int = 512) -> Iterator[Photo]:
    """``count`` proxy scenes of one canvas size, built one at a time."""
    for i in range(count):
        scene = proxy_scene(photos, seed, canvas, i, view)
        yield scene.image, scene.classes, scene.boxes


def band_rows(results: list[ImageResult], conf_thres: float) -> list[tuple[str, int, float,
                                                                           float, float, float]]:
    """(band, labels, P, R, AP@0.5, R@0.3) class-agnostic: all, >= 8 px, each view band."""
    rows = []
    bands = (("all", None), (">=8", SMALL_TARGET)) + tuple(
        (label, (low, high)) for label, low, high in VIEW_BANDS)
    for label, band in bands:
        a = agnostic_stats(results, 0.5, band).results(conf_thres)[0]
        b = agnostic_stats(results, 0.3, band).results(conf_thres)[0]
        rows.append((label, a.labels, a.precision, a.recall, a.ap, b.recall))
    return rows


def format_runs(title: str, runs: list[TiledRun], conf_thres: float) -> str:
    """One table per run (tiles setting): the bands, passes and time per photo."""
    lines = [f"{title}: P and R at confidence {conf_thres}, class-agnostic, label long "
             "side at the network's view"]
    head = f"{'tiles':<8}{'band':<8}{'labels':>7}{'P':>7}{'R':>7}{'AP@0.5':>8}{'R@0.3':>7}"
    lines.append(head)
    for run in runs:
        for label, labels, p, r, ap, r30 in band_rows(run.results, conf_thres):
            lines.append(f"{str(run.tiles):<8}{label:<8}{labels:>7}{p:>7.3f}{r:>7.3f}"
                         f"{ap:>8.3f}{r30:>7.3f}")
        if run.seconds:
            lines.append(f"{str(run.tiles):<8}{len(run.results)} photos, passes per photo "
                         f"{statistics.mean(run.passes):.1f}, median "
                         f"{1000 * statistics.median(run.seconds):.0f} ms per photo "
                         "(decode + detect)")
    return "\n".join(lines)
