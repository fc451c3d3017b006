"""Training data in Darknet's layout: what ``python -m service.export --format yolo``
writes (and Darknet's ``detector train`` reads)::

    obj.data              classes = N, train = train.txt, valid = valid.txt, names = obj.names
    obj.names             one class per line
    train.txt valid.txt   image paths, one per line (relative: to the folder of obj.data)
    images/x.jpg          an image; its labels in labels/x.txt (Darknet's rule: the last
    labels/x.txt          "images" folder of the path becomes "labels", the extension .txt),
                          one line per box: class cx cy w h, relative to the image

An image without a label file, or with an empty one, has nothing in it (a negative).
``python -m model.train --data DIR`` trains on the train list and scores each epoch on
the valid list (mAP@0.5 over the classes; the train list when valid is empty).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from model.darknet import Darknet
from model.train.dataset import hsv_jitter, random_affine
from model.train.evaluate import real_stats, run_real
from model.train.real import RealImage, read_yolo_labels

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """The dataset is incomplete or does not fit the network."""


@dataclass(frozen=True)
class DarknetData:
    """A parsed obj.data and the images of its lists."""

    root: Path
    names: list[str]
    train: list[RealImage]
    valid: list[RealImage]


def _settings(path: Path) -> dict[str, str]:
    """``key = value`` lines (``#`` comments), as Darknet's read_data_cfg."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def label_path(image: Path) -> Path:
    """Darknet's label file of an image: the last ``images`` folder becomes ``labels``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _images(root: Path, list_file: str, num_classes: int) -> list[RealImage]:
    path = root / list_file
    if not path.is_file():
        raise DataError(f"{path}: the image list named in obj.data is missing")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        image = root / line.strip()
        if not image.is_file():
            raise DataError(f"{path}: {line.strip()} is not a file")
        classes, boxes = read_yolo_labels(label_path(image), tuple(range(num_classes)))
        out.append(RealImage(image, classes, boxes))
    return out


def read_data(location: str | Path) -> DarknetData:
    """The dataset of an obj.data file (or of the folder that holds one)."""
    path = Path(location)
    if path.is_dir():
        path = path / "obj.data"
    if not path.is_file():
        raise DataError(f"{path}: no obj.data")
    root = path.parent
    settings = _settings(path)
    for key in ("classes", "train", "names"):
        if key not in settings:
            raise DataError(f"{path}: no '{key} =' line")
    names = [n.strip() for n in (root / settings["names"]).read_text(encoding="utf-8")
             .splitlines() if n.strip()]
    if len(names) != int(settings["classes"]):
        raise DataError(f"{path}: classes = {settings['classes']} but "
                        f"{settings['names']} has {len(names)} names")
    try:
        train = _images(root, settings["train"], len(names))
        valid = _images(root, settings["valid"], len(names)) if settings.get("valid") else []
    except IndexError:
        raise DataError(f"{path}: a label file has a class outside 0..{len(names) - 1}") \
            from None
    if not train:
        raise DataError(f"{path}: the train list is empty")
    return DarknetData(root, names, train, valid)


class DarknetDataset(Dataset):
    """Each image of the list once per epoch (in an order fixed by seed and epoch), scaled
    and placed at random into the ``img_size`` square (letterboxed), colour-jittered; no
    flips (a left arrow flipped is a right arrow). Sample ``i`` of epoch ``e`` is a pure
    function of (seed, e, i)."""

    def __init__(self, images: list[RealImage], seed: int, img_size: int) -> None:
        self.images = images
        self.seed = seed
        self.img_size = img_size
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = np.random.default_rng([self.seed, epoch, 31]).permutation(len(self.images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index, 37])
        img, classes, boxes = self.images[int(self.order[index])].load()
        out, b, keep = random_affine(rng, img, boxes.reshape(-1, 4), self.img_size)
        out = hsv_jitter(rng, out)
        labels = np.concatenate((classes[:, None].astype(np.float32), b.astype(np.float32)),
                                1)[keep]
        tensor = torch.from_numpy(np.ascontiguousarray(out[..., ::-1].transpose(2, 0, 1)))
        return tensor, torch.from_numpy(labels)


def training_data(location: str | Path, net: Darknet, seed: int, img_size: int
                  ) -> tuple[DarknetDataset, list[RealImage]]:
    """The training set and the validation images of an export for ``net`` (its class
    count must be the export's)."""
    data = read_data(location)
    if len(data.names) != net.num_classes:
        raise DataError(f"{data.root}: {len(data.names)} classes ({', '.join(data.names)}), "
                        f"but the cfg has {net.num_classes}")
    valid = data.valid
    if not valid:
        logger.warning("%s: the valid list is empty; scoring on the training images",
                       data.root)
        valid = data.train
    logger.info("%s: %d training images, %d for validation, classes %s", data.root,
                len(data.train), len(valid), ", ".join(data.names))
    return DarknetDataset(data.train, seed, img_size), valid


def score(net: Darknet, images: list[RealImage], img_size: int) -> float:
    """mAP@0.5 over the classes with labels (0 when none has any)."""
    value = real_stats(run_real(net, images, img_size), net.num_classes, 0.5).mean_ap()
    return 0.0 if math.isnan(value) else value
