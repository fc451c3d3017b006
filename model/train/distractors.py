"""Things in a street that are not traffic lights, drawn so the model learns not to report them.

Tail lights, road signs, coloured balls, street lamps, lit windows and traffic lights seen
from behind (a housing without a lit lamp, which LISA-style labels do not count).
"""

from __future__ import annotations

import cv2
import numpy as np

from model.train.lights import add_glow, lamp_bgr


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * 16)), int(round(y * 16))


def tail_lights(rng: np.random.Generator, img: np.ndarray, x: float, y: float, size: float,
                night: bool) -> None:
    """A car rear with two red lamps; ``size`` is the car width."""
    w, h = size, size * rng.uniform(0.45, 0.7)
    body = rng.uniform(20, 200, 3) * (0.3 if night else 1.0)
    cv2.rectangle(img, _pt(x, y), _pt(x + w, y + h), body.tolist(), -1, cv2.LINE_AA, 4)
    cv2.rectangle(img, _pt(x + 0.1 * w, y - 0.35 * h), _pt(x + 0.9 * w, y),
                  (body * 0.8).tolist(), -1, cv2.LINE_AA, 4)
    red = lamp_bgr(0, rng.uniform(-4, 4), rng.uniform(0.7, 1.0))
    lw, lh = 0.18 * w, 0.15 * h
    for lx in (x + 0.05 * w, x + 0.95 * w - lw):
        ly = y + 0.25 * h
        cv2.rectangle(img, _pt(lx, ly), _pt(lx + lw, ly + lh), red.tolist(), -1, cv2.LINE_AA, 4)
        add_glow(img, lx + lw / 2, ly + lh / 2, lh, red, rng.uniform(0.3, 1.0) if night else 0.2)
    plate_w = 0.25 * w
    cv2.rectangle(img, _pt(x + (w - plate_w) / 2, y + 0.55 * h),
                  _pt(x + (w + plate_w) / 2, y + 0.72 * h), (220, 220, 220), -1, cv2.LINE_AA, 4)


def road_sign(rng: np.random.Generator, img: np.ndarray, x: float, y: float, size: float,
              night: bool) -> None:
    """A sign on a pole: stop, prohibition ring, warning diamond, blue or green panel."""
    dim = 0.35 if night else 1.0
    cx, cy, r = x + size / 2, y + size / 2, size / 2
    cv2.rectangle(img, _pt(cx - 0.05 * r, cy), _pt(cx + 0.05 * r, cy + 4 * r),
                  (np.array((120, 120, 120)) * dim).tolist(), -1, cv2.LINE_AA, 4)
    kind = rng.integers(5)
    if kind == 0:  # stop octagon
        ang = np.pi / 8 + np.arange(8) * np.pi / 4
        pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)],
                     (np.array((30, 30, 200)) * dim).tolist(), cv2.LINE_AA, 4)
        cv2.putText(img, "STOP", (int(cx - 0.75 * r), int(cy + 0.25 * r)),
                    cv2.FONT_HERSHEY_SIMPLEX, max(0.2, r / 40), (240 * dim,) * 3,
                    max(1, int(r / 12)), cv2.LINE_AA)
    elif kind == 1:  # prohibition / speed limit ring
        cv2.circle(img, _pt(cx, cy), int(r * 16), (np.array((40, 40, 210)) * dim).tolist(), -1,
                   cv2.LINE_AA, 4)
        cv2.circle(img, _pt(cx, cy), int(r * 0.75 * 16), (235 * dim,) * 3, -1, cv2.LINE_AA, 4)
        cv2.putText(img, str(int(rng.integers(2, 9)) * 10), (int(cx - 0.5 * r), int(cy + 0.3 * r)),
                    cv2.FONT_HERSHEY_SIMPLEX, max(0.2, r / 45), (20, 20, 20),
                    max(1, int(r / 14)), cv2.LINE_AA)
    elif kind == 2:  # warning diamond
        pts = np.array([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)])
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)],
                     (np.array((20, 200, 240)) * dim).tolist(), cv2.LINE_AA, 4)
        cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], True, (10, 10, 10),
                      max(1, int(r / 10)), cv2.LINE_AA, 4)
    else:  # rectangular panel, blue or green
        colour = (150, 70, 20) if kind == 3 else (60, 120, 20)
        cv2.rectangle(img, _pt(cx - 1.4 * r, cy - 0.6 * r), _pt(cx + 1.4 * r, cy + 0.6 * r),
                      (np.array(colour) * dim).tolist(), -1, cv2.LINE_AA, 4)
        cv2.rectangle(img, _pt(cx - 1.3 * r, cy - 0.5 * r), _pt(cx + 1.3 * r, cy + 0.5 * r),
                      (220 * dim,) * 3, max(1, int(r / 15)), cv2.LINE_AA, 4)


