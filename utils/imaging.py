"""Image helpers for the web process: format sniffing and annotated copies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SUPPORTED_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/webp")


def sniff_content_type(data: bytes) -> str | None:
    """The image type from the file's magic bytes; None unless JPEG, PNG, BMP or WebP."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:2] == b"BM" and len(data) >= 26:
        return "image/bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def annotate(data: bytes, detections: Sequence[dict[str, Any]], quality: int = 90) -> bytes:
    """A JPEG of the image with its boxes and labels drawn (CPU-bound: run in a thread)."""
    import cv2
    import numpy as np

    from utils.draw import draw_detections

    # The stored original was fully validated by a worker when it was uploaded; the
    # same flag (IMREAD_COLOR, EXIF orientation applied) gives the same pixel grid.
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("the stored image cannot be decoded")
    drawn = draw_detections(image, list(detections))
    ok, encoded = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the annotated image")
    return encoded.tobytes()
