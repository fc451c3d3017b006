"""Street-scene backgrounds: sky, clouds, buildings, foliage and road, by day, dusk and night."""

from __future__ import annotations

import cv2
import numpy as np

CONDITIONS: tuple[str, ...] = ("day", "overcast", "dusk", "night")
_CONDITION_P = (0.42, 0.18, 0.17, 0.23)

# (top, horizon) sky colours, BGR.
_SKY = {
    "day": ((185, 120, 55), (235, 215, 190)),
    "overcast": ((175, 170, 165), (215, 212, 208)),
    "dusk": ((95, 45, 50), (80, 150, 240)),
    "night": ((28, 14, 8), (60, 48, 40)),
}
_LIGHTNESS = {"day": 1.0, "overcast": 0.8, "dusk": 0.5, "night": 0.18}


def random_condition(rng: np.random.Generator) -> str:
    """Pick a lighting condition."""
    return str(CONDITIONS[rng.choice(len(CONDITIONS), p=_CONDITION_P)])


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of shape (h, w)."""
    small = rng.uniform(-1, 1, (max(2, cells * h // max(h, w)), max(2, cells * w // max(h, w))))
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _sky(rng: np.random.Generator, h: int, w: int, condition: str) -> np.ndarray:
    top, horizon = (np.array(c, np.float64) for c in _SKY[condition])
    top = top * rng.uniform(0.85, 1.15, 3)
    horizon = horizon * rng.uniform(0.85, 1.15, 3)
    t = np.linspace(0, 1, h)[:, None, None] ** rng.uniform(0.6, 1.6)
    img = np.broadcast_to(top * (1 - t) + horizon * t, (h, w, 3)).copy()
    if condition in ("day", "overcast", "dusk") and rng.random() < 0.7:
        clouds = np.clip(smooth_noise(rng, h, w, int(rng.integers(3, 9))) * 1.6
                         - rng.uniform(0.0, 0.8), 0, 1)
        tint = np.array((240, 240, 240)) if condition != "dusk" else np.array((150, 170, 230))
        amount = rng.uniform(0.3, 0.9)
        img = img * (1 - amount * clouds[..., None]) + tint * amount * clouds[..., None]
    return img


def _buildings(rng: np.random.Generator, img: np.ndarray, horizon: int,
               condition: str) -> None:
    h, w = img.shape[:2]
    light = _LIGHTNESS[condition]
    x = int(rng.integers(-w // 4, w // 8))
    while x < w:
        bw = int(rng.integers(max(8, w // 10), max(9, w // 2)))
        top = int(rng.uniform(0.0, 0.85) * horizon)
        base = rng.uniform(60, 200, 3) * np.array([0.9, 0.95, 1.0]) * light
        cv2.rectangle(img, (x, top), (x + bw, horizon), base.tolist(), -1)
        # windows
        if rng.random() < 0.8 and bw > 12:
            win = max(2, int(rng.integers(3, 10)))
            gap = max(2, win + int(rng.integers(2, 8)))
            dark = base * rng.uniform(0.3, 0.7)
            for wy in range(top + gap, horizon - win, gap):
                for wx in range(x + gap // 2, x + bw - win, gap):
                    colour = dark
                    if condition in ("night", "dusk") and rng.random() < 0.3:
                        colour = np.array((90, 190, 250)) * rng.uniform(0.5, 1.0)
                    elif condition in ("day", "overcast") and rng.random() < 0.3:
                        colour = np.array((200, 180, 160)) * light * rng.uniform(0.7, 1.1)
                    cv2.rectangle(img, (wx, wy), (wx + win, wy + win), colour.tolist(), -1)
        x += bw + int(rng.integers(0, max(1, w // 10)))


def _trees(rng: np.random.Generator, img: np.ndarray, horizon: int, condition: str,
           count: int) -> None:
    h, w = img.shape[:2]
    light = _LIGHTNESS[condition]
    for _ in range(count):
        cx = rng.uniform(0, w)
        cy = rng.uniform(0.2, 1.0) * horizon
        size = rng.uniform(0.05, 0.3) * h
        base = np.array((40, 110, 60)) * rng.uniform(0.5, 1.2, 3) * light
        trunk_w = max(1, int(size * 0.08))
        cv2.rectangle(img, (int(cx) - trunk_w, int(cy)), (int(cx) + trunk_w, horizon),
                      (30 * light, 45 * light, 60 * light), -1)
        for _ in range(int(rng.integers(8, 25))):
            ox, oy = rng.normal(0, size * 0.4, 2)
            r = rng.uniform(0.1, 0.35) * size
            colour = base * rng.uniform(0.6, 1.3)
            cv2.circle(img, (int(cx + ox), int(cy + oy)), max(1, int(r)), colour.tolist(), -1,
                       cv2.LINE_AA)


def _road(rng: np.random.Generator, img: np.ndarray, horizon: int, condition: str) -> None:
    h, w = img.shape[:2]
    if horizon >= h:
        return
    light = _LIGHTNESS[condition]
    asphalt = rng.uniform(70, 120) * light
    img[horizon:] = asphalt * rng.uniform(0.9, 1.1, 3)
    vx = rng.uniform(0.3, 0.7) * w
    marking = np.array((230, 230, 230)) if rng.random() < 0.7 else np.array((40, 190, 230))
    for k in range(int(rng.integers(2, 6))):
        bx = rng.uniform(-0.5, 1.5) * w
        cv2.line(img, (int(vx), horizon), (int(bx), h), (marking * light * 0.9).tolist(),
                 max(1, int(rng.uniform(1, 5))), cv2.LINE_AA)
    # kerb / pavement band
    kerb = int(horizon + rng.uniform(0.0, 0.1) * (h - horizon))
    cv2.rectangle(img, (0, horizon), (w, kerb), (rng.uniform(110, 170) * light,) * 3, -1)


def draw_background(rng: np.random.Generator, h: int, w: int, condition: str) -> np.ndarray:
    """A float BGR background of shape (h, w, 3) for ``condition`` (see CONDITIONS)."""
    layout = rng.choice(4, p=(0.55, 0.2, 0.15, 0.1))  # street, sky only, trees, buildings
    horizon = int(rng.uniform(0.45, 0.95) * h) if layout == 0 else h
    img = _sky(rng, h, w, condition)
    if layout in (0, 3):
        _buildings(rng, img, horizon, condition)
    if layout in (0, 2):
        _trees(rng, img, horizon, condition, int(rng.integers(1, 6 if layout == 0 else 14)))
    if layout == 0:
        _road(rng, img, horizon, condition)
    texture = smooth_noise(rng, h, w, int(rng.integers(16, 64))) * rng.uniform(2, 12)
    img += texture[..., None]
    return img