def coloured_ball(rng: np.random.Generator, img: np.ndarray, x: float, y: float, size: float,
                  night: bool) -> None:
    """A shaded sphere in a traffic-light colour (balloon, ball, round lamp of a shop)."""
    colour = lamp_bgr(int(rng.integers(3)), rng.uniform(-8, 8), rng.uniform(0.6, 1.0))
    r = size / 2
    cx, cy = x + r, y + r
    steps = 6
    for k in range(steps):
        t = k / steps
        c = colour * (0.5 + 0.5 * t) + (255 - colour) * 0.5 * t ** 3
        radius = max(1, int(r * (1 - 0.8 * t) * 16))
        cv2.circle(img, _pt(cx - 0.3 * r * t, cy - 0.3 * r * t), radius, c.tolist(), -1,
                   cv2.LINE_AA, 4)
    if night and rng.random() < 0.5:
        add_glow(img, cx, cy, r, colour, rng.uniform(0.2, 0.6))


def street_lamp(rng: np.random.Generator, img: np.ndarray, x: float, y: float, size: float,
                night: bool) -> None:
    """A pole with an arm and a lamp head; lit (warm white / sodium orange) at night."""
    h = img.shape[0]
    grey = (np.array((90, 95, 100)) * (0.4 if night else 1.0)).tolist()
    pole_w = max(1.0, size * 0.06)
    cv2.rectangle(img, _pt(x, y), _pt(x + pole_w, h), grey, -1, cv2.LINE_AA, 4)
    arm = size * rng.uniform(0.5, 1.0) * rng.choice((-1, 1))
    cv2.line(img, _pt(x, y), _pt(x + arm, y - 0.1 * size), grey, max(1, int(pole_w)),
             cv2.LINE_AA, 4)
    hx, hy = x + arm, y - 0.1 * size
    head_w = size * 0.3
    cv2.ellipse(img, _pt(hx, hy), (int(head_w * 8), int(head_w * 3)), 0, 0, 360, grey, -1,
                cv2.LINE_AA, 4)
    lit = night or rng.random() < 0.3
    colour = np.array((150, 220, 255)) if rng.random() < 0.5 else np.array((60, 160, 255))
    if lit:
        cv2.ellipse(img, _pt(hx, hy + head_w * 0.15), (int(head_w * 6), int(head_w * 2)), 0, 0,
                    180, colour.tolist(), -1, cv2.LINE_AA, 4)
        add_glow(img, hx, hy + head_w * 0.2, head_w * 0.4, colour, rng.uniform(0.4, 1.0))


def back_of_light(rng: np.random.Generator, img: np.ndarray, x: float, y: float, size: float,
                  night: bool) -> None:
    """A traffic light facing away: housing and back plate, no lit lamp."""
    vertical = rng.random() < 0.7
    w, h = (size * rng.uniform(0.3, 0.42), size) if vertical else (size, size * 0.36)
    colour = rng.uniform(15, 60) * (0.5 if night else 1.0)
    cv2.rectangle(img, _pt(x, y), _pt(x + w, y + h), (colour,) * 3, -1, cv2.LINE_AA, 4)
    if rng.random() < 0.5:  # maybe a dark unlit face: three dark lamps
        short = min(w, h)
        for i in range(3):
            t = (i + 0.5) / 3
            cx, cy = (x + w / 2, y + t * h) if vertical else (x + t * w, y + h / 2)
            cv2.circle(img, _pt(cx, cy), max(1, int(short * 0.33 * 16)),
                       (colour * 0.4 + 8,) * 3, -1, cv2.LINE_AA, 4)


def lit_window(rng: np.random.Generator, img: np.ndarray, x: float, y: float, size: float,
               night: bool) -> None:
    """A bright coloured rectangle: shop sign, neon or window."""
    colour = lamp_bgr(int(rng.integers(3)), rng.uniform(-15, 15), rng.uniform(0.5, 1.0))
    w, h = size * rng.uniform(0.3, 1.5), size * rng.uniform(0.2, 0.8)
    cv2.rectangle(img, _pt(x, y), _pt(x + w, y + h), colour.tolist(), -1, cv2.LINE_AA, 4)
    if night:
        add_glow(img, x + w / 2, y + h / 2, min(w, h) / 2, colour, rng.uniform(0.2, 0.6))


DISTRACTORS = (tail_lights, road_sign, coloured_ball, street_lamp, back_of_light, lit_window)
