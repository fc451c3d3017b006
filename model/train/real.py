"""Real training data: the CINTA photos (YOLO labels) and the real light crops.

CINTA (``../shared/datasets/cinta-train``): ``images/<source>_jpg.rf.<hash>.jpg`` with
``labels/<same stem>.txt`` (``class cx cy w h`` relative; 0 green, 1 red, 2 yellow). Every
source photo appears in up to three augmented versions, so the train / validation split
is made by source name (a hash, the same on every machine), never by file.

Every photo was stretched to 416 x 416; :func:`real_sample` undoes that with a random
aspect change (most originals look like portrait phone photos: lights come out too wide),
then flips horizontally (no arrows in these photos), scales, places and colour-jitters.

Crops (``../shared/datasets/tl-crops``): ``dataset_*/{red,green,yellow}/*.jpg``, each the
whole light; :func:`paste_crops` pastes them into generated scenes as extra labelled lights.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from model.train.dataset import (
    MIN_BOX_PX,
    hsv_jitter,
    random_affine,
    source_shape,
    to_gray,
)
from model.train.scenes import generate
from model.train.small import crops_on_scene, zoom_out

# CINTA class -> our class (go, stop, stopLeft, goLeft, warning, warningLeft).
CINTA_TO_OURS = (0, 1, 4)
# Colour of each of our classes: 0 green, 1 red, 2 yellow (arrows share their colour).
CLASS_COLOUR = (0, 1, 1, 0, 2, 2)
CROP_CLASSES = {"green": 0, "red": 1, "yellow": 4}
VAL_SHARE = 0.15
_AUGMENTED = re.compile(r"_(jpe?g|png)\.rf\.[0-9a-fA-F]+$")


def source_of(path: str | Path) -> str:
    """The source photo of a (possibly augmented) file: ``a_jpg.rf.123.jpg`` -> ``a``."""
    return _AUGMENTED.sub("", Path(path).stem)


def is_validation(source: str, share: float = VAL_SHARE) -> bool:
    """Whether ``source`` belongs to the held-out split (a hash of its name, ~``share``)."""
    digest = hashlib.md5(source.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") / 2 ** 32 < share


@dataclass(frozen=True)
class RealImage:
    """One labelled photo: path and labels (classes ours, boxes x1y1x2y2 relative 0..1)."""

    path: Path
    classes: np.ndarray  # (n,) int64
    boxes: np.ndarray  # (n, 4) float32, relative

    @property
    def source(self) -> str:
        return source_of(self.path)

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """BGR image, classes, boxes in pixels."""
        img = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"{self.path}: not a readable image")
        h, w = img.shape[:2]
        return img, self.classes.copy(), self.boxes * np.array([w, h, w, h], np.float32)


def read_yolo_labels(path: Path, class_map: tuple[int, ...] = CINTA_TO_OURS
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Classes (mapped) and relative x1y1x2y2 boxes of a YOLO txt file (missing: none)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                rows.append([float(v) for v in parts])
    a = np.array(rows, np.float64).reshape(-1, 5)
    classes = np.array([class_map[int(c)] for c in a[:, 0]], np.int64)
    cx, cy, w, h = a[:, 1], a[:, 2], a[:, 3], a[:, 4]
    boxes = np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), 1).clip(0, 1)
    return classes, boxes.astype(np.float32)


def list_real(root: str | Path, split: str = "train", share: float = VAL_SHARE
              ) -> list[RealImage]:
    """The photos of ``split`` ("train", "val" or "all") under ``root``, sorted by name."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be train, val or all, not {split!r}")
    root = Path(root)
    out = []
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        val = is_validation(source_of(path), share)
        if split == "all" or val == (split == "val"):
            classes, boxes = read_yolo_labels(root / "labels" / f"{path.stem}.txt")
            out.append(RealImage(path, classes, boxes))
    return out


def aspect_jitter(rng: np.random.Generator, img: np.ndarray, boxes: np.ndarray,
                  low: float = 0.55, high: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    """Stretch width against height by a log-uniform factor in [low, high] (one side shrinks)."""
    f = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    h, w = img.shape[:2]
    nw, nh = (max(1, round(w * f)), h) if f < 1 else (w, max(1, round(h / f)))
    out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)


