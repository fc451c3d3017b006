"""What one version of a model is: the content hash of its files and its class names,
read once per version (never per request)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from settings import ModelConfig

VERSION_DIGITS = 16  # hex digits of the SHA-256 kept: 64 bits, plenty to tell versions apart
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelVersion:
    """``version``: SHA-256 (first :data:`VERSION_DIGITS` hex digits) of the cfg, the
    weights and the names, each with its length, in that order; ``classes``: the names."""

    version: str
    classes: tuple[str, ...]


def read_version(model: ModelConfig) -> ModelVersion:
    """Hash ``model``'s files and read its class names (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    for path in (model.cfg, model.weights, model.names):
        digest.update(str(path.stat().st_size).encode("ascii") + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return ModelVersion(digest.hexdigest()[:VERSION_DIGITS], read_class_names(model.names))


def read_class_names(path: Path) -> tuple[str, ...]:
    """One class per non-blank line."""
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip())
