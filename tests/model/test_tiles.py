"""Tests for model.tiles: settings, window plans, the decode size and the merge."""

from __future__ import annotations

import numpy as np
import pytest

from model.tile_merge import merge
from model.tiles import (
    AUTO,
    OFF,
    TileSetting,
    Window,
    decode_long_side,
    parse_tiles,
    passes,
    plan_windows,
)


@pytest.mark.parametrize(("value", "expected"), [
    (None, OFF), ("off", OFF), (" AUTO ", AUTO), ("640:0.25", TileSetting("fixed", 640, 0.25)),
    ("512", TileSetting("fixed", 512, 0.2)), ({"size": 800, "overlap": 0.1},
                                              TileSetting("fixed", 800, 0.1)),
    ({"size": 800}, TileSetting("fixed", 800, 0.2)), (AUTO, AUTO)])
def test_parse_tiles_reads_every_form(value: object, expected: TileSetting) -> None:
    assert parse_tiles(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("on", "off, auto or SIZE:OVERLAP"), ("640:1", "overlap"), ("16:0.2", "size"),
    ({"size": 640, "step": 3}, "unknown key 'step'"), ({"overlap": 0.2}, "size is missing"),
    (True, "tiles must be"), (3.5, "tiles must be"), ({"size": "640"}, "size")])
def test_parse_tiles_refuses_with_the_reason(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tiles(value)


def test_setting_prints_as_it_is_written() -> None:
    assert [str(parse_tiles(v)) for v in ("off", "auto", "640:0.25")] == \
        ["off", "auto", "640:0.25"]


def test_off_and_small_photos_take_one_pass() -> None:
    assert plan_windows(4032, 3024, 512, OFF) == [Window(0, 0, 4032, 3024, whole=True)]
    # auto tiles only photos whose long side is at least twice the network's
    assert passes(1000, 750, 512, AUTO) == 1
    assert passes(416, 416, 512, parse_tiles("200:0.2")) > 1  # a fixed size always tiles


@pytest.mark.parametrize(("size", "expected"), [
    ((1280, 960), 5), ((1920, 1080), 3), ((4032, 3024), 5), ((3024, 4032), 5),
    ((1024, 768), 5)])
def test_auto_plans_the_documented_windows(size: tuple[int, int], expected: int) -> None:
    windows = plan_windows(*size, 512, AUTO)
    assert windows[0] == Window(0, 0, *size, whole=True)
    assert len(windows) == expected


@pytest.mark.parametrize("setting", [AUTO, parse_tiles("512:0.2"), parse_tiles("700:0.3")])
@pytest.mark.parametrize("size", [(1280, 960), (1920, 1080), (4032, 3024), (1100, 2300),
                                  (513, 1999)])
def test_tiles_cover_the_photo_and_overlap(setting: TileSetting, size: tuple[int, int]
                                           ) -> None:
    width, height = size
    tiles = plan_windows(width, height, 512, setting)[1:]
    assert tiles, "these photos are all tiled"
    covered = np.zeros((height, width), np.int32)
    for t in tiles:
        assert 0 <= t.x1 < t.x2 <= width and 0 <= t.y1 < t.y2 <= height
        covered[t.y1:t.y2, t.x1:t.x2] += 1
    assert covered.min() >= 1
    # Neighbours along a row share at least the overlap of the tiles' side.
    side = tiles[0].width
    for a, b in zip(tiles, tiles[1:]):
        if a.y1 == b.y1:
            assert a.x2 - b.x1 >= setting.overlap * side - 1


def test_decode_keeps_the_resolution_the_windows_need() -> None:
    assert decode_long_side(4032, 3024, 512, OFF) == 512
    # 2 windows of 2240 along 4032 px, each shrunk to 512: keep 512 * 4032 / 2240 px
    assert decode_long_side(4032, 3024, 512, AUTO) == 922
    assert decode_long_side(800, 600, 512, AUTO) == 512


def _row(x1: float, y1: float, x2: float, y2: float, conf: float, cls: int = 1) -> list:
    return [x1, y1, x2, y2, conf, cls]


# Two tiles of a 1280 x 720 photo, sharing x = 568 .. 712, and the whole photo.
WINDOWS = [Window(0, 0, 1280, 720, whole=True), Window(0, 0, 712, 720),
           Window(568, 0, 1280, 720)]


def _merge(whole: list, left: list, right: list, agnostic: bool = False) -> np.ndarray:
    parts = [np.array(rows, np.float64).reshape(-1, 6) for rows in (whole, left, right)]
    return merge(parts, WINDOWS, 1280, 720, 512, 0.45, agnostic, 300)


def test_a_light_cut_by_both_tiles_edges_becomes_one_box() -> None:
    # A light 700..730 (wider than nothing: it crosses x = 712, the left tile's edge, and
    # lies wholly in the right tile): the left tile sees a part ending at its edge.
    out = _merge([], [_row(700, 100, 712, 160, 0.6)], [_row(700, 100, 730, 160, 0.8)])
    assert out.tolist() == [_row(700, 100, 730, 160, 0.8)]


def test_parts_of_a_light_larger_than_the_overlap_are_joined() -> None:
    # A light from x = 540 to 740 is cut by x = 712 (left tile) and x = 568 (right tile):
    # neither tile sees it whole, the whole pass missed it: the two parts become one box.
    out = _merge([], [_row(540, 100, 712, 400, 0.7)], [_row(568, 100, 740, 400, 0.5)])
    assert out.tolist() == [_row(540, 100, 740, 400, 0.7)]


def test_a_part_is_dropped_when_the_whole_pass_saw_the_light() -> None:
    out = _merge([_row(600, 100, 760, 400, 0.4)], [_row(600, 100, 712, 400, 0.9)], [])
    assert out.tolist() == [_row(600, 100, 760, 400, 0.4)]


def test_separate_lights_and_classes_stay_apart() -> None:
    # Two lights side by side, each in its own tile, touching no inner edge
    out = _merge([], [_row(100, 100, 130, 160, 0.9)], [_row(900, 100, 930, 160, 0.8)])
    assert len(out) == 2
    # A part of class 0 next to an uncut box of class 1 is not absorbed by it (per class)
    out = _merge([_row(690, 100, 740, 160, 0.9, 1)], [_row(695, 100, 712, 160, 0.6, 0)], [])
    assert sorted(out[:, 5].tolist()) == [0, 1]
    # ... but is when NMS is class-agnostic
    out = _merge([_row(690, 100, 740, 160, 0.9, 1)], [_row(695, 100, 712, 160, 0.6, 0)], [],
                 agnostic=True)
    assert out[:, 5].tolist() == [1]


def test_the_same_light_seen_by_the_whole_pass_and_a_tile_is_one_box() -> None:
    out = _merge([_row(100, 100, 131, 162, 0.55)], [_row(101, 100, 130, 160, 0.9)], [])
    assert out.tolist() == [_row(101, 100, 130, 160, 0.9)]


def test_a_box_on_the_photo_border_is_not_cut() -> None:
    # x2 = 1280 is the photo's border, not an inner edge: the box stays as it is.
    out = _merge([], [], [_row(1250, 0, 1280, 60, 0.7)])
    assert out.tolist() == [_row(1250, 0, 1280, 60, 0.7)]
