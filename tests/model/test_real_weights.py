"""Real weights on real photos: the COCO YOLOv3-tiny Darknet weights on bus.jpg and
zidane.jpg (both in ../shared; the tests skip without it).

Final detections (after NMS, in the photo's pixels) of our PyTorch engine, our ONNX
Runtime backend and OpenCV DNN's own Darknet reader must agree: the same labels in the
same order, boxes within 1 px, confidences within 1e-3.  OpenCV runs the network on the
very input our pipeline builds (letterbox, RGB, 0..1) and its rows go through our NMS, so
what is compared is the network's computation.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.detection import Detection
from model.inference import Detector
from model.postprocess import non_max_suppression, scale_boxes
from model.preprocess import letterbox, to_tensor
from tests.engine_utils import _opencv_cfg
from tests.paths import shared

SIZE, CONF, IOU = 416, 0.25, 0.45
PHOTOS = ["bus.jpg", "zidane.jpg"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return shared("models", "yolov3-tiny-coco")


@pytest.fixture(scope="module")
def detectors(model_dir: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Detector]:
    files = (model_dir / "yolov3-tiny.cfg", model_dir / "yolov3-tiny.weights",
             model_dir / "coco.names")
    cache = tmp_path_factory.mktemp("onnx")
    return {"torch": Detector.load(*files, img_size=SIZE, device="cpu", backend="torch"),
            "onnxruntime": Detector.load(*files, img_size=SIZE, device="cpu",
                                         backend="onnxruntime", onnx_cache_dir=cache,
                                         threads=2)}


def _opencv_detections(model_dir: Path, img: np.ndarray, names: list[str],
                       tmp: Path) -> list[Detection]:
    boxed, ratio, pad = letterbox(img, SIZE, stride=32)
    blob = to_tensor([boxed]).numpy()
    net = cv2.dnn.readNetFromDarknet(str(_opencv_cfg(model_dir / "yolov3-tiny.cfg",
                                                     tmp / "ref.cfg")),
                                     str(model_dir / "yolov3-tiny.weights"))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(blob)
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames())).astype(np.float64)
    h, w = blob.shape[2:]
    rows[:, [0, 2]] *= w
    rows[:, [1, 3]] *= h
    # OpenCV reports objectness x class probability; our contract has the probability.
    rows[:, 5:] /= np.maximum(rows[:, 4:5], np.finfo(np.float64).tiny)
    dets = non_max_suppression(torch.from_numpy(rows)[None], CONF, IOU, max_det=len(rows))[0]
    out = scale_boxes(dets, ratio, pad, img.shape[:2])
    out = out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]
    return [Detection.from_row(row, names) for row in out.tolist()]


def _differences(got: list[Detection], want: list[Detection]) -> tuple[float, float]:
    assert [d.label for d in got] == [d.label for d in want]
    box = max((abs(a - b) for g, w in zip(got, want) for a, b in zip(g.box, w.box)),
              default=0.0)
    conf = max((abs(g.confidence - w.confidence) for g, w in zip(got, want)), default=0.0)
    return box, conf


@pytest.mark.parametrize("photo", PHOTOS)
def test_engine_onnxruntime_and_opencv_agree_on_real_photos(
        photo: str, model_dir: Path, detectors: dict[str, Detector], tmp_path: Path) -> None:
    img = cv2.imread(str(shared("images", photo)))
    assert img is not None
    names = detectors["torch"].names
    reference = _opencv_detections(model_dir, img, names, tmp_path)
    labels = {d.label for d in reference}
    assert labels >= ({"bus", "person"} if photo == "bus.jpg" else {"person", "tie"})
    for backend, detector in detectors.items():
        found = detector.detect([img], conf_thres=CONF, iou_thres=IOU)[0]
        box, conf = _differences(found, reference)
        print(f"{photo} {backend}: {len(found)} detections, max box difference {box:.4f} px, "
              f"max confidence difference {conf:.2e}")
        assert box <= 1.0 and conf <= 1e-3, (backend, box, conf)
