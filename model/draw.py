"""Drawing detections: onto a BGR array (:func:`draw_detections`), or an encoded image
into an annotated JPEG (:func:`annotate`, for the service's ``?annotated=1``)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

from model.detection import Detection

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(class_id: int) -> tuple[int, int, int]:
    """A bright BGR colour for ``class_id``: stable, and far apart for neighbouring ids."""
    hue = (class_id * _GOLDEN_RATIO_CONJUGATE) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(blue * 255), round(green * 255), round(red * 255)


def draw_detections(img: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """Return a copy of BGR ``img`` with each detection's box and "label confidence" tag.

    The line width grows with the image.
    """
    out = img.copy()
    height, width = out.shape[:2]
    line_width = max(round((height + width) / 2 * 0.003), 2)
    font_scale = line_width / 3
    font_thickness = max(line_width - 1, 1)
    for det in detections:
        top_left = (round(det.x1), round(det.y1))
        bottom_right = (round(det.x2), round(det.y2))
        color = class_color(det.class_id)
        cv2.rectangle(out, top_left, bottom_right, color, line_width, cv2.LINE_AA)

        text = f"{det.label} {det.confidence:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, font_thickness)
        tag_h = text_h + baseline + line_width
        # Put the tag above the box, or inside it when the box touches the top edge.
        tag_top = top_left[1] - tag_h if top_left[1] - tag_h >= 0 else top_left[1]
        tag_left = min(max(top_left[0], 0), max(width - text_w - line_width, 0))
        cv2.rectangle(out, (tag_left, tag_top), (tag_left + text_w + line_width, tag_top + tag_h),
                      color, cv2.FILLED, cv2.LINE_AA)
        cv2.putText(out, text, (tag_left + line_width // 2, tag_top + text_h + line_width // 2),
                    _FONT, font_scale, _text_color(color), font_thickness, cv2.LINE_AA)
    return out


def annotate(data: bytes, detections: Sequence[Detection], quality: int = 90) -> bytes:
    """A JPEG of the encoded image with its boxes and labels drawn (CPU-bound: run it in
    a thread). ``data`` must already have been validated (the service's stored originals
    were, by a worker, when they were uploaded): the same flag (``IMREAD_COLOR``, EXIF
    orientation applied) gives the pixel grid the boxes were found on."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("the stored image cannot be decoded")
    drawn = draw_detections(image, detections)
    ok, encoded = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the annotated image")
    return encoded.tobytes()


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (BGR)."""
    blue, green, red = background
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    return (0, 0, 0) if luma > 140 else (255, 255, 255)
