"""Tests for model.inference on a tiny two-head network (tests/data/tiny.cfg), random weights."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.darknet import Darknet
from model.detection import Detection
from model.errors import CfgError, ImageError, ModelError, WeightsError
from model.inference import Detector, read_names, select_device
from model.preprocess import DecodedImage
from model.weights import load_weights, save_weights
from tests.paths import DATA_DIR

DATA = DATA_DIR
CFG = DATA / "tiny.cfg"
NAMES = DATA / "tiny.names"
CONF = 0.3


def _spread_weights(net: Darknet, seed: int) -> Darknet:
    """Random weights large enough that confidences spread over 0..1 (PyTorch's default
    initialisation gives nearly 0.5 everywhere, hence near-ties), with random BN stats."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.4)
    return net


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "spread.weights"
    save_weights(_spread_weights(Darknet(CFG, 64), seed=0), path)
    return path


@pytest.fixture(scope="module")
def detector(weights_file: Path) -> Detector:
    return Detector.load(CFG, weights_file, NAMES, img_size=64, device="cpu")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8)
            for shape in [(48, 80, 3), (100, 60, 3), (64, 64, 3), (30, 31, 3)]]


def _reference_detections(net: Darknet, img: np.ndarray, size: int) -> np.ndarray:
    """The pipeline written out independently: resize/pad by hand, forward, greedy NMS."""
    h0, w0 = img.shape[:2]
    r = min(size / h0, size / w0)
    new_w, new_h = round(w0 * r), round(h0 * r)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[top:top + new_h, left:left + new_w] = cv2.resize(
        img, (new_w, new_h), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    x = torch.from_numpy(canvas[..., ::-1].transpose(2, 0, 1).copy()).float()[None] / 255
    with torch.no_grad():
        pred = net(x)[0][0].double().numpy()
    conf = pred[:, 4:5] * pred[:, 5:]
    cls, best = conf.argmax(1), conf.max(1)
    order = [i for i in np.argsort(-best, kind="stable") if best[i] > CONF]
    kept: list[int] = []
    for i in order:
        box = np.r_[pred[i, :2] - pred[i, 2:4] / 2, pred[i, :2] + pred[i, 2:4] / 2]
        ok = True
        for j in kept:
            if cls[j] != cls[i]:
                continue
            other = np.r_[pred[j, :2] - pred[j, 2:4] / 2, pred[j, :2] + pred[j, 2:4] / 2]
            iw = max(0, min(box[2], other[2]) - max(box[0], other[0]))
            ih = max(0, min(box[3], other[3]) - max(box[1], other[1]))
            inter = iw * ih
            union = np.prod(box[2:] - box[:2]) + np.prod(other[2:] - other[:2]) - inter
            ok &= inter / union <= 0.6
        if ok:
            kept.append(i)
    rows = []
    for i in kept:
        cx, cy, w, h = pred[i, :4]
        x1 = np.clip((cx - w / 2 - left) / r, 0, w0)
        x2 = np.clip((cx + w / 2 - left) / r, 0, w0)
        y1 = np.clip((cy - h / 2 - top) / r, 0, h0)
        y2 = np.clip((cy + h / 2 - top) / r, 0, h0)
        if x2 > x1 and y2 > y1:
            rows.append([x1, y1, x2, y2, best[i], cls[i]])
    return np.array(rows).reshape(-1, 6)


def _as_rows(dets: list[dict]) -> np.ndarray:
    return np.array([[d.x1, d.y1, d.x2, d.y2,
                      d.confidence, d.class_id] for d in dets]).reshape(-1, 6)


def test_load_sets_attributes(detector: Detector) -> None:
    assert detector.names == ["red", "green"]
    assert detector.device == torch.device("cpu")
    assert detector.img_size == 64 and detector.stride == 16
    assert detector.model_name == "tiny:spread"
    assert not detector.model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.model.modules())


def test_detect_matches_independent_pipeline(detector: Detector) -> None:
    images = _images()
    results = detector.detect(images, conf_thres=CONF)
    assert sum(len(r) for r in results) > 0
    for img, dets in zip(images, results, strict=True):
        expected = _reference_detections(detector.model, img, 64)
        got = _as_rows(dets)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=0.011)