MIN_VISIBLE = 0.35  # a light cut by the canvas stays labelled while this share is visible


def real_sample(rng: np.random.Generator, img: np.ndarray, classes: np.ndarray,
                boxes: np.ndarray, img_size: int, magnify: tuple[float, float] = (0.45, 1.6),
                gray: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """An augmented ``img_size`` square sample of one photo; labels (n, 5) class x1y1x2y2.

    ``magnify`` is the range of the photo's scale (log-uniform) relative to its pixels,
    whatever ``img_size`` is, so that lights keep their real sizes at any input size.
    Close-ups are often larger than the canvas: a light cut by its edge keeps its (clipped)
    label while ``MIN_VISIBLE`` of it shows, so that a visible light is rarely taught as
    background.
    """
    img, boxes = aspect_jitter(rng, img, boxes)
    if rng.random() < 0.5:
        img = img[:, ::-1]
        w = img.shape[1]
        boxes = np.stack((w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]), 1)
    long_side = max(img.shape[:2])
    m = float(np.exp(rng.uniform(np.log(magnify[0]), np.log(magnify[1]))))
    u = m * long_side / img_size
    boxes = boxes.reshape(-1, 4)
    out, b, _ = random_affine(rng, np.ascontiguousarray(img), boxes, img_size, (u, u))
    s = img_size / long_side * u
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * s * s
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    keep = (bw * bh >= MIN_VISIBLE * area) & (bw >= MIN_BOX_PX) & (bh >= MIN_BOX_PX)
    out = hsv_jitter(rng, out)
    if gray > 0 and rng.random() < gray:
        out = to_gray(out)
    labels = np.concatenate((classes[:, None].astype(np.float32), b.astype(np.float32)), 1)
    return out, labels[keep]


# -- real crops pasted into generated scenes ------------------------------------------------

def load_crops(root: str | Path) -> list[tuple[np.ndarray, int]]:
    """Every crop under ``root`` (``*/{red,green,yellow}/*``) with its class, sorted by path."""
    out = []
    for path in sorted(Path(root).glob("*/*/*")):
        cls = CROP_CLASSES.get(path.parent.name)
        if cls is None or path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is not None and min(img.shape[:2]) >= 4:
            out.append((img, cls))
    return out


