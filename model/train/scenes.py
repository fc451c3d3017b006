"""Whole generated scenes: background, distractors, lights on poles, occluders, camera effects.

``make_scene(seed, index, h, w)`` is a pure function of its arguments, so a data set is
just a seed and a count.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from model.train.backgrounds import draw_background, random_condition
from model.train.distractors import DISTRACTORS
from model.train.effects import camera
from model.train.lights import NUM_CLASSES, LightStyle, paste_light, random_style

MIN_LONG_PX = 8.0


@dataclass(frozen=True)
class Scene:
    """A BGR uint8 image and its labels: ``classes`` (n,) int, ``boxes`` (n, 4) x1y1x2y2 pixels."""

    image: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray


def _light_count(rng: np.random.Generator) -> int:
    p = rng.random()
    if p < 0.3:
        return 1
    if p < 0.7:
        return int(rng.integers(2, 4))
    if p < 0.95:
        return int(rng.integers(4, 9))
    return int(rng.integers(9, 15))


def _light_size(rng: np.random.Generator, short_side: int,
                light_px: tuple[float, float] | None) -> float:
    """Long side of a housing in pixels: from 8 px to a third of the image by default."""
    if light_px is not None:
        return float(np.exp(rng.uniform(np.log(light_px[0]), np.log(light_px[1]))))
    top = max(MIN_LONG_PX * 2, short_side / 3)
    if rng.random() < 0.15:
        return float(rng.uniform(MIN_LONG_PX, 16.0))
    return float(np.exp(rng.uniform(np.log(16.0), np.log(top))))


def _overlaps(box: np.ndarray, boxes: list[np.ndarray], margin: float) -> bool:
    for b in boxes:
        if (box[0] - margin < b[2] and b[0] < box[2] + margin
                and box[1] - margin < b[3] and b[1] < box[3] + margin):
            return True
    return False


def _patch_extent(style: LightStyle, long_px: float) -> tuple[float, float]:
    short = long_px * style.aspect
    margin = 0.35 * short if style.back_plate else 0.06 * short
    long_e, short_e = long_px + 2 * margin, short + 2 * margin
    return (short_e, long_e) if style.vertical else (long_e, short_e)


def _draw_mount(rng: np.random.Generator, img: np.ndarray, x0: float, y0: float, x1: float,
                y1: float, night: bool) -> None:
    """Pole below, mast arm to a side, or a span wire above the light."""
    h, w = img.shape[:2]
    grey = np.array((85, 88, 92)) * rng.uniform(0.5, 1.3) * (0.35 if night else 1.0)
    thick = max(1, int(round((x1 - x0) * rng.uniform(0.12, 0.3))))
    p = rng.random()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if p < 0.35:
        cv2.line(img, (int(cx), int(cy)), (int(cx), h), grey.tolist(), thick, cv2.LINE_AA)
    elif p < 0.7:
        end = 0 if rng.random() < 0.5 else w
        cv2.line(img, (int(cx), int(y0)), (end, int(y0)), grey.tolist(), thick, cv2.LINE_AA)
    elif p < 0.8:
        cv2.line(img, (0, int(y0 - rng.uniform(0, 10))), (w, int(y0 - rng.uniform(0, 10))),
                 (grey * 0.5).tolist(), 1, cv2.LINE_AA)


def _occlude(rng: np.random.Generator, img: np.ndarray, box: np.ndarray, night: bool) -> None:
    """Cover one side strip (at most ~35%) of a box with leaves or a pole."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    frac = rng.uniform(0.15, 0.35)
    # Cover along the lamp row so the lit lamp stays mostly visible.
    side = int(rng.integers(2)) + (0 if bh > bw else 2)
    if side == 0:
        rect = (x0 - bw * 0.3, y0 - bh * 0.1, x0 + frac * bw, y1 + bh * 0.1)
    elif side == 1:
        rect = (x1 - frac * bw, y0 - bh * 0.1, x1 + bw * 0.3, y1 + bh * 0.1)
    elif side == 2:
        rect = (x0 - bw * 0.1, y0 - bh * 0.3, x1 + bw * 0.1, y0 + frac * bh)
    else:
        rect = (x0 - bw * 0.1, y1 - frac * bh, x1 + bw * 0.1, y1 + bh * 0.3)
    rx0, ry0, rx1, ry1 = rect
    dim = 0.3 if night else 1.0
    if rng.random() < 0.6:  # leaves
        base = np.array((40, 110, 60)) * rng.uniform(0.5, 1.2, 3) * dim
        for _ in range(int(rng.integers(6, 16))):
            cx, cy = rng.uniform(rx0, rx1), rng.uniform(ry0, ry1)
            r = max(1.0, rng.uniform(0.15, 0.35) * min(rx1 - rx0, ry1 - ry0))
            cv2.circle(img, (int(cx), int(cy)), int(r), (base * rng.uniform(0.6, 1.3)).tolist(),
                       -1, cv2.LINE_AA)
    else:
        cv2.rectangle(img, (int(rx0), int(ry0)), (int(rx1), int(ry1)),
                      (rng.uniform(40, 160, 3) * dim).tolist(), -1)


