"""The scene generator: determinism, valid labels, and lights that look like their class."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from model.train.lights import CLASS_NAMES, paste_light, random_style
from model.train.scenes import make_scene

NAMES_FILE_CLASSES = ("go", "stop", "stopLeft", "goLeft", "warning", "warningLeft")


def test_class_order_matches_the_names_file() -> None:
    with open("model/data/traffic_light.names") as f:
        assert tuple(f.read().split()) == CLASS_NAMES == NAMES_FILE_CLASSES


def test_same_seed_same_scene_other_seed_other_scene() -> None:
    a = make_scene(3, 5, 200, 256)
    b = make_scene(3, 5, 200, 256)
    c = make_scene(4, 5, 200, 256)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.classes, b.classes)
    assert not np.array_equal(a.image, c.image)


def test_labels_are_valid_boxes_inside_the_image() -> None:
    sizes, counts = [], []
    for i in range(40):
        s = make_scene(11, i, 240, 320)
        assert s.image.shape == (240, 320, 3) and s.image.dtype == np.uint8
        assert s.boxes.shape == (len(s.classes), 4)
        assert np.all((s.classes >= 0) & (s.classes < 6))
        assert np.all(s.boxes[:, 0] >= 0) and np.all(s.boxes[:, 2] <= 320)
        assert np.all(s.boxes[:, 1] >= 0) and np.all(s.boxes[:, 3] <= 240)
        assert np.all(s.boxes[:, 2] > s.boxes[:, 0]) and np.all(s.boxes[:, 3] > s.boxes[:, 1])
        counts.append(len(s.classes))
        sizes.extend(np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]))
    assert min(counts) >= 1 and max(counts) >= 4
    assert min(sizes) < 16 and max(sizes) > 50  # tiny and large lights both occur


def _hue_class(bgr: np.ndarray) -> str:
    """Colour name of a BGR pixel from its OpenCV hue (0..180), independent of the generator."""
    hue = cv2.cvtColor(bgr.reshape(1, 1, 3).astype(np.uint8), cv2.COLOR_BGR2HSV)[0, 0, 0]
    if hue < 12 or hue > 165:
        return "red"
    if hue < 35:
        return "yellow"
    return "green"


@pytest.mark.parametrize("cls", range(6))
def test_light_has_one_lit_lamp_of_its_colour_inside_its_box(cls: int) -> None:
    expected = ("green", "red", "red", "green", "yellow", "yellow")[cls]
    rng = np.random.default_rng(cls)
    for _ in range(5):
        # a dark housing, so that only lamps can be bright and saturated
        style = dataclasses.replace(random_style(rng, night=False), housing_bgr=(30.0, 30.0, 30.0))
        img = np.full((200, 200, 3), 128.0)
        box = paste_light(img, rng, cls, style, 90.0, 40.0, 40.0)
        x0, y0, x1, y1 = np.round(box).astype(int)
        crop = np.clip(img[y0:y1, x0:x1], 0, 255).astype(np.uint8)
        hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
        # lit = bright; unlit lamps and the housing are dark (the lit core may be whitish)
        lit = hsv[..., 2] > 150
        n, _, stats, _ = cv2.connectedComponentsWithStats(lit.astype(np.uint8))
        blobs = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] > 20]
        assert len(blobs) == 1, f"{CLASS_NAMES[cls]}: {len(blobs)} lit blobs"
        colours = [_hue_class(p) for p in crop[lit & (hsv[..., 1] > 100)]]
        assert max(set(colours), key=colours.count) == expected