def paste_crops(rng: np.random.Generator, img: np.ndarray, classes: np.ndarray,
                boxes: np.ndarray, crops: list[tuple[np.ndarray, int]], count: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste up to ``count`` random crops where they do not overlap a labelled light."""
    img = img.copy()
    h, w = img.shape[:2]
    cls_out, box_out = list(classes), [b for b in boxes.reshape(-1, 4)]
    for _ in range(count * 4):
        if len(cls_out) - len(classes) >= count:
            break
        crop, cls = crops[int(rng.integers(len(crops)))]
        ch, cw = crop.shape[:2]
        long_px = float(np.exp(rng.uniform(np.log(10), np.log(max(12.0, min(h, w) / 2.5)))))
        s = long_px / max(ch, cw)
        nw, nh = max(3, round(cw * s)), max(3, round(ch * s))
        if nw >= w - 2 or nh >= h - 2:
            continue
        x = int(rng.integers(1, w - nw - 1))
        y = int(rng.integers(1, h - nh - 1))
        box = np.array([x, y, x + nw, y + nh], np.float32)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
               for b in box_out):
            continue
        patch = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA if s < 1
                           else cv2.INTER_LINEAR).astype(np.float32)
        patch *= rng.uniform(0.7, 1.15)
        alpha = np.ones((nh, nw, 1), np.float32)
        if min(nw, nh) >= 6:  # soften the border
            alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1] = 0.5, 0.5, 0.5, 0.5
        region = img[y:y + nh, x:x + nw].astype(np.float32)
        img[y:y + nh, x:x + nw] = np.clip(alpha * patch + (1 - alpha) * region, 0,
                                          255).astype(np.uint8)
        cls_out.append(cls)
        box_out.append(box)
    return (img, np.array(cls_out, np.int64),
            np.array(box_out, np.float32).reshape(-1, 4))


def generated_sample(seed: int, epoch: int, index: int, img_size: int, scene_size: int,
                     crops: list[tuple[np.ndarray, int]] | None, crop_share: float = 0.5,
                     gray: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A generated scene (long side ``scene_size``), with real crops pasted into a share
    ``crop_share`` of them, augmented into an ``img_size`` square; labels (n, 5)."""
    rng = np.random.default_rng([seed, epoch, index, 17])
    h, w = source_shape(rng, scene_size)
    scene = generate(rng, h, w)
    image, classes, boxes = scene.image, scene.classes, scene.boxes
    if crops and rng.random() < crop_share:
        image, classes, boxes = paste_crops(rng, image, classes, boxes, crops,
                                            int(rng.integers(1, 4)))
    out, b, keep = random_affine(rng, image, boxes, img_size)
    out = hsv_jitter(rng, out)
    if gray > 0 and rng.random() < gray:
        out = to_gray(out)
    labels = np.concatenate((classes[:, None].astype(np.float32), b.astype(np.float32)), 1)
    return out, labels[keep]


class MixedDataset(Dataset):
    """Per epoch: ``real_count`` augmented real photos, ``small_count`` small-light samples
    (:mod:`model.train.small`: real photos zoomed out into a real photo, or, a share
    ``small_crops`` of them, real crops pasted small on one) and ``generated_count``
    generated scenes, interleaved in an order fixed by (seed, epoch); sample ``i`` of epoch
    ``e`` is a pure function of (seed, e, i), so a run resumed at an epoch boundary sees the
    same data.
    """

    def __init__(self, seed: int, real: list[RealImage], real_count: int, generated_count: int,
                 img_size: int, scene_size: int | None = None,
                 crops: list[tuple[np.ndarray, int]] | None = None, crop_share: float = 0.5,
                 magnify: tuple[float, float] = (0.45, 1.6), gray: float = 0.0,
                 small_count: int = 0, small_crops: float = 0.25) -> None:
        if (real_count or small_count) and not real:
            raise ValueError("real_count or small_count > 0 but no real photos")
        self.seed = seed
        self.real = real
        self.real_count = real_count
        self.generated_count = generated_count
        self.img_size = img_size
        self.scene_size = scene_size or img_size
        self.crops = crops
        self.crop_share = crop_share
        self.magnify = magnify
        self.gray = gray
        self.small_count = small_count
        self.small_crops = small_crops if crops else 0.0
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select the samples (and their order) of ``epoch``."""
        self.epoch = epoch
        rng = np.random.default_rng([self.seed, epoch, 99])
        self.order = rng.permutation(len(self))
        n = max(1, len(self.real))
        reps = -(-self.real_count // n)
        self.photos = np.concatenate([rng.permutation(n) for _ in range(max(1, reps))])

    def __len__(self) -> int:
        return self.real_count + self.small_count + self.generated_count

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """BGR image and labels (n, 5) of sample ``index`` of the current epoch."""
        k = int(self.order[index])
        if k < self.real_count:
            photo = self.real[int(self.photos[k])]
            rng = np.random.default_rng([self.seed, self.epoch, k, 23])
            img, classes, boxes = photo.load()
            return real_sample(rng, img, classes, boxes, self.img_size, self.magnify, self.gray)
        if k < self.real_count + self.small_count:
            return self._small_sample(k)
        return generated_sample(self.seed, self.epoch, k, self.img_size, self.scene_size,
                                self.crops, self.crop_share, self.gray)

    def _small_sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, k, 31])
        background = self.real[int(rng.integers(len(self.real)))].load()
        if self.crops and rng.random() < self.small_crops:
            return crops_on_scene(rng, background, self.crops, self.img_size)
        picks = rng.integers(len(self.real), size=int(rng.integers(2, 26)))
        return zoom_out(rng, background, [self.real[int(i)].load() for i in picks],
                        self.img_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, labels = self.sample(index)
        tensor = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))
        return tensor, torch.from_numpy(labels)
