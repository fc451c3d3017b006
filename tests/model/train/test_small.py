"""Small-light training samples (model.train.small) and the held-out proxy (model.train.proxy)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from model.train.metrics import long_side
from model.train.proxy import CANVASES, LIGHT_VIEW_PX, proxy_scene
from model.train.real import RealImage, list_real
from model.train.small import (
    crops_on_scene,
    fill_canvas,
    paste_photos,
    shrink,
    zoom_out,
)
from tests.paths import shared


def _photo(seed: int, size: int = 416) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo with one bright 'light' (class 1) whose box is exactly its pixels."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 40, np.uint8)
    x, y = int(rng.integers(20, size - 120)), int(rng.integers(20, size - 200))
    img[y:y + 180, x:x + 90] = (0, 0, 255)
    return img, np.array([1]), np.array([[x, y, x + 90, y + 180]], np.float32)


def _red_box(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero((img[..., 2] > 200) & (img[..., 1] < 60))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def test_shrink_keeps_the_light_under_its_label() -> None:
    rng = np.random.default_rng(0)
    img, cls, boxes = shrink(rng, _photo(1), 120.0)
    assert max(img.shape[:2]) == 120
    np.testing.assert_allclose(boxes[0], _red_box(img), atol=1.5)
    assert cls.tolist() == [1]


def test_fill_canvas_covers_it_and_labels_follow() -> None:
    img, cls, boxes = fill_canvas(np.random.default_rng(2), _photo(3), 512, 384)
    assert img.shape == (384, 512, 3)
    if len(boxes):  # the light may be cut away by the zoom
        inside = boxes[0]
        assert 0 <= inside[0] < inside[2] <= 512 and 0 <= inside[1] < inside[3] <= 384


@pytest.mark.parametrize("seed", range(6))
def test_paste_photos_labels_each_pasted_light_and_drops_covered_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    canvas = np.full((512, 512, 3), 90, np.uint8)
    canvas[200:330, 200:260] = (0, 255, 0)  # the background's light (class 0)
    background = (canvas, np.array([0]), np.array([[200, 200, 260, 330]], np.float32))
    photos = [_photo(s) for s in range(5, 9)]
    img, cls, boxes = paste_photos(rng, background, photos, grid=2)
    visible = float((img[200:330, 200:260, 1] == 255).mean())
    # kept while at least 40% of it shows (COVERED), else its label goes
    assert (0 in cls.tolist()) == (visible >= 0.4), visible
    assert cls.tolist().count(1) == 4
    for box in boxes[cls == 1]:
        crop = img[int(box[1]):int(np.ceil(box[3])), int(box[0]):int(np.ceil(box[2]))]
        assert (crop[..., 2] > 200).mean() > 0.7  # each label sits on its light
    assert (long_side(boxes[cls == 1]) < 256 * 180 / 416 + 2).all()


def test_crops_on_scene_pastes_small_labelled_lights() -> None:
    rng = np.random.default_rng(9)
    crop = (np.full((60, 25, 3), (0, 200, 0), np.uint8), 0)
    img, labels = crops_on_scene(rng, _photo(10), [crop], 512)
    pasted = labels[labels[:, 0] == 0]
    assert 2 <= len(pasted) <= 6
    sizes = long_side(pasted[:, 1:])
    assert (sizes >= 5).all() and (sizes <= 41).all()


@pytest.fixture(scope="module")
def held_out() -> list[RealImage]:
    return list_real(shared("datasets", "cinta-train"), "val")


def test_zoom_out_of_real_photos_makes_small_real_lights(held_out: list[RealImage]) -> None:
    sizes = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        photos = [held_out[int(i)].load() for i in rng.integers(len(held_out), size=12)]
        img, labels = zoom_out(rng, held_out[seed].load(), photos, 512)
        assert img.shape == (512, 512, 3)
        boxes = labels[:, 1:]
        assert (boxes >= 0).all() and (boxes <= 512).all()
        sizes += long_side(boxes).tolist()
    sizes = np.array(sizes)
    # small lights are common: most between 6 and 40 px, few as large as CINTA's
    assert np.mean((sizes >= 6) & (sizes <= 40)) > 0.5
    photos = [p.load() for p in held_out[:12]]
    first = zoom_out(np.random.default_rng(0), held_out[0].load(), photos, 512)
    again = zoom_out(np.random.default_rng(0), held_out[0].load(), photos, 512)
    np.testing.assert_array_equal(first[0], again[0])  # a pure function of the generator
    np.testing.assert_array_equal(first[1], again[1])


@pytest.mark.parametrize("canvas", CANVASES)
def test_proxy_scene_is_deterministic_and_lights_are_small_at_the_view(
        held_out: list[RealImage], canvas: tuple[int, int]) -> None:
    a = proxy_scene(held_out, 7, canvas, 3)
    b = proxy_scene(held_out, 7, canvas, 3)
    assert a.image.shape == (canvas[1], canvas[0], 3)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert np.array_equal(a.image, b.image)
    view = long_side(a.boxes) * 512 / max(canvas)
    assert (a.boxes[:, 2] <= canvas[0]).all() and (a.boxes[:, 3] <= canvas[1]).all()
    # the pasted photos' largest lights are made 6-40 px at the view
    small = view[(view >= LIGHT_VIEW_PX[0] - 0.5) & (view <= LIGHT_VIEW_PX[1] + 0.5)]
    assert len(small) >= 4
    assert cv2.imencode(".jpg", a.image)[0]


def test_proxy_uses_what_it_is_given(tmp_path: Path) -> None:
    """The proxy draws only from the photos passed (the held-out split in evaluate)."""
    one = RealImage(tmp_path / "a.jpg", np.array([1]), np.array([[0.4, 0.3, 0.5, 0.6]],
                                                                np.float32))
    img, _, _ = _photo(11)
    cv2.imwrite(str(one.path), img)
    scene = proxy_scene([one], 1, (1280, 960), 0)
    assert len(scene.boxes) >= 2 and set(scene.classes.tolist()) == {1}
