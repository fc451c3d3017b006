"""CI guard: the shipped default model still finds real traffic lights.

Twelve real photos from the held-out split of the CINTA set (never trained on; credits and
labels in tests/data/real/) go through the engine exactly as the service runs it: the
default model of the service's config (``$YOLO_CONFIG``, else ``config/config.yaml``, read
by ``settings.load_config`` as ``python -m service.detect_cli`` reads it) with its input size,
thresholds, NMS settings, tiles and backend, the JPEG bytes decoded by
``decode_for_network`` and detected by ``Detector.detect_decoded_tiled``. The test
fails when the share of lights found (class-agnostic, IoU >= 0.5) or the share of found
lights given the right colour drops below a bound just under what the shipped model
scores (see model/data/README.md). Needs nothing outside the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.detect import DetectSettings as ServiceModel
from model.inference import Detector
from model.preprocess import decode_for_network
from service.detect_cli import model_settings
from settings import load_config

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "tests" / "data" / "real"
COLOUR = (0, 1, 1, 0, 2, 2)  # go, stop, stopLeft, goLeft, warning, warningLeft -> g, r, y

# Measured on these 12 photos (15 lights) with the shipped model at the service defaults
# (512, confidence 0.5, agnostic NMS): 7 of 15 lights found (0.47), all 7 the right colour;
# see model/data/README.md. The bounds sit just under (6 of 15; 6 of 7).
MIN_RECALL = 0.40
MIN_COLOUR = 0.85


def _labels(path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.array([[float(v) for v in line.split()] for line in path.read_text().splitlines()
                     if line.strip()]).reshape(-1, 5)
    cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
    return rows[:, 0].astype(int), np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    tl = np.maximum(box[:2], boxes[:, :2])
    br = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(br - tl, 0, None).prod(1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(box) + area(boxes) - inter)


def _row(det: Any) -> tuple[tuple[float, float, float, float], float, int]:
    if isinstance(det, dict):  # the JSON shape
        b = det["box"]
        return (b["x1"], b["y1"], b["x2"], b["y2"]), det["confidence"], det["class_id"]
    return (det.x1, det.y1, det.x2, det.y2), det.confidence, det.class_id


@pytest.fixture(scope="module")
def service_model() -> ServiceModel:
    return model_settings(load_config())


@pytest.fixture(scope="module")
def detector(service_model: ServiceModel, tmp_path_factory: pytest.TempPathFactory) -> Detector:
    m = service_model
    return Detector.load(m.cfg, m.weights, m.names, img_size=m.img_size, device="cpu",
                         backend=m.backend, onnx_cache_dir=tmp_path_factory.mktemp("onnx"),
                         threads=2, precision=m.precision)


def _detect(detector: Detector, m: ServiceModel, photo: Path) -> tuple[Any, list[Any]]:
    """The decoded photo and its detections, as the service's workers get them."""
    decoded = decode_for_network(photo.read_bytes(), input_size=detector.img_size,
                                 tiles=m.tiles)
    found = detector.detect_decoded_tiled([decoded], m.tiles, m.conf_thres, m.iou_thres,
                                          agnostic=m.agnostic_nms, max_det=m.max_det)[0]
    return decoded, found.detections


def _detections(detector: Detector, m: ServiceModel, photo: Path) -> list[Any]:
    return [_row(d) for d in _detect(detector, m, photo)[1]]


def test_shipped_model_finds_real_traffic_lights(service_model: ServiceModel,
                                                 detector: Detector) -> None:
    m = service_model
    photos = sorted(PHOTOS.glob("*.jpg"))
    assert len(photos) >= 10, f"the committed real photos are missing from {PHOTOS}"
    labels = found = colour_right = 0
    missed = []
    for photo in photos:
        decoded, dets = _detect(detector, m, photo)
        gt_cls, gt_boxes = _labels(photo.with_suffix(".txt"), decoded.width, decoded.height)
        used = np.zeros(len(gt_cls), bool)
        for box, _, cls in sorted((_row(d) for d in dets), key=lambda r: -r[1]):
            ious = np.where(used, -1.0, _iou(np.array(box), gt_boxes))
            j = int(np.argmax(ious)) if len(ious) else -1
            if j >= 0 and ious[j] >= 0.5:
                used[j] = True
                found += 1
                colour_right += COLOUR[cls] == COLOUR[int(gt_cls[j])]
        labels += len(gt_cls)
        missed += [photo.name] * int((~used).sum())
    recall = found / labels
    assert recall >= MIN_RECALL, (f"the shipped model found {found} of {labels} real lights "
                                  f"(recall {recall:.2f} < {MIN_RECALL}); missed in {missed}")
    assert colour_right / found >= MIN_COLOUR, (
        f"only {colour_right} of {found} found lights got the right colour")


def test_int8_finds_the_lights_fp32_finds(service_model: ServiceModel,
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    """workers.precision: int8 on the shipped model: on the committed real photos, at the
    service's settings, every confident fp32 light is found by int8 (same colour, same
    place: IoU >= 0.6, a confidence near fp32's), and int8 finds nothing confident that
    fp32 does not.  Detections near the threshold may fall either side of it."""
    m = service_model
    cache = tmp_path_factory.mktemp("onnx-int8")
    load: dict[str, Any] = {"img_size": m.img_size, "device": "cpu",
                            "backend": "onnxruntime", "onnx_cache_dir": cache, "threads": 2}
    fp32 = Detector.load(m.cfg, m.weights, m.names, precision="fp32", **load)
    int8 = Detector.load(m.cfg, m.weights, m.names, precision="int8", **load)
    assert int8.precision == "int8" and "-int8-" in int8.runner.path.name
    low = m.replace(conf_thres=m.conf_thres - 0.15)  # what may sit just under the threshold
    compared = 0
    for photo in sorted(PHOTOS.glob("*.jpg")):
        pairs = ((_detections(fp32, m, photo), _detections(int8, low, photo)),
                 (_detections(int8, m, photo), _detections(fp32, low, photo)))
        for confident, others in pairs:
            for box, conf, cls in confident:
                if conf < m.conf_thres + 0.1:
                    continue  # near the threshold: the other may have it just under
                compared += 1
                match = [(c, k) for b, c, k in others
                         if _iou(np.array(box), np.array([b]))[0] >= 0.6]
                assert any(COLOUR[k] == COLOUR[cls] and abs(c - conf) < 0.12
                           for c, k in match), (
                    f"{photo.name}: {box} {conf:.2f} class {cls} has no match in {others}")
    assert compared >= 10, "the photos have confident lights to compare"
