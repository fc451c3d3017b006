"""Small real lights for training: real photos zoomed out into real scenes, real crops
pasted small.

CINTA's lights are close-ups (median long side 93 px in its 416-px files); street and
dashcam photos show lights of 6-40 px at the network's 512 view. Two kinds of sample make
small lights common while keeping them real:

* :func:`zoom_out` - a real photo fills the canvas (its lights labelled), and a grid of
  2x2 .. 6x6 cells is laid over it; about half of the cells get another real photo shrunk
  to the cell (60-100%), so its lights come out at roughly 5-60 px *with their real
  surroundings* (pole, sky, street). A background light mostly covered by a pasted photo
  loses its label.
* :func:`crops_on_scene` - a real photo fills the canvas and 2-6 real light crops
  (tl-crops) are pasted on it at 6-40 px long side, labelled with their colour.

Both are pure functions of the random generator and their inputs. Labels are (n, 5):
class, x1, y1, x2, y2 in canvas pixels; a light is kept down to ``MIN_LONG_PX`` long side
(thinner than :data:`model.train.dataset.MIN_BOX_PX` allows on each side, because a 6-px
light is 3 px wide).
"""

from __future__ import annotations

import cv2
import numpy as np

from model.train.dataset import hsv_jitter

MIN_LONG_PX = 4.0  # smallest labelled light: long side (px)
MIN_SHORT_PX = 1.5  # and short side
COVERED = 0.4  # a background light whose visible share falls below this loses its label

Photo = tuple[np.ndarray, np.ndarray, np.ndarray]  # BGR image, classes (n,), boxes (n, 4) px


def fill_canvas(rng: np.random.Generator, photo: Photo, width: int, height: int,
                zoom: tuple[float, float] = (1.0, 1.6)) -> Photo:
    """``photo`` scaled to cover a ``width`` x ``height`` canvas (times a random zoom in
    ``zoom``), randomly placed and flipped; lights cut by the canvas keep a clipped label
    while 35% of them shows."""
    img, classes, boxes = photo
    h, w = img.shape[:2]
    s = max(width / w, height / h) * float(rng.uniform(*zoom))
    tx = float(rng.uniform(width - w * s, 0))
    ty = float(rng.uniform(height - h * s, 0))
    flip = rng.random() < 0.5
    m = np.array([[s, 0, tx], [0, s, ty]], np.float64)
    if flip:
        img = np.ascontiguousarray(img[:, ::-1])
        boxes = np.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), 1)
    out = cv2.warpAffine(img, m, (width, height), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    b = boxes.reshape(-1, 4) * s + np.array([tx, ty, tx, ty])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    c = np.clip(b, 0, [width, height, width, height])
    visible = (c[:, 2] - c[:, 0]).clip(0) * (c[:, 3] - c[:, 1]).clip(0)
    keep = visible >= 0.35 * np.maximum(area, 1e-6)
    return out, classes[keep], c[keep].astype(np.float32)


def shrink(rng: np.random.Generator, photo: Photo, long_px: float) -> Photo:
    """``photo`` resized so that its long side is ``long_px``, with a random aspect change
    (width / height x 0.55..1.4, undoing CINTA's stretch to a square) and a random flip."""
    img, classes, boxes = photo
    h, w = img.shape[:2]
    f = float(np.exp(rng.uniform(np.log(0.55), np.log(1.4))))
    sw, sh = (f, 1.0) if f < 1 else (1.0, 1 / f)
    k = long_px / max(w * sw, h * sh)
    nw, nh = max(1, round(w * sw * k)), max(1, round(h * sh * k))
    out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    b = boxes.reshape(-1, 4) * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    if rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, ::-1])
        b = np.stack((nw - b[:, 2], b[:, 1], nw - b[:, 0], b[:, 3]), 1)
    return out, classes, b.astype(np.float32)


def _big_enough(boxes: np.ndarray) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return (np.maximum(w, h) >= MIN_LONG_PX) & (np.minimum(w, h) >= MIN_SHORT_PX)