def test_detection_shape(detector: Detector) -> None:
    dets = detector.detect(_images()[:1], conf_thres=CONF)[0]
    assert dets
    for det in dets:
        assert isinstance(det, Detection)
        assert set(det.to_json()) == {"label", "class_id", "confidence", "box"}
        assert Detection.from_json(det.to_json()) == det
        assert det.label == detector.names[det.class_id]
        assert isinstance(det.class_id, int) and isinstance(det.confidence, float)
        assert set(det.to_json()["box"]) == {"x1", "y1", "x2", "y2"}
        assert all(isinstance(v, float) for v in det.box)
        assert 0 <= det.x1 <= det.x2 <= 80
        assert 0 <= det.y1 <= det.y2 <= 48
    confidences = [d.confidence for d in dets]
    assert confidences == sorted(confidences, reverse=True)


def test_batch_of_different_sizes_equals_one_by_one(detector: Detector) -> None:
    images = _images()
    batched = detector.detect(images, conf_thres=CONF)
    for img, dets in zip(images, batched, strict=True):
        single = detector.detect([img], conf_thres=CONF)[0]
        assert [d.class_id for d in single] == [d.class_id for d in dets]
        np.testing.assert_allclose(_as_rows(single), _as_rows(dets), atol=0.011)


def test_detect_thresholds_and_max_det(detector: Detector) -> None:
    img = _images()[:1]
    assert detector.detect(img, conf_thres=1.0) == [[]]
    assert len(detector.detect(img, conf_thres=CONF, max_det=2)[0]) == 2
    assert detector.detect([]) == []


def test_detect_rejects_non_image_arrays(detector: Detector) -> None:
    with pytest.raises(ImageError):
        detector.detect([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ImageError):
        detector.detect([np.zeros((10, 10, 3), np.float32)])


def test_warmup(detector: Detector) -> None:
    detector.warmup()


def test_loaded_weights_are_used(detector: Detector, weights_file: Path) -> None:
    source = Darknet(CFG, 64)
    load_weights(source, weights_file)
    source.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(detector.model(x)[0], source(x)[0], atol=1e-3, rtol=1e-3)


def test_load_without_weights_is_random() -> None:
    det = Detector.load(CFG, None, NAMES, img_size=64, device="cpu")
    assert det.model_name == "tiny"
    assert det.detect(_images()[:1], conf_thres=0.0, max_det=5)[0]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CfgError):
        Detector.load(tmp_path / "missing.cfg", None, NAMES, img_size=64, device="cpu")
    with pytest.raises(WeightsError):
        Detector.load(CFG, tmp_path / "missing.weights", NAMES, img_size=64, device="cpu")
    with pytest.raises(ModelError, match="names"):
        Detector.load(CFG, None, tmp_path / "missing.names", img_size=64, device="cpu")
    three = tmp_path / "three.names"
    three.write_text("a\nb\nc\n")
    with pytest.raises(ModelError, match="3 class names"):
        Detector.load(CFG, None, three, img_size=64, device="cpu")
    with pytest.raises(ModelError, match="multiple of the network's largest stride, 16"):
        Detector.load(CFG, None, NAMES, img_size=72, device="cpu")
    with pytest.raises(ValueError, match="unknown device"):
        Detector.load(CFG, None, NAMES, img_size=64, device="tpu")


def test_read_names_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.names"
    path.write_text("car\n\n  traffic light \n")
    assert read_names(path) == ["car", "traffic light"]


def test_select_device_cpu_and_errors() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cuda:-1", ""):
        with pytest.raises(ValueError, match="unknown device"):
            select_device(bad)


def test_select_device_auto() -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        assert select_device("auto", index=gpus + 1) == torch.device(f"cuda:{1 % gpus}")
    else:
        assert select_device("auto", index=3) == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA GPU"):
            select_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_detect_on_gpu_matches_cpu(detector: Detector) -> None:
    gpu = Detector.load(CFG, None, NAMES, img_size=64, device="cuda:0")
    assert gpu.half and next(gpu.model.parameters()).dtype == torch.float16
    gpu.model.load_state_dict(detector.model.state_dict())  # cast to fp16
    images = _images()
    for cpu_dets, gpu_dets in zip(detector.detect(images, conf_thres=CONF),
                                  gpu.detect(images, conf_thres=CONF), strict=True):
        # fp16 carries ~3 significant digits: boxes within a few hundredths of a pixel.
        np.testing.assert_allclose(_as_rows(gpu_dets), _as_rows(cpu_dets), rtol=5e-3,
                                   atol=0.05)


