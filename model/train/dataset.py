"""Training samples: generated scenes with augmentation, as tensors for the network.

Sample ``i`` of epoch ``e`` is a pure function of (seed, e, i): every epoch sees new
scenes, and a run restarted at an epoch boundary sees exactly the same data.

Augmentation: a random scale / translation into the square input (which also letterboxes
non-square scenes), an HSV jitter and, optionally, a share of grayscale images (so the
lamp's position in its housing, not only its colour, tells the class). No flips: a
flipped left arrow is a right arrow.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from model.train.scenes import generate

PAD_VALUE = 114
MIN_BOX_PX = 4.0  # boxes smaller than this after augmentation are dropped


def source_shape(rng: np.random.Generator, img_size: int) -> tuple[int, int]:
    """(h, w) of a generated scene: square half the time, else aspect 1:2 .. 1:1."""
    if rng.random() < 0.5:
        return img_size, img_size
    short = int(round(img_size * rng.uniform(0.5, 1.0)))
    return (short, img_size) if rng.random() < 0.6 else (img_size, short)


def random_affine(rng: np.random.Generator, img: np.ndarray, boxes: np.ndarray, size: int,
                  scale: tuple[float, float] = (0.75, 1.4)
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale and place ``img`` on a ``size`` x ``size`` canvas; boxes follow.

    Returns (image, boxes, keep): boxes clipped to the canvas; ``keep`` marks the boxes
    still at least 60% visible and ``MIN_BOX_PX`` on each side.
    """
    h, w = img.shape[:2]
    s = size / max(h, w) * rng.uniform(*scale)
    nw, nh = w * s, h * s
    tx = rng.uniform(min(0.0, size - nw), max(0.0, size - nw))
    ty = rng.uniform(min(0.0, size - nh), max(0.0, size - nh))
    m = np.array([[s, 0, tx], [0, s, ty]], dtype=np.float64)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    out = cv2.warpAffine(img, m, (size, size), flags=interp, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(PAD_VALUE,) * 3)
    b = boxes * s + np.array([tx, ty, tx, ty])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    c = np.clip(b, 0, size)
    cw, ch = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    keep = (cw * ch >= 0.6 * area) & (cw >= MIN_BOX_PX) & (ch >= MIN_BOX_PX)
    return out, c, keep


def hsv_jitter(rng: np.random.Generator, img: np.ndarray, hue: float = 4.0, sat: float = 0.3,
               val: float = 0.35) -> np.ndarray:
    """Random hue shift (degrees/2, OpenCV units) and saturation / value gains of a BGR image."""
    dh = rng.uniform(-hue, hue)
    gs, gv = rng.uniform(1 - sat, 1 + sat), rng.uniform(1 - val, 1 + val)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    x = np.arange(256, dtype=np.float64)
    lut_h = ((x + dh) % 180).astype(np.uint8)
    lut_s = np.clip(x * gs, 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gv, 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hsv[..., 0], lut_h), cv2.LUT(hsv[..., 1], lut_s),
                     cv2.LUT(hsv[..., 2], lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def to_gray(img: np.ndarray) -> np.ndarray:
    """A BGR image with its colour removed (still 3 channels)."""
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def make_sample(seed: int, epoch: int, index: int, img_size: int, augment: bool = True,
                scene_size: int | None = None, gray: float = 0.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """A BGR ``img_size`` square image and its labels (n, 5): class, x1, y1, x2, y2.

    The scene is drawn with long side ``scene_size`` (default ``img_size``) and then
    scaled to the input, so a model can look at scenes magnified. With ``augment``, a
    share ``gray`` of the samples is made grayscale (no random draw when it is 0, so
    runs without it keep their data).
    """
    rng = np.random.default_rng([seed, epoch, index])
    h, w = source_shape(rng, scene_size or img_size)
    scene = generate(rng, h, w)
    if augment:
        img, boxes, keep = random_affine(rng, scene.image, scene.boxes, img_size)
        img = hsv_jitter(rng, img)
        if gray > 0 and rng.random() < gray:
            img = to_gray(img)
    else:
        img, boxes, keep = random_affine(rng, scene.image, scene.boxes, img_size, (1.0, 1.0))
    labels = np.concatenate((scene.classes[:, None].astype(np.float32),
                             boxes.astype(np.float32)), 1)[keep]
    return img, labels


class SceneDataset(Dataset):
    """``length`` generated samples per epoch; call ``set_epoch`` before each epoch."""

    def __init__(self, seed: int, length: int, img_size: int, augment: bool = True,
                 scene_size: int | None = None, gray: float = 0.0) -> None:
        self.seed = seed
        self.gray = gray
        self.scene_size = scene_size
        self.length = length
        self.img_size = img_size
        self.augment = augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the scenes of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, labels = make_sample(self.seed, self.epoch, index, self.img_size, self.augment,
                                  self.scene_size, self.gray)
        tensor = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))
        return tensor, torch.from_numpy(labels)


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack uint8 images into float RGB 0..1 and labels into (M, 6): image, class, cx, cy, w, h."""
    images = torch.stack([b[0] for b in batch]).float().div_(255.0)
    rows = []
    for i, (_, labels) in enumerate(batch):
        xyxy = labels[:, 1:5]
        cxcywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
        rows.append(torch.cat((torch.full((len(labels), 1), float(i)), labels[:, :1], cxcywh), 1))
    return images, torch.cat(rows) if rows else torch.zeros((0, 6))