def _visible_share(boxes: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Share of each box (pixels) not marked in the boolean mask ``covered``."""
    out = np.ones(len(boxes), np.float64)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        xa, ya = int(np.floor(x1)), int(np.floor(y1))
        xb, yb = max(xa + 1, int(np.ceil(x2))), max(ya + 1, int(np.ceil(y2)))
        region = covered[ya:yb, xa:xb]
        if region.size:
            out[i] = 1.0 - float(region.mean())
    return out


def paste_photos(rng: np.random.Generator, canvas: Photo, photos: list[Photo],
                 grid: int, cell_fill: tuple[float, float] = (0.6, 1.0)) -> Photo:
    """Paste ``photos`` shrunk into random cells of a ``grid`` x ``grid`` grid over
    ``canvas`` (one photo per cell, as many as there are photos and cells)."""
    img, classes, boxes = canvas
    img = img.copy()
    height, width = img.shape[:2]
    cw, ch = width / grid, height / grid
    cells = rng.permutation(grid * grid)[:len(photos)]
    covered = np.zeros((height, width), bool)
    out_cls, out_boxes = [], []
    for cell, photo in zip(cells, photos):
        gx, gy = int(cell) % grid, int(cell) // grid
        small, cls, b = shrink(rng, photo, min(cw, ch) * float(rng.uniform(*cell_fill)))
        sh, sw = small.shape[:2]
        x0 = int(gx * cw + rng.uniform(0, max(0.0, cw - sw)))
        y0 = int(gy * ch + rng.uniform(0, max(0.0, ch - sh)))
        sw, sh = min(sw, width - x0), min(sh, height - y0)
        img[y0:y0 + sh, x0:x0 + sw] = small[:sh, :sw]
        covered[y0:y0 + sh, x0:x0 + sw] = True
        b = (b + np.array([x0, y0, x0, y0], np.float32)).clip(
            0, [x0 + sw, y0 + sh, x0 + sw, y0 + sh])
        keep = _big_enough(b)
        out_cls.append(cls[keep])
        out_boxes.append(b[keep])
    keep = _visible_share(boxes, covered) >= COVERED if len(boxes) else np.zeros(0, bool)
    classes = np.concatenate([classes[keep]] + out_cls).astype(np.int64)
    boxes = np.concatenate([boxes[keep].reshape(-1, 4)] + out_boxes).astype(np.float32)
    return img, classes, boxes


def zoom_out(rng: np.random.Generator, background: Photo, photos: list[Photo],
             img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A training sample: ``background`` fills the square canvas, some of ``photos`` are
    pasted shrunk into the cells of a random 2x2 .. 6x6 grid; labels (n, 5)."""
    canvas = fill_canvas(rng, background, img_size, img_size)
    grid = int(rng.integers(2, 7))
    count = max(1, min(len(photos), int(round(grid * grid * rng.uniform(0.3, 0.7)))))
    img, classes, boxes = paste_photos(rng, canvas, photos[:count], grid)
    img = hsv_jitter(rng, img)
    return img, np.concatenate((classes[:, None].astype(np.float32), boxes), 1)


def crops_on_scene(rng: np.random.Generator, background: Photo,
                   crops: list[tuple[np.ndarray, int]], img_size: int,
                   long_px: tuple[float, float] = (6.0, 40.0)) -> tuple[np.ndarray, np.ndarray]:
    """A training sample: ``background`` fills the square canvas and 2-6 real light crops
    are pasted at ``long_px`` long side (log-uniform) where no labelled light is; (n, 5)."""
    img, classes, boxes = fill_canvas(rng, background, img_size, img_size)
    img = img.copy()
    cls_out, box_out = list(classes), [b for b in boxes.reshape(-1, 4)]
    wanted = int(rng.integers(2, 7))
    for _ in range(wanted * 4):
        if len(cls_out) - len(classes) >= wanted:
            break
        crop, cls = crops[int(rng.integers(len(crops)))]
        chh, cww = crop.shape[:2]
        s = float(np.exp(rng.uniform(np.log(long_px[0]), np.log(long_px[1])))) / max(chh, cww)
        nw, nh = max(2, round(cww * s)), max(2, round(chh * s))
        x = int(rng.integers(1, img_size - nw - 1))
        y = int(rng.integers(1, int(img_size * 0.75)))
        y = min(y, img_size - nh - 1)
        box = np.array([x, y, x + nw, y + nh], np.float32)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
               for b in box_out):
            continue
        patch = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
        patch *= rng.uniform(0.7, 1.15)
        img[y:y + nh, x:x + nw] = np.clip(patch, 0, 255).astype(np.uint8)
        cls_out.append(cls)
        box_out.append(box)
    img = hsv_jitter(rng, img)
    b = np.array(box_out, np.float32).reshape(-1, 4)
    labels = np.concatenate((np.array(cls_out, np.float32)[:, None], b), 1)
    return img, labels
