"""Camera effects applied to a finished scene: exposure, colour cast, blur, noise, JPEG."""

from __future__ import annotations

import cv2
import numpy as np


def expose(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Gain, gamma and white-balance changes of a float BGR image; returns uint8."""
    gain = rng.uniform(0.65, 1.35)
    cast = rng.uniform(0.9, 1.1, 3)
    out = np.clip(img * gain * cast, 0, 255) / 255.0
    out = out ** rng.uniform(0.75, 1.3)
    return (out * 255.0 + 0.5).astype(np.uint8)


def blur(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Defocus or motion blur, sometimes."""
    p = rng.random()
    if p < 0.25:
        return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.3))
    if p < 0.33:
        k = int(rng.integers(3, 7))
        kernel = np.zeros((k, k), np.float32)
        angle = rng.uniform(0, np.pi)
        c = (k - 1) / 2
        cv2.line(kernel, (int(c - c * np.cos(angle)), int(c - c * np.sin(angle))),
                 (int(c + c * np.cos(angle)), int(c + c * np.sin(angle))), 1.0, 1)
        kernel /= max(1e-6, kernel.sum())
        return cv2.filter2D(img, -1, kernel)
    return img


def noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Gaussian sensor noise, sometimes."""
    if rng.random() < 0.5:
        n = rng.normal(0, rng.uniform(1, 9), img.shape)
        return np.clip(img + n, 0, 255).astype(np.uint8)
    return img


def jpeg(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Re-encode as JPEG at a random quality, sometimes."""
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
        if ok:
            return cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return img


def camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """All camera effects in order; float BGR in, uint8 BGR out."""
    out = expose(rng, img)
    out = blur(rng, out)
    out = noise(rng, out)
    return jpeg(rng, out)
