"""Tests for model.draw."""

from __future__ import annotations

import itertools

import numpy as np

from model.detection import Detection
from model.draw import class_color, draw_detections


def _det(class_id: int, x1: float, y1: float, x2: float, y2: float,
         confidence: float = 0.9) -> Detection:
    return Detection(f"c{class_id}", class_id, confidence, x1, y1, x2, y2)


def test_class_colors_are_stable_and_distinct() -> None:
    colors = [class_color(i) for i in range(12)]
    assert colors == [class_color(i) for i in range(12)]
    assert len(set(colors)) == 12
    for color in colors:
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in color)
    # Neighbouring ids must not look alike.
    for a, b in itertools.pairwise(colors):
        assert np.abs(np.subtract(a, b)).max() > 60


def test_draws_box_in_class_color_on_a_copy() -> None:
    img = np.zeros((200, 300, 3), np.uint8)
    out = draw_detections(img, [_det(3, 50, 80, 250, 180)])
    assert not img.any()  # input untouched
    color = class_color(3)
    # Middle of the left and bottom edges (away from the label tag and anti-aliased corners).
    assert tuple(out[130, 50]) == color
    assert tuple(out[180, 150]) == color
    assert not out[130, 150].any()  # inside the box stays clear
    # The tag sits above the box: a filled patch of the class colour.
    assert (out[70:78, 52:58] == color).all(axis=2).mean() > 0.5


def test_tag_goes_inside_a_box_at_the_top_edge() -> None:
    out = draw_detections(np.zeros((100, 100, 3), np.uint8), [_det(0, 10, 0, 90, 90)])
    assert (out[3:10, 12:16] == class_color(0)).all(axis=2).mean() > 0.5


def test_line_width_grows_with_image_size() -> None:
    def edge_width(size: int) -> int:
        out = draw_detections(np.zeros((size, size, 3), np.uint8),
                              [_det(1, size // 4, size // 4, size * 3 // 4, size * 3 // 4)])
        row = out[size // 2, : size // 2]
        return int((row == class_color(1)).all(axis=1).sum())

    assert edge_width(2000) > edge_width(200) >= 2


def test_no_detections_gives_an_equal_copy() -> None:
    img = np.full((20, 30, 3), 7, np.uint8)
    out = draw_detections(img, [])
    assert out is not img
    np.testing.assert_array_equal(out, img)
