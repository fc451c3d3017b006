"""What the benchmark scripts share: the model they run, the images they send, and
percentiles. ``bench.load`` and ``bench.reliability`` import it; it imports neither."""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench._service import PROJECT_ROOT

log = logging.getLogger("bench")

SHARED_IMAGES = PROJECT_ROOT.parent / "shared" / "images"
FALLBACK_CFG = PROJECT_ROOT / "tests" / "data" / "service-6cls.cfg"
FALLBACK_NAMES = PROJECT_ROOT / "tests" / "data" / "service-6cls.names"
PHOTOS_DIR = PROJECT_ROOT / "tests" / "data" / "photos"  # used when ../shared is absent


# ---------------------------------------------------------------- inputs

@dataclass(frozen=True)
class JpegImage:
    name: str
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ModelChoice:
    cfg: Path
    weights: Path | None  # None: random weights, written before use
    names: Path
    img_size: int
    note: str = ""


def _project_path(value: str | os.PathLike[str]) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def default_model_paths(base: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The base config's default model as ``{"cfg", "weights", "data"}`` and its input
    size: the ``models:`` entry with ``default: true`` (else the first), or
    ``workers.model_path``."""
    workers = base.get("workers") if isinstance(base.get("workers"), dict) else {}
    models = base.get("models")
    if isinstance(models, dict) and models:
        entries = [m for m in models.values() if isinstance(m, dict)]
        entry = next((m for m in entries if m.get("default")), entries[0] if entries else {})
        paths = {"cfg": entry.get("cfg"), "weights": entry.get("weights"),
                 "data": entry.get("names")}
        return {k: v for k, v in paths.items() if v}, entry.get("img_size") \
            or workers.get("img_size")
    return workers.get("model_path") or {}, workers.get("img_size")


def resolve_model(args: argparse.Namespace, base: dict[str, Any]) -> ModelChoice:
    """The model to run, from the flags, else the base config's default model."""
    paths, size = default_model_paths(base)
    img_size = args.img_size or int(size or 512)
    default_names = _project_path(paths["data"]) if paths.get("data") else None
    if args.cfg is not None:
        names = args.names or default_names
        if names is None:
            raise SystemExit("--names is required: the config names no class names file")
        return ModelChoice(args.cfg.resolve(), args.weights and args.weights.resolve(),
                           names.resolve(), img_size)
    cfg = _project_path(paths.get("cfg", ""))
    weights = args.weights or (_project_path(paths["weights"]) if paths.get("weights") else None)
    if not cfg.is_file():
        return ModelChoice(FALLBACK_CFG, None, FALLBACK_NAMES, img_size,
                           f"the default cfg {cfg} does not exist: using {FALLBACK_CFG.name} "
                           "with random weights instead")
    names = (args.names or default_names)
    if names is None:
        raise SystemExit("--names is required: the config names no class names file")
    if weights is None or not weights.is_file():
        return ModelChoice(cfg, None, names, img_size,
                           f"the default weights {weights} do not exist: the default cfg runs "
                           "with random weights (same speed)")
    return ModelChoice(cfg, weights, names, img_size)


def materialize_weights(model: ModelChoice, workdir: Path) -> ModelChoice:
    """Write random Darknet weights for a model that has none."""
    if model.weights is not None:
        return model
    import torch

    from model.darknet import Darknet
    from model.weights import save_weights

    torch.manual_seed(0)
    path = workdir / f"{model.cfg.stem}-random.weights"
    save_weights(Darknet(model.cfg, model.img_size), path)
    log.info("random weights for %s written to %s", model.cfg.name, path)
    return ModelChoice(model.cfg, path, model.names, model.img_size, model.note)


def _encode(name: str, image: np.ndarray) -> JpegImage:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"cannot encode {name}")
    return JpegImage(name, buffer.tobytes(), image.shape[1], image.shape[0])


def generated_images() -> list[JpegImage]:
    """Two deterministic JPEGs: a street-like scene with lights, and a textured frame."""
    rng = np.random.default_rng(0)
    scene = np.zeros((720, 1280, 3), np.uint8)
    scene[:] = np.linspace(40, 200, 720, dtype=np.uint8)[:, None, None]  # sky to road
    cv2.fillPoly(scene, [np.array([[0, 720], [560, 380], [720, 380], [1280, 720]])], (70, 70, 70))
    for _ in range(6):
        x, y = int(rng.integers(40, 1200)), int(rng.integers(40, 380))
        cv2.rectangle(scene, (x, y), (x + 24, y + 64), (20, 20, 20), -1)
        color = [(0, 0, 255), (0, 200, 255), (0, 255, 0)][int(rng.integers(0, 3))]
        cv2.circle(scene, (x + 12, y + 12 + 20 * int(rng.integers(0, 3))), 8, color, -1)
    scene = cv2.add(scene, rng.integers(0, 25, scene.shape, dtype=np.uint8))
    texture = cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (640, 480),
                         interpolation=cv2.INTER_CUBIC)
    return [_encode("generated-street-1280x720.jpg", scene),
            _encode("generated-texture-640x480.jpg", texture)]


def load_images(paths: Sequence[Path] | None) -> list[JpegImage]:
    """The given JPEGs, else the shared photos (the test photos without ../shared) plus
    two generated ones."""
    images = []
    default = [SHARED_IMAGES / "bus.jpg", SHARED_IMAGES / "zidane.jpg"]
    if not SHARED_IMAGES.is_dir():
        default = [PHOTOS_DIR / "portrait.jpg", PHOTOS_DIR / "landscape.jpg"]
    chosen = list(paths) if paths else default
    for path in chosen:
        if not path.is_file():
            if paths:
                raise SystemExit(f"{path}: no such image")
            log.warning("%s not found: not used", path)
            continue
        data = path.read_bytes()
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise SystemExit(f"{path}: not a decodable image")
        images.append(JpegImage(path.name, data, decoded.shape[1], decoded.shape[0]))
    if not paths:
        images.extend(generated_images())
    return images


# ---------------------------------------------------------------- statistics

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