def test_detect_decoded_maps_boxes_of_a_reduced_decode_to_the_original(
        detector: Detector) -> None:
    small = _images()[0]
    h, w = small.shape[:2]
    # As if a JPEG of (2w - 1) x 2h had been decoded at 1/2 scale.
    decoded = DecodedImage(small, width=2 * w - 1, height=2 * h)
    plain = detector.detect([small], conf_thres=CONF)[0]
    mapped = detector.detect_decoded([decoded], conf_thres=CONF)[0]
    assert len(mapped) == len(plain) > 0
    for a, b in zip(plain, mapped, strict=True):
        assert (a.label, a.confidence) == (b.label, b.confidence)
        sx, sy = (2 * w - 1) / w, 2.0
        expected = [min(a.x1 * sx, 2 * w - 1), min(a.y1 * sy, 2 * h),
                    min(a.x2 * sx, 2 * w - 1), min(a.y2 * sy, 2 * h)]
        np.testing.assert_allclose(list(b.box), expected, atol=0.006)
    whole = DecodedImage(small, width=w, height=h)
    assert detector.detect_decoded([whole], conf_thres=CONF)[0] == plain


def _stacked_runner(batch: torch.Tensor) -> tuple[torch.Tensor]:
    """One traffic light seen as three classes (the boxes stacked on each other) plus a
    second, separate light: what the network hands to NMS, for every image."""
    rows = [[20, 20, 10, 24, 0.9, 0.9, 0.05, 0.05],   # class 0, conf 0.81
            [20, 21, 10, 24, 0.9, 0.1, 0.8, 0.1],     # class 1, conf 0.72
            [21, 20, 10, 24, 0.9, 0.1, 0.1, 0.7],     # class 2, conf 0.63
            [48, 40, 8, 16, 0.6, 0.1, 0.9, 0.0]]      # class 1, conf 0.54, elsewhere
    return (torch.tensor(rows).expand(len(batch), -1, -1).clone(),)


@pytest.fixture(scope="module")
def stacked() -> Detector:
    net = Darknet(DATA / "service-6cls.cfg", 64).eval()
    net.num_classes = 3
    return Detector(net, ["stop", "go", "warning"], torch.device("cpu"), 64, "fake",
                    runner=_stacked_runner)


def test_agnostic_nms_keeps_one_box_per_object(stacked: Detector) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    per_class = stacked.detect([image], conf_thres=0.3, iou_thres=0.45)[0]
    assert [d.label for d in per_class] == ["stop", "go", "warning", "go"]
    agnostic = stacked.detect([image], conf_thres=0.3, iou_thres=0.45, agnostic=True)[0]
    assert [(d.label, round(d.confidence, 2)) for d in agnostic] == [("stop", 0.81),
                                                                     ("go", 0.54)]


def test_max_det_and_per_image_nms_settings(stacked: Detector) -> None:
    images = [np.zeros((64, 64, 3), np.uint8)] * 3
    capped = stacked.detect(images[:1], conf_thres=0.3, max_det=2)[0]
    assert [d.label for d in capped] == ["stop", "go"]
    mixed = stacked.detect(images, conf_thres=0.3, iou_thres=0.45,
                           agnostic=[False, True, True], max_det=[300, 300, 1])
    assert [len(r) for r in mixed] == [4, 2, 1]
    decoded = stacked.detect_decoded([DecodedImage(images[0], 64, 64)] * 2, conf_thres=0.3,
                                     agnostic=[True, False], max_det=[5, 3])
    assert [len(r) for r in decoded] == [2, 3]
    with pytest.raises(ValueError, match="max_det"):
        stacked.detect(images[:1], max_det=0)
    with pytest.raises(ValueError, match="agnostic: 2 values for 3 images"):
        stacked.detect(images, agnostic=[True, False])
