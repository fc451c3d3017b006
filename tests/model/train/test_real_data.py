"""Real training data: the split by source photo, label reading, aspect jitter, crop pasting
and the mixed real + generated data set (synthetic files here; ../shared is not needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from model.train.real import (
    CINTA_TO_OURS,
    MixedDataset,
    aspect_jitter,
    generated_sample,
    is_validation,
    list_real,
    load_crops,
    paste_crops,
    read_yolo_labels,
    real_sample,
    source_of,
)

SHARED = Path(__file__).resolve().parents[3].parent / "shared"
CINTA = SHARED / "datasets" / "cinta-train"


def test_source_of_strips_the_roboflow_suffix() -> None:
    assert source_of("traffic-light--12-_jpg.rf.3ae134bdb27867d6c1a6a311e7eb8831.jpg") == \
        "traffic-light--12-"
    assert source_of("a/b/photo_png.rf.ABCDEF01.jpg") == "photo"
    assert source_of("plain.jpg") == "plain"


def test_split_is_by_source_deterministic_and_about_the_share() -> None:
    names = [f"traffic-light--{i}-" for i in range(4000)]
    held = [is_validation(n) for n in names]
    assert held == [is_validation(n) for n in names]  # the same on every call / machine
    assert 0.12 < np.mean(held) < 0.18
    assert is_validation("traffic-light--7-", 1.0) and not is_validation("x", 0.0)


def _write_dataset(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        for copy in range(3):
            stem = f"light-{i}_jpg.rf.{i:04x}{copy:04x}"
            cv2.imwrite(str(root / "images" / f"{stem}.jpg"),
                        rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            (root / "labels" / f"{stem}.txt").write_text("1 0.5 0.5 0.25 0.5\n2 0.2 0.2 0.1 0.2\n")


def test_list_real_never_splits_a_source(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    train, val = list_real(tmp_path, "train"), list_real(tmp_path, "val")
    assert len(train) + len(val) == 90 == len(list_real(tmp_path, "all"))
    assert not {p.source for p in train} & {p.source for p in val}
    assert all(len([p for p in train + val if p.source == s]) == 3
               for s in {p.source for p in train})
    img, classes, boxes = train[0].load()
    assert img.shape == (64, 64, 3)
    assert classes.tolist() == [CINTA_TO_OURS[1], CINTA_TO_OURS[2]] == [1, 4]
    np.testing.assert_allclose(boxes[0], [24, 16, 40, 48])
    with pytest.raises(ValueError):
        list_real(tmp_path, "test")


def test_read_yolo_labels_maps_classes_and_handles_empty(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.5 0.2 0.4\n\n")
    classes, boxes = read_yolo_labels(path)
    assert classes.tolist() == [0]
    np.testing.assert_allclose(boxes, [[0.4, 0.3, 0.6, 0.7]], atol=1e-6)
    classes, boxes = read_yolo_labels(tmp_path / "missing.txt")
    assert classes.shape == (0,) and boxes.shape == (0, 4)


def test_aspect_jitter_moves_boxes_with_the_image() -> None:
    rng = np.random.default_rng(3)
    img = np.zeros((100, 100, 3), np.uint8)
    img[20:60, 40:50] = 255
    boxes = np.array([[40, 20, 50, 60]], np.float32)
    for _ in range(10):
        out, b = aspect_jitter(rng, img, boxes)
        assert max(out.shape[:2]) == 100
        x1, y1, x2, y2 = np.round(b[0]).astype(int)
        inside = out[y1 + 1:y2 - 1, x1 + 1:x2 - 1]
        assert inside.size and inside.mean() > 200


def test_real_sample_keeps_lights_on_the_canvas() -> None:
    rng = np.random.default_rng(1)
    img = np.full((416, 416, 3), 40, np.uint8)
    img[100:200, 180:220] = (0, 0, 255)
    classes, boxes = np.array([1]), np.array([[180, 100, 220, 200]], np.float32)
    kept = 0
    for _ in range(20):
        out, labels = real_sample(rng, img, classes, boxes, 320)
        assert out.shape == (320, 320, 3) and out.dtype == np.uint8
        assert labels.shape[1] == 5
        for c, x1, y1, x2, y2 in labels:
            kept += 1
            assert c == 1 and 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 320
            assert out[int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2, 2].mean() > 150
    assert kept >= 10


def _crops(tmp_path: Path) -> list[tuple[np.ndarray, int]]:
    for colour, bgr in (("red", (0, 0, 255)), ("green", (0, 255, 0)), ("yellow", (0, 255, 255))):
        folder = tmp_path / "dataset_train" / colour
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / "a.jpg"), np.full((40, 20, 3), bgr, np.uint8))
    return load_crops(tmp_path)


def test_paste_crops_adds_labelled_lights_without_overlap(tmp_path: Path) -> None:
    crops = _crops(tmp_path)
    assert sorted(c for _, c in crops) == [0, 1, 4]
    rng = np.random.default_rng(0)
    img = np.zeros((200, 300, 3), np.uint8)
    out, classes, boxes = paste_crops(rng, img, np.array([2]),
                                      np.array([[10, 10, 30, 60]], np.float32), crops, 3)
    assert len(classes) == len(boxes) > 1 and classes[0] == 2
    for (x1, y1, x2, y2), c in zip(boxes[1:], classes[1:]):
        assert c in (0, 1, 4)
        assert out[int(y1) + 1:int(y2) - 1, int(x1) + 1:int(x2) - 1].max() > 150
        assert x2 <= 10 or x1 >= 30 or y2 <= 10 or y1 >= 60  # not on the drawn light
    assert img.max() == 0  # the input image is left alone


def test_mixed_dataset_is_a_function_of_seed_epoch_index(tmp_path: Path) -> None:
    _write_dataset(tmp_path / "real")
    crops = _crops(tmp_path / "crops")
    photos = list_real(tmp_path / "real", "train")
    ds = MixedDataset(4, photos, 5, 3, 96, 96, crops)
    assert len(ds) == 8
    first = [ds.sample(i) for i in range(8)]
    ds.set_epoch(1)
    other = ds.sample(0)
    ds.set_epoch(0)
    again = [ds.sample(i) for i in range(8)]
    for (a, la), (b, lb) in zip(first, again):
        assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(other[0], first[0][0])
    tensor, labels = ds[0]
    assert tuple(tensor.shape) == (3, 96, 96) and labels.shape[1] == 5
    img, labels = generated_sample(0, 0, 0, 96, 96, crops, crop_share=1.0)
    assert img.shape == (96, 96, 3) and labels.shape[1] == 5


@pytest.mark.skipif(not CINTA.is_dir(), reason=f"{CINTA} missing (../shared is not in a clone)")
def test_cinta_split_sizes() -> None:
    train, val = list_real(CINTA, "train"), list_real(CINTA, "val")
    assert len(train) + len(val) == 2097
    sources = {p.source for p in val}
    assert not sources & {p.source for p in train}
    assert 0.12 < len(sources) / 699 < 0.18
    assert all(len(p.classes) for p in val)
