"""Drawing of one traffic light: housing, optional back plate, visors and lamps.

The light is rendered on a supersampled RGBA patch and composited onto the scene, so that
small lights keep anti-aliased lamps and arrows. The label box is the housing rectangle.

Class ids follow ``traffic_light.names``: go, stop, stopLeft, goLeft, warning, warningLeft.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("go", "stop", "stopLeft", "goLeft", "warning", "warningLeft")
NUM_CLASSES = len(CLASS_NAMES)

# Lamp colour of each class (0 red, 1 yellow, 2 green) and whether the lamp is a left arrow.
CLASS_COLOUR: tuple[int, ...] = (2, 0, 0, 2, 1, 1)
CLASS_ARROW: tuple[bool, ...] = (False, False, True, True, False, True)

_RENDER_MIN_LONG = 96  # long side of the supersampled patch, in pixels

# BGR.
_HOUSING_COLOURS = np.array([
    (22, 22, 22), (35, 35, 38), (55, 55, 55), (30, 58, 32), (25, 170, 215), (95, 98, 100),
    (40, 40, 30),
], dtype=np.float64)


@dataclass(frozen=True)
class LightStyle:
    """How one light looks; everything the drawing needs besides class and geometry."""

    vertical: bool
    reverse_order: bool  # green first (e.g. Japanese horizontal lights)
    housing_bgr: tuple[float, float, float]
    rounded: float  # corner radius as a fraction of the short side
    lamp_fill: float  # lamp diameter as a fraction of the short side
    back_plate: bool
    plate_border: bool
    visors: bool
    lit_gain: float  # brightness of the lit lamp, 0.7 .. 1.0
    glow: float  # strength of the halo, 0 .. 1
    unlit_level: float  # brightness of dark lamps, 0.05 .. 0.35
    hue_shift: float  # small hue variation of the lamp colours, degrees
    aspect: float  # short side / long side of the housing


def random_style(rng: np.random.Generator, night: bool) -> LightStyle:
    """Draw a random light style; night lights glow more and show darker housings."""
    vertical = bool(rng.random() < 0.7)
    housing = _HOUSING_COLOURS[rng.integers(len(_HOUSING_COLOURS))] * rng.uniform(0.8, 1.15)
    if night:
        housing = housing * rng.uniform(0.3, 0.6)
    return LightStyle(
        vertical=vertical,
        reverse_order=bool(not vertical and rng.random() < 0.3),
        housing_bgr=tuple(float(c) for c in np.clip(housing, 0, 255)),
        rounded=float(rng.uniform(0.0, 0.35)),
        lamp_fill=float(rng.uniform(0.62, 0.82)),
        back_plate=bool(rng.random() < 0.35),
        plate_border=bool(rng.random() < 0.5),
        visors=bool(rng.random() < 0.5),
        lit_gain=float(rng.uniform(0.75, 1.0)),
        glow=float(rng.uniform(0.4, 1.0) if night else rng.uniform(0.0, 0.5)),
        unlit_level=float(rng.uniform(0.04, 0.3)),
        hue_shift=float(rng.uniform(-8, 8)),
        aspect=float(rng.uniform(0.3, 0.42)),
    )


def lamp_bgr(colour: int, hue_shift: float, value: float) -> np.ndarray:
    """BGR colour (0..255) of a lamp: 0 red, 1 yellow (amber), 2 green (blue-green LED)."""
    hue = (2.0, 40.0, 160.0)[colour] + hue_shift  # degrees
    sat = (0.92, 0.95, 0.85)[colour]
    hsv = np.array([[[hue % 360.0, sat, value]]], dtype=np.float32)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64) * 255.0


def _left_arrow(cx: float, cy: float, r: float) -> np.ndarray:
    """Polygon of a left-pointing arrow inscribed in a lamp of radius r."""
    pts = np.array([
        (-0.78, 0.0), (-0.12, -0.6), (-0.12, -0.22), (0.72, -0.22),
        (0.72, 0.22), (-0.12, 0.22), (-0.12, 0.6),
    ])
    return np.round((pts * r + (cx, cy)) * 16).astype(np.int32)  # shift=4


def _circle(img: np.ndarray, c: tuple[float, float], r: float, colour: object) -> None:
    cv2.circle(img, (round(c[0] * 16), round(c[1] * 16)), max(1, round(r * 16)), colour, -1,
               cv2.LINE_AA, 4)


def _rounded_rect(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, radius: float,
                  colour: object) -> None:
    radius = max(0.0, min(radius, (x1 - x0) / 2, (y1 - y0) / 2))
    pts = np.array([(x0 + radius, y0), (x1 - radius, y0), (x1, y0 + radius), (x1, y1 - radius),
                    (x1 - radius, y1), (x0 + radius, y1), (x0, y1 - radius), (x0, y0 + radius)])
    if radius >= 1:
        for cx, cy in ((x0 + radius, y0 + radius), (x1 - radius, y0 + radius),
                       (x0 + radius, y1 - radius), (x1 - radius, y1 - radius)):
            _circle(img, (cx, cy), radius, colour)
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, 4)


def render_light(rng: np.random.Generator, cls: int, style: LightStyle,
                 long_px: float) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float],
                                          tuple[float, float, float]]:
    """Render a light at scale and downsample it.

    Returns (bgr float patch, alpha float patch, housing box in patch pixels x1y1x2y2,
    lit lamp (cx, cy, radius) in patch pixels).
    """
    short_px = long_px * style.aspect
    margin = 0.35 * short_px if style.back_plate else 0.06 * short_px
    scale = max(1.0, _RENDER_MIN_LONG / long_px)
    L, S, M = long_px * scale, short_px * scale, margin * scale
    size_l, size_s = L + 2 * M, S + 2 * M
    w, h = (size_s, size_l) if style.vertical else (size_l, size_s)
    ww, hh = int(np.ceil(w)) + 2, int(np.ceil(h)) + 2
    bgr = np.zeros((hh, ww, 3), np.float64)
    alpha = np.zeros((hh, ww), np.float64)
    ox, oy = 1.0, 1.0
    hx0, hy0 = ox + M, oy + M
    hx1, hy1 = (hx0 + S, hy0 + L) if style.vertical else (hx0 + L, hy0 + S)
    housing = np.array(style.housing_bgr)
    if style.back_plate:
        plate = housing * 0.6 if rng.random() < 0.5 else np.full(3, rng.uniform(10, 40))
        _rounded_rect(bgr, ox, oy, ox + w - 0.5, oy + h - 0.5, 0.08 * S, plate.tolist())
        _rounded_rect(alpha, ox, oy, ox + w - 0.5, oy + h - 0.5, 0.08 * S, 1.0)
        if style.plate_border:
            edge = 0.07 * M
            border = (230, 230, 230) if rng.random() < 0.5 else (40, 210, 230)
            cv2.rectangle(bgr, (round((ox + edge) * 16), round((oy + edge) * 16)),
                          (round((ox + w - edge) * 16), round((oy + h - edge) * 16)), border,
                          max(1, round(edge * 0.8)), cv2.LINE_AA, 4)
    _rounded_rect(bgr, hx0, hy0, hx1, hy1, style.rounded * S, housing.tolist())
    _rounded_rect(alpha, hx0, hy0, hx1, hy1, style.rounded * S, 1.0)
    # Shading across the housing: light from above or one side.
    yy, xx = np.mgrid[0:hh, 0:ww]
    shade = 1.0 + 0.25 * ((yy - hy0) / max(1.0, hy1 - hy0) - 0.5) * rng.uniform(-1, 1) \
        + 0.2 * ((xx - hx0) / max(1.0, hx1 - hx0) - 0.5) * rng.uniform(-1, 1)
    bgr *= shade[..., None]

    colours = [0, 1, 2][::-1] if style.reverse_order else [0, 1, 2]
    lit = colours.index(CLASS_COLOUR[cls])
    arrow = CLASS_ARROW[cls]
    r = style.lamp_fill * S / 2
    lit_lamp = (0.0, 0.0, 0.0)
    for i, colour in enumerate(colours):
        t = (i + 0.5) / 3
        if style.vertical:
            cx, cy = (hx0 + hx1) / 2, hy0 + t * L
        else:
            cx, cy = hx0 + t * L, (hy0 + hy1) / 2
        lens_dark = np.full(3, 12.0)
        if i == lit:
            value = style.lit_gain
            colour_bgr = lamp_bgr(colour, style.hue_shift, value)
            lit_lamp = (cx, cy, r)
            if arrow:
                _circle(bgr, (cx, cy), r, lens_dark.tolist())
                cv2.fillPoly(bgr, [_left_arrow(cx, cy, r)], colour_bgr.tolist(), cv2.LINE_AA, 4)
                core = np.clip(colour_bgr + (255 - colour_bgr) * 0.55, 0, 255)
                cv2.fillPoly(bgr, [_left_arrow(cx, cy, r * 0.55)], core.tolist(), cv2.LINE_AA, 4)
            else:
                _circle(bgr, (cx, cy), r, colour_bgr.tolist())
                core = np.clip(colour_bgr + (255 - colour_bgr) * rng.uniform(0.35, 0.75), 0, 255)
                _circle(bgr, (cx, cy), r * rng.uniform(0.45, 0.7), core.tolist())
        else:
            dark = lamp_bgr(colour, style.hue_shift, style.unlit_level)
            dark = np.maximum(dark, 10.0)
            if arrow:
                _circle(bgr, (cx, cy), r, lens_dark.tolist())
                cv2.fillPoly(bgr, [_left_arrow(cx, cy, r)], dark.tolist(), cv2.LINE_AA, 4)
            else:
                _circle(bgr, (cx, cy), r, dark.tolist())
                # specular glint of the lens
                _circle(bgr, (cx - 0.3 * r, cy - 0.35 * r), 0.18 * r,
                        np.minimum(dark + 40, 255).tolist())
        if style.visors:
            axes = (round(r * 1.12 * 16), round(r * 1.12 * 16))
            cv2.ellipse(bgr, (round(cx * 16), round(cy * 16)), axes, 0, 200, 340,
                        (housing * 0.7).tolist(), max(1, round(0.18 * r)), cv2.LINE_AA, 4)

    # Downsample to the target size.
    if scale > 1.0:
        out_w = max(1, round(ww / scale))
        out_h = max(1, round(hh / scale))
        bgr = cv2.resize(bgr, (out_w, out_h), interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, (out_w, out_h), interpolation=cv2.INTER_AREA)
        sx, sy = out_w / ww, out_h / hh
    else:
        sx = sy = 1.0
    box = (hx0 * sx, hy0 * sy, hx1 * sx, hy1 * sy)
    lamp = (lit_lamp[0] * sx, lit_lamp[1] * sy, lit_lamp[2] * (sx + sy) / 2)
    return bgr, alpha, box, lamp


def paste_light(img: np.ndarray, rng: np.random.Generator, cls: int, style: LightStyle,
                long_px: float, x: float, y: float) -> np.ndarray:
    """Composite a light with its top-left patch corner at (x, y) onto float image ``img``.

    Adds the halo of the lit lamp. Returns the housing box (x1, y1, x2, y2) in image pixels,
    clipped to the image, or an empty array when it falls outside.
    """
    bgr, alpha, box, lamp = render_light(rng, cls, style, long_px)
    ih, iw = img.shape[:2]
    ix, iy = int(round(x)), int(round(y))
    ph, pw = alpha.shape
    x0, y0, x1, y1 = max(ix, 0), max(iy, 0), min(ix + pw, iw), min(iy + ph, ih)
    if x1 <= x0 or y1 <= y0:
        return np.zeros(0)
    a = alpha[y0 - iy:y1 - iy, x0 - ix:x1 - ix, None]
    img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a) + bgr[y0 - iy:y1 - iy, x0 - ix:x1 - ix] * a
    add_glow(img, ix + lamp[0], iy + lamp[1], lamp[2],
             lamp_bgr(CLASS_COLOUR[cls], style.hue_shift, 1.0), style.glow)
    bx = np.array([box[0] + ix, box[1] + iy, box[2] + ix, box[3] + iy])
    return np.clip(bx, 0, [iw, ih, iw, ih])


def add_glow(img: np.ndarray, cx: float, cy: float, r: float, colour: np.ndarray,
             strength: float) -> None:
    """Add a Gaussian halo of ``colour`` around (cx, cy) to float image ``img`` in place."""
    if strength <= 0:
        return
    sigma = max(0.8, r * (0.7 + 1.3 * strength))
    reach = int(np.ceil(2.5 * sigma))
    ih, iw = img.shape[:2]
    x0, x1 = max(0, int(cx) - reach), min(iw, int(cx) + reach + 1)
    y0, y1 = max(0, int(cy) - reach), min(ih, int(cy) + reach + 1)
    if x1 <= x0 or y1 <= y0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)) * (0.35 * strength)
    img[y0:y1, x0:x1] += g[..., None] * colour[None, None, :]
