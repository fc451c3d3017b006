"""Tests for model.draw: colours by light, label placement, drawing."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from model.detection import Detection
from model.draw import (
    CATEGORICAL,
    LIGHT_COLORS,
    Rect,
    class_color,
    draw_detections,
    label_font_px,
    label_style,
    palette,
    place_labels,
)


def _det(class_id: int, x1: float, y1: float, x2: float, y2: float,
         confidence: float = 0.9, label: str | None = None) -> Detection:
    return Detection(label or f"c{class_id}", class_id, confidence, x1, y1, x2, y2)


def _hex_bgr(color: str) -> tuple[int, int, int]:
    return int(color[5:7], 16), int(color[3:5], 16), int(color[1:3], 16)


# --- colours ---------------------------------------------------------------------------

def test_each_light_has_its_colour_and_arrows_a_mark() -> None:
    def hue(label: str) -> str:
        red, green, blue = label_style(label, 0).rgb
        return max((("red", red), ("green", green), ("blue", blue)), key=lambda kv: kv[1])[0]

    assert hue("go") == hue("goLeft") == "green"
    assert hue("stop") == hue("stopLeft") == "red"
    red, green, blue = label_style("warning", 0).rgb  # amber: much red, some green, no blue
    assert red > 200 and 120 < green < 200 and blue < 60
    assert label_style("warningLeft", 5).color == label_style("warning", 4).color
    for name in LIGHT_COLORS:
        assert not label_style(name, 0).arrow and label_style(name + "Left", 0).arrow
    # The class id does not change a light's colour (another model may number them so).
    assert label_style("go", 0) == label_style("go", 7)


def test_other_classes_take_a_fixed_distinct_palette() -> None:
    colors = [class_color(i) for i in range(len(CATEGORICAL))]
    assert colors == [class_color(i) for i in range(len(CATEGORICAL))]
    assert len(set(colors)) == len(CATEGORICAL)
    assert class_color(len(CATEGORICAL)) == colors[0]  # it repeats, in order
    for a, b in itertools.pairwise(colors + colors[:1]):  # neighbouring ids far apart
        assert np.abs(np.subtract(a, b)).max() > 60
    assert label_style("person", 0).color == CATEGORICAL[0]


def test_palette_for_the_page_is_the_same_data() -> None:
    data = palette()
    assert data["lights"] == LIGHT_COLORS and list(data["categorical"]) == list(CATEGORICAL)
    assert data["matte"] == "#727272"  # the letterbox grey, 114
    assert data["text"][LIGHT_COLORS["warning"]] == "#000000"  # black on amber
    assert data["text"][LIGHT_COLORS["stop"]] == "#ffffff"


def test_font_follows_the_image_within_bounds() -> None:
    assert label_font_px(100, 80) == 11
    assert label_font_px(640, 480) < label_font_px(1920, 1080) < label_font_px(4000, 3000)
    assert label_font_px(20000, 15000) == 40


# --- placement -------------------------------------------------------------------------

boxes_strategy = st.integers(200, 1600).flatmap(lambda w: st.integers(150, 1200).flatmap(
    lambda h: st.tuples(st.just(w), st.just(h), st.lists(
        st.tuples(st.floats(0, w - 2), st.floats(0, h - 2), st.floats(2, w), st.floats(2, h),
                  st.floats(20, 160)),
        max_size=40))))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(boxes_strategy)
def test_labels_never_overlap_and_stay_inside(case: tuple) -> None:
    width, height, raw = case
    boxes = [(x, y, min(width, x + bw), min(height, y + bh)) for x, y, bw, bh, _ in raw]
    font = label_font_px(width, height)
    sizes = [(tw, round(font * 1.4)) for *_, tw in raw]
    spots = place_labels(boxes, sizes, width, height)
    assert len(spots) == len(boxes)
    placed = [s for s in spots if s is not None]
    for spot, (w, h) in zip(spots, sizes, strict=True):
        if spot is None:
            continue
        assert 0 <= spot.left and spot.right <= width + 1e-9
        assert 0 <= spot.top and spot.bottom <= height + 1e-9
        assert abs(spot.right - spot.left - w) < 1e-9 and abs(spot.bottom - spot.top - h) < 1e-9
    for a, b in itertools.combinations(placed, 2):
        assert not a.overlaps(b), (a, b)
    if len(boxes) <= 3:  # a few labels always find a place on an image this size
        assert None not in spots


def test_label_goes_above_else_below_else_inside() -> None:
    size = [(60, 16)]
    assert place_labels([(100, 100, 200, 200)], size, 400, 400) == [Rect(100, 84, 160, 100)]
    assert place_labels([(100, 5, 200, 200)], size, 400, 400) == [Rect(100, 200, 160, 216)]
    # Top and bottom of the image: inside the box, at its top.
    assert place_labels([(100, 5, 200, 395)], size, 400, 400) == [Rect(100, 5, 160, 21)]
    # At the right edge it shifts left to stay inside ("warningLef" was clipped before).
    assert place_labels([(380, 100, 400, 200)], size, 400, 400) == [Rect(340, 84, 400, 100)]


def test_labels_of_boxes_sharing_a_top_edge_are_moved_apart() -> None:
    boxes = [(100, 100, 220, 300), (110, 100, 230, 290), (105, 102, 225, 280)]
    spots = place_labels(boxes, [(80, 16)] * 3, 640, 480)
    assert None not in spots
    for a, b in itertools.combinations(spots, 2):
        assert not a.overlaps(b)


def test_many_boxes_finish_quickly_and_leave_off_what_does_not_fit() -> None:
    boxes = [(i % 20 * 10, i // 20 * 10, i % 20 * 10 + 10, i // 20 * 10 + 10) for i in range(300)]
    spots = place_labels(boxes, [(50, 14)] * 300, 200, 150)
    placed = [s for s in spots if s is not None]
    assert 0 < len(placed) < 300
    for a, b in itertools.combinations(placed, 2):
        assert not a.overlaps(b)


# --- drawing ---------------------------------------------------------------------------

def test_draws_box_in_class_color_on_a_copy() -> None:
    img = np.zeros((200, 300, 3), np.uint8)
    out = draw_detections(img, [_det(3, 50, 80, 250, 180)])
    assert not img.any()  # input untouched
    color = class_color(3)
    # Middle of the left and bottom edges (away from the label and corners).
    assert tuple(out[130, 50]) == color
    assert tuple(out[180, 150]) == color
    assert not out[130, 150].any()  # inside the box stays clear
    # The label sits above the box: a filled patch of the class colour.
    assert (out[68:79, 52:56] == color).all(axis=2).mean() > 0.5


def test_light_classes_are_drawn_in_their_light_colour_arrows_dashed() -> None:
    img = np.zeros((300, 300, 3), np.uint8)
    out = draw_detections(img, [_det(0, 30, 60, 130, 260, label="go"),
                                _det(3, 170, 60, 270, 260, label="goLeft")])
    green = _hex_bgr(LIGHT_COLORS["go"])
    left_edge_go = (out[80:240, 30] == green).all(axis=1)
    left_edge_arrow = (out[80:240, 170] == green).all(axis=1)
    assert left_edge_go.all()  # solid
    assert 0.4 < left_edge_arrow.mean() < 0.8  # dashed


def test_label_goes_inside_a_box_at_the_top_edge() -> None:
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
