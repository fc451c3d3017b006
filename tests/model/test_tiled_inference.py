"""Tests for Detector.detect_tiled / detect_decoded_tiled: the default model's real cfg with
random weights (one batch per photo's windows, tiles off equal to detect, the decode),
and the shipped model on a real photo (a light cut by a tile edge is one box)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from model.darknet import Darknet
from model.inference import Detector
from model.preprocess import decode_for_network
from model.tiles import AUTO, plan_windows
from model.weights import save_weights
from tests.paths import DATA_DIR, MODEL_DATA_DIR, PHOTOS_DIR

CFG = MODEL_DATA_DIR / "traffic-lights-yolov4-tiny-3l.cfg"
NAMES = MODEL_DATA_DIR / "traffic_light.names"
SIZE = 128


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    torch.manual_seed(0)
    net = Darknet(CFG, SIZE)
    with torch.no_grad():  # confidences spread over 0..1 instead of all near 0.5
        for name, tensor in net.state_dict().items():
            if name.endswith("Conv2d.bias"):
                tensor.normal_(0, 2)
    path = tmp_path_factory.mktemp("w") / "random.weights"
    save_weights(net, path)
    return Detector.load(CFG, path, NAMES, img_size=SIZE, device="cpu", backend="torch")


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 2)


def test_tiles_off_equals_detect(detector: Detector) -> None:
    photos = [_photo(400, 300, 1), _photo(200, 260, 2)]
    plain = detector.detect(photos, conf_thres=0.2, iou_thres=0.5, max_det=50)
    tiled = detector.detect_tiled(photos, "off", conf_thres=0.2, iou_thres=0.5, max_det=50)
    assert [t.passes for t in tiled] == [1, 1]
    assert [t.detections for t in tiled] == plain
    assert any(plain), "random weights at 0.2 give boxes"


def test_the_windows_of_all_photos_run_as_one_batch(detector: Detector,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    runner = detector.runner

    def counting(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batches.append(int(batch.shape[0]))
        return runner(batch)

    monkeypatch.setattr(detector, "runner", counting)
    photos = [_photo(400, 300, 3), _photo(300, 400, 4), _photo(100, 80, 5)]
    found = detector.detect_tiled(photos, ["auto", "auto", "auto"], conf_thres=0.2)
    expected = [len(plan_windows(400, 300, SIZE, AUTO)), len(plan_windows(300, 400, SIZE, AUTO)),
                1]
    assert [f.passes for f in found] == expected
    assert expected[0] > 1
    assert batches == [sum(expected)]
    for f, img in zip(found, photos):
        for det in f.detections:
            assert 0 <= det.x1 <= det.x2 <= img.shape[1] and 0 <= det.y1 <= det.y2 <= img.shape[0]


def test_tiles_per_photo_and_bad_settings(detector: Detector) -> None:
    photos = [_photo(400, 300, 6), _photo(400, 300, 6)]
    found = detector.detect_tiled(photos, ["off", "auto"], conf_thres=0.2)
    assert [f.passes for f in found] == [1, 5]
    with pytest.raises(ValueError, match="tiles"):
        detector.detect_tiled(photos, "sometimes")
    with pytest.raises(ValueError, match="2 images"):
        detector.detect_tiled(photos, ["auto"])


def test_decode_keeps_what_the_tiles_need_and_boxes_map_back(detector: Detector) -> None:
    ok, data = cv2.imencode(".jpg", _photo(1280, 960, 7))
    assert ok
    whole = decode_for_network(data.tobytes(), None, 512)
    tiled = decode_for_network(data.tobytes(), None, 512, AUTO)
    # 1280 px shrunk to 512 anyway: decoded at 1/2; with tiles 2 x 711 px windows of it
    # each need 512 px, i.e. 921 px of the photo: the full decode.
    assert whole.image.shape[:2] == (480, 640)
    assert tiled.image.shape[:2] == (960, 1280)
    # windows are planned on the original size whatever the decode: a reduced decode of
    # the same photo takes the same number of passes, boxes in the original's pixels
    found = detector.detect_decoded_tiled([whole, tiled], AUTO, conf_thres=0.2)
    assert [f.passes for f in found] == [5, 5]
    for f in found:
        for det in f.detections:
            assert det.x2 <= 1280 and det.y2 <= 960


# -- the shipped model on a real photo ------------------------------------------------------

SHIPPED_CFG = MODEL_DATA_DIR / "traffic-lights-yolov4-tiny-3l.cfg"
SHIPPED_PT = MODEL_DATA_DIR / "traffic-lights-yolov4-tiny-3l.pt"


def _label_box(stem: str, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    _, cx, cy, bw, bh = map(float, (DATA_DIR / "real" / f"{stem}.txt").read_text().split()[:5])
    return np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])


def _iou(a: np.ndarray, b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_shipped_model_a_real_light_across_a_tile_edge_is_one_box() -> None:
    """A real CINTA photo (a red light) pasted into a real 1280x720 street photo so that
    the left tile's edge (x = 712) cuts the light: one box for it, whatever the tiles."""
    detector = Detector.load(SHIPPED_CFG, SHIPPED_PT, NAMES, img_size=512, device="cpu",
                             backend="torch")
    scene = cv2.imread(str(PHOTOS_DIR / "landscape.jpg"))
    light = cv2.imread(str(DATA_DIR / "real" / "cinta-628.jpg"))
    box = _label_box("cinta-628", light)
    scale = 1.2
    light = cv2.resize(light, None, fx=scale, fy=scale)
    box = box * scale
    edge = plan_windows(1280, 720, 512, AUTO)[1].x2
    x0 = int(edge - (box[0] + box[2]) / 2)  # the light's centre on the edge
    y0 = 100
    scene[y0:y0 + light.shape[0], x0:x0 + light.shape[1]] = light
    truth = box + np.array([x0, y0, x0, y0])
    assert truth[0] < edge < truth[2]
    off, auto = detector.detect_tiled([scene, scene], ["off", "auto"], conf_thres=0.2,
                                      iou_thres=0.45, agnostic=True)
    assert auto.passes == 3
    for found in (off, auto):
        on_light = [d for d in found.detections if _iou(truth, d.box) > 0.1]
        assert len(on_light) == 1, on_light
        assert _iou(truth, on_light[0].box) >= 0.5
