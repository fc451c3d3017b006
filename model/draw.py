"""Drawing detections: onto a BGR array (:func:`draw_detections`), or an encoded image
into an annotated JPEG (:func:`annotate`, for the service's ``?annotated=1``).

The rules are the upload page's too (``system/static/js/boxes.js`` draws the same way,
with the palette and sizes :func:`palette` gives it):

* Colours (:func:`label_style`): a traffic-light class has its light's colour (go and
  goLeft green, stop and stopLeft red, warning and warningLeft amber), and an arrow
  class is told apart by a mark, not only by hue: a dashed outline and an arrow before
  its label. Other classes take the Okabe-Ito palette (Okabe & Ito, *Color Universal
  Design*, 2008: eight colours told apart with every common colour-vision deficiency;
  its black is left out, it would vanish on dark images), by class id.
* Labels (:func:`place_labels`) stay inside the image and never cover each other: above
  the box, else below it, else inside its top, else inside its bottom (each aligned with
  the box's left edge, else its right); when all of those are taken, the label moves
  beside or stacks above or below the labels in its way, the nearest free place first.
  A label that finds no place is left off (its box is still drawn).
* The text size follows the image (:func:`label_font_px`): about 2 % of the geometric
  mean of its sides, at least 11 px and at most 40 px.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.detection import Detection
from model.preprocess import PAD_COLOR, decode_image

# The lights: green, red and amber, dark and saturated enough for a white or black text.
LIGHT_COLORS = {"go": "#1f9d55", "stop": "#d62728", "warning": "#f5a000"}
ARROW_SUFFIX = "Left"  # goLeft, stopLeft, warningLeft: a light's colour and the arrow mark
# Okabe & Ito (2008), without black: orange, sky blue, bluish green, yellow, blue,
# vermillion, reddish purple.
CATEGORICAL = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7")
FONT_SCALE, FONT_MIN_PX, FONT_MAX_PX = 0.02, 11, 40
LABEL_PAD = 0.25  # padding around the text, in font heights
LABEL_HEIGHT = 1.4  # a label's height, in font heights
MAX_TRIES = 64  # places tried per label before it is left off


@dataclass(frozen=True)
class LabelStyle:
    """How one class is drawn: box and label colour, label text colour (``#rrggbb``), and
    whether it is an arrow class (dashed outline, an arrow before the label)."""

    color: str
    text_color: str
    arrow: bool

    @property
    def rgb(self) -> tuple[int, int, int]:
        return _rgb(self.color)


@dataclass(frozen=True)
class Rect:
    """A label's place in image pixels."""

    left: float
    top: float
    right: float
    bottom: float

    def overlaps(self, other: Rect) -> bool:
        """True if the two share more than an edge."""
        return (self.left < other.right and other.left < self.right
                and self.top < other.bottom and other.top < self.bottom)


def label_style(label: str, class_id: int) -> LabelStyle:
    """The colour and mark of a class, by its name (a light) or else by its id."""
    arrow = label.endswith(ARROW_SUFFIX) and label[:-len(ARROW_SUFFIX)] in LIGHT_COLORS
    light = LIGHT_COLORS.get(label[:-len(ARROW_SUFFIX)] if arrow else label)
    color = light or CATEGORICAL[max(int(class_id), 0) % len(CATEGORICAL)]
    return LabelStyle(color, _text_color(_rgb(color)), arrow)


def class_color(class_id: int) -> tuple[int, int, int]:
    """The BGR colour of a class known only by its id (the categorical palette)."""
    red, green, blue = label_style("", class_id).rgb
    return blue, green, red


def palette() -> dict[str, object]:
    """The drawing rules as JSON-able data, for the upload page's script: one definition."""
    return {"lights": LIGHT_COLORS, "arrowSuffix": ARROW_SUFFIX, "categorical": CATEGORICAL,
            "text": {c: _text_color(_rgb(c)) for c in (*LIGHT_COLORS.values(), *CATEGORICAL)},
            "font": {"scale": FONT_SCALE, "min": FONT_MIN_PX, "max": FONT_MAX_PX},
            "label": {"pad": LABEL_PAD, "height": LABEL_HEIGHT, "maxTries": MAX_TRIES},
            "matte": "#{:02x}{:02x}{:02x}".format(*PAD_COLOR)}


def label_text(det: Detection) -> str:
    """A box's label: its class and confidence, as on the upload page."""
    return f"{det.label} {det.confidence * 100:.0f}%"


def label_font_px(width: float, height: float) -> int:
    """The label text size for an image (or its shown size) of ``width`` x ``height``."""
    size = round(FONT_SCALE * math.sqrt(max(width, 0) * max(height, 0)))
    return min(max(size, FONT_MIN_PX), FONT_MAX_PX)


def place_labels(boxes: Sequence[tuple[float, float, float, float]],
                 sizes: Sequence[tuple[float, float]], width: float,
                 height: float) -> list[Rect | None]:
    """Where each box's label goes (None: no place), in order: earlier boxes (the more
    confident, as detections come) choose first. ``boxes`` are (x1, y1, x2, y2) and
    ``sizes`` the labels' (width, height), in the image's pixels; the labels returned
    lie inside ``width`` x ``height`` and none overlaps another."""
    placed: list[Rect] = []
    out: list[Rect | None] = []
    for (x1, y1, x2, y2), (w, h) in zip(boxes, sizes, strict=True):
        spot = _place_one(x1, y1, x2, y2, w, h, width, height, placed)
        if spot is not None:
            placed.append(spot)
        out.append(spot)
    return out


def _place_one(x1: float, y1: float, x2: float, y2: float, w: float, h: float,
               width: float, height: float, placed: Sequence[Rect]) -> Rect | None:
    if w > width or h > height:
        return None

    def clamp_x(x: float) -> float:
        return min(max(x, 0.0), width - w)

    anchor_x, anchor_y = clamp_x(x1), y1 - h
    # Candidates, best first: (rank, distance, sequence) orders them.
    heap: list[tuple[int, float, int, float, float]] = []
    seen: set[tuple[float, float]] = set()

    def push(rank: int, left: float, top: float) -> None:
        left = clamp_x(left)
        if top < 0 or top + h > height or (left, top) in seen:
            return
        seen.add((left, top))
        distance = abs(left - anchor_x) + abs(top - anchor_y)
        heapq.heappush(heap, (rank, distance, len(seen), left, top))

    order = 0
    for top in (y1 - h, y2, y1, y2 - h):  # above, below, inside top, inside bottom
        for left in (x1, x2 - w):  # aligned left, else right
            push(order, left, top)
            order += 1
    tries = 0
    while heap and tries < MAX_TRIES:
        _, _, _, left, top = heapq.heappop(heap)
        tries += 1
        spot = Rect(left, top, left + w, top + h)
        blockers = [p for p in placed if spot.overlaps(p)]
        if not blockers:
            return spot
        for block in blockers:  # stack above or below it, or go beside it
            push(order, left, block.bottom)
            push(order, left, block.top - h)
            push(order, block.right, top)
            push(order, block.left - w, top)
    return None


def draw_detections(img: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """Return a copy of BGR ``img`` with each detection's box and label (see the module's
    rules). Line width and text size grow with the image."""
    height, width = img.shape[:2]
    if not detections:
        return img.copy()
    canvas = Image.fromarray(np.ascontiguousarray(img[..., ::-1]))
    draw = ImageDraw.Draw(canvas)
    font_px = label_font_px(width, height)
    font = _font(font_px)
    line = max(2, round(font_px / 8))
    pad = round(font_px * LABEL_PAD)
    styles = [label_style(d.label, d.class_id) for d in detections]
    texts = [label_text(d) for d in detections]
    label_h = round(font_px * LABEL_HEIGHT)
    sizes = [(font.getlength(t) + 2 * pad + (_arrow_width(font_px) if s.arrow else 0), label_h)
             for t, s in zip(texts, styles, strict=True)]
    boxes = [(d.x1, d.y1, d.x2, d.y2) for d in detections]
    spots = place_labels(boxes, sizes, width, height)
    for det, style in zip(detections, styles, strict=True):
        _box(draw, det, style, line)
    for text, style, spot in zip(texts, styles, spots, strict=True):
        if spot is None:
            continue
        left, top = round(spot.left), round(spot.top)
        right, bottom = round(spot.right) - 1, round(spot.bottom) - 1
        draw.rectangle((left, top, right, bottom), fill=style.rgb)
        x = left + pad
        if style.arrow:
            _arrow(draw, x, (top + bottom) / 2, font_px, _rgb(style.text_color))
            x += _arrow_width(font_px)
        draw.text((x, (top + bottom) / 2), text, font=font, fill=_rgb(style.text_color),
                  anchor="lm")
    return np.ascontiguousarray(np.asarray(canvas)[..., ::-1])


def annotate(data: bytes, detections: Sequence[Detection], quality: int = 90) -> bytes:
    """A JPEG of the encoded image with its boxes and labels drawn (CPU-bound: run it in
    a thread). ``data`` must already have been validated (the service's stored originals
    were, by a worker, when they were uploaded); it is decoded as the worker decoded it
    (:func:`model.preprocess.decode_image`: any accepted format, upright, transparency
    on the letterbox grey), the pixel grid the boxes were found on."""
    try:
        image = decode_image(data)
    except ValueError as exc:
        raise ValueError(f"the stored image cannot be decoded: {exc}") from exc
    drawn = draw_detections(image, detections)
    ok, encoded = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the annotated image")
    return encoded.tobytes()


def _box(draw: ImageDraw.ImageDraw, det: Detection, style: LabelStyle, line: int) -> None:
    x1, y1, x2, y2 = (round(v) for v in (det.x1, det.y1, det.x2, det.y2))
    if not style.arrow:
        draw.rectangle((x1, y1, x2, y2), outline=style.rgb, width=line)
        return
    dash, gap = 3 * line, 2 * line  # an arrow class: a dashed outline
    for a, b, fixed, horizontal in ((x1, x2, y1, True), (x1, x2, y2, True),
                                    (y1, y2, x1, False), (y1, y2, x2, False)):
        start = a
        while start < b:
            end = min(start + dash, b)
            offset = fixed - line // 2
            if horizontal:
                draw.rectangle((start, offset, end, offset + line - 1), fill=style.rgb)
            else:
                draw.rectangle((offset, start, offset + line - 1, end), fill=style.rgb)
            start = end + gap


def _arrow_width(font_px: int) -> int:
    return round(font_px * 1.1)


def _arrow(draw: ImageDraw.ImageDraw, x: float, y: float, font_px: int,
           color: tuple[int, int, int]) -> None:
    """A left arrow (the bundled font has no "←"), about as wide as a letter pair."""
    length, head = font_px * 0.8, font_px * 0.32
    stroke = max(1, round(font_px / 9))
    draw.line((x + head * 0.8, y, x + length, y), fill=color, width=stroke)
    draw.polygon([(x, y), (x + head * 1.2, y - head), (x + head * 1.2, y + head)], fill=color)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font (Aileron, by dotcolon.net, CC0) at ``size`` px: no system
    font needed."""
    return ImageFont.load_default(size=size)


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _text_color(background: tuple[int, int, int]) -> str:
    """Black on light backgrounds, white on dark ones."""
    red, green, blue = background
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    return "#000000" if luma > 150 else "#ffffff"