def generate(rng: np.random.Generator, height: int, width: int,
             light_px: tuple[float, float] | None = None) -> Scene:
    """Draw one scene of ``height`` x ``width`` pixels from ``rng``.

    ``light_px`` overrides the range of housing sizes (long side, pixels).
    """
    condition = random_condition(rng)
    night = condition == "night"
    img = draw_background(rng, height, width, condition)
    short_side = min(height, width)

    for _ in range(int(rng.integers(0, 7))):
        draw = DISTRACTORS[rng.integers(len(DISTRACTORS))]
        size = float(np.exp(rng.uniform(np.log(6), np.log(short_side / 3))))
        draw(rng, img, rng.uniform(-0.1, 0.95) * width, rng.uniform(0.0, 0.95) * height, size,
             night)

    boxes: list[np.ndarray] = []
    classes: list[int] = []
    target = _light_count(rng)
    attempts = 0
    while len(boxes) < target and attempts < target * 6:
        attempts += 1
        cls = int(rng.integers(NUM_CLASSES))
        style = random_style(rng, night)
        long_px = _light_size(rng, short_side, light_px)
        group = int(rng.integers(2, 5)) if rng.random() < 0.3 else 1
        pw, ph = _patch_extent(style, long_px)
        gap = pw * rng.uniform(0.8, 4.0)
        total_w = group * pw + (group - 1) * gap
        if total_w >= width - 2 or ph >= height - 2:
            group, total_w = 1, pw
            if pw >= width - 2:
                continue
        x = rng.uniform(1, width - total_w - 1)
        y = rng.uniform(1, height - ph - 1) if rng.random() < 0.3 else \
            rng.uniform(1, max(2.0, 0.7 * height - ph))
        for k in range(group):
            if len(boxes) >= target:
                break
            gx = x + k * (pw + gap) + rng.normal(0, 0.05 * pw)
            gy = y + rng.normal(0, 0.05 * ph)
            gx = float(np.clip(gx, 1, width - pw - 1))
            gy = float(np.clip(gy, 1, height - ph - 1))
            area = np.array([gx, gy, gx + pw, gy + ph])
            if _overlaps(area, boxes, 0.15 * long_px):
                continue
            _draw_mount(rng, img, gx, gy, gx + pw, gy + ph, night)
            box = paste_light(img, rng, cls, style, long_px, gx, gy)
            if box.size == 0 or box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            boxes.append(box)
            classes.append(cls)

    for box in boxes:
        if rng.random() < 0.12 and box[3] - box[1] > 12:
            _occlude(rng, img, box, night)

    out = camera(rng, img)
    return Scene(image=out, classes=np.array(classes, np.int64),
                 boxes=np.array(boxes, np.float32).reshape(-1, 4))


def make_scene(seed: int, index: int, height: int, width: int,
               light_px: tuple[float, float] | None = None) -> Scene:
    """Scene number ``index`` of the data set ``seed``; the same arguments give the same scene."""
    return generate(np.random.default_rng([seed, index]), height, width, light_px)
