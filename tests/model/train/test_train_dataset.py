"""Training samples: augmentation moves boxes with the pixels, never mirrors, is reproducible."""

from __future__ import annotations

import numpy as np
import torch

from model.train.dataset import SceneDataset, collate, hsv_jitter, make_sample, random_affine


def _white_box_image() -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((120, 200, 3), np.uint8)
    img[30:70, 40:60] = 255
    img[30:40, 40:45] = (0, 0, 255)  # a red corner marks the top-left of the box
    return img, np.array([[40.0, 30.0, 60.0, 70.0]])


def test_affine_boxes_follow_the_pixels_and_nothing_is_mirrored() -> None:
    img, boxes = _white_box_image()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out, moved, keep = random_affine(rng, img, boxes, 160)
        assert out.shape == (160, 160, 3)
        if not keep[0]:
            continue
        white = np.argwhere(out.min(axis=2) > 128)
        y0, x0 = white.min(axis=0)
        y1, x1 = white.max(axis=0) + 1
        assert np.allclose(moved[0], [x0, y0, x1, y1], atol=1.6)
        red = np.argwhere((out[..., 2] > 128) & (out[..., 0] < 100))
        assert red[:, 1].mean() < (x0 + x1) / 2 and red[:, 0].mean() < (y0 + y1) / 2


def test_boxes_mostly_outside_are_dropped() -> None:
    img, _ = _white_box_image()
    boxes = np.array([[190.0, 30.0, 230.0, 70.0]])  # 75% outside the source image
    _, _, keep = random_affine(np.random.default_rng(0), img, boxes, 160, (1.0, 1.0))
    assert not keep[0]


def test_hsv_jitter_keeps_grey_grey_and_shape() -> None:
    grey = np.full((8, 8, 3), 100, np.uint8)
    out = hsv_jitter(np.random.default_rng(0), grey)
    assert out.shape == grey.shape
    assert np.ptp(out.astype(int), axis=2).max() <= 1


def test_samples_are_reproducible_and_differ_between_epochs() -> None:
    a_img, a_lab = make_sample(1, 0, 3, 128)
    b_img, b_lab = make_sample(1, 0, 3, 128)
    c_img, _ = make_sample(1, 1, 3, 128)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


def test_collate_gives_image_index_class_and_centre_boxes() -> None:
    ds = SceneDataset(seed=2, length=3, img_size=96)
    items = [ds[i] for i in range(3)]
    images, targets = collate(items)
    assert images.shape == (3, 3, 96, 96) and images.dtype == torch.float32
    assert float(images.max()) <= 1.0
    assert targets.shape[1] == 6
    for i, (_, labels) in enumerate(items):
        rows = targets[targets[:, 0] == i]
        assert len(rows) == len(labels)
        xyxy = labels[:, 1:5]
        assert torch.allclose(rows[:, 2], (xyxy[:, 0] + xyxy[:, 2]) / 2)
        assert torch.allclose(rows[:, 5], xyxy[:, 3] - xyxy[:, 1])
        assert torch.equal(rows[:, 1], labels[:, 0])


def test_gray_share_of_samples() -> None:
    def is_gray(img: np.ndarray) -> bool:
        return bool((img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all())

    plain = [make_sample(5, 0, i, 64, scene_size=64) for i in range(12)]
    none = [make_sample(5, 0, i, 64, scene_size=64, gray=0.0) for i in range(12)]
    half = [make_sample(5, 0, i, 64, scene_size=64, gray=0.5) for i in range(12)]
    every = [make_sample(5, 0, i, 64, scene_size=64, gray=1.0) for i in range(12)]
    # gray=0 draws no random number: the data of runs without it are unchanged.
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(plain, none))
    assert not any(is_gray(img) for img, _ in plain)
    assert all(is_gray(img) for img, _ in every)
    assert 0 < sum(is_gray(img) for img, _ in half) < 12
    assert all((a[1] == b[1]).all() for a, b in zip(plain, every))  # same boxes
