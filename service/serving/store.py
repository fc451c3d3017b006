"""Models added or replaced over HTTP (``PUT /api/models/{name}``), kept across restarts.

Under ``storage.models_dir``: ``<name>/<upload id>/`` holds one upload's files (``model.cfg``,
``model.weights`` or ``model.pt``: the weights keep their format's suffix, ``model.names``) and ``<name>/model.json`` says which upload serves and
with which settings. The manifest is written when a version starts serving (never for one
that failed to load), atomically; at start-up every manifest is read with the config's
own checks (``settings.parse_model``), and uploads no manifest names are removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from service.serving.server import model_settings
from settings import ConfigError, ModelConfig, WorkersConfig, parse_model

log = logging.getLogger(__name__)

MANIFEST = "model.json"
INCOMING = ".incoming"
FILES = {"cfg": "model.cfg", "weights": "model.weights", "names": "model.names"}
ROLES = tuple(FILES)


def file_name(role: str, suffix: str = "") -> str:
    """The name a role's file is kept under (the weights: with their own suffix)."""
    return f"model{suffix}" if role == "weights" and suffix else FILES[role]


def files_in(folder: Path) -> dict[str, Path]:
    """The files of an upload, by role."""
    found = {role: folder / file for role, file in FILES.items()}
    weights = [p for p in folder.glob("model.*") if p.name not in (FILES["cfg"], FILES["names"])]
    if weights:
        found["weights"] = weights[0]
    return found


class ModelStore:
    """The models kept under one directory."""

    def __init__(self, root: Path, workers: WorkersConfig) -> None:
        self.root = root
        self.workers = workers

    def incoming(self) -> Path:
        """A fresh directory for an upload being received (removed by :meth:`discard`
        or moved by :meth:`keep`)."""
        folder = self.root / INCOMING
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=folder))

    def discard(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def keep(self, name: str, folder: Path) -> dict[str, Path]:
        """Move a received upload under ``name``; the paths of its files, by role."""
        target = self.root / name / uuid.uuid4().hex
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, target)
        return files_in(target)

    def holds(self, model: ModelConfig) -> bool:
        """``model``'s files are kept here (it was uploaded)."""
        return model.cfg.is_relative_to(self.root)

    def commit(self, model: ModelConfig) -> None:
        """Record that ``model`` (its files here) serves, with its settings; the upload
        it replaces is removed."""
        folder = self.root / model.name
        previous = self._manifest(model.name)
        manifest = {"upload": model.cfg.parent.name, "settings": model_settings(model)}
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".model.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, folder / MANIFEST)
        if previous is not None and previous.get("upload") != manifest["upload"]:
            shutil.rmtree(folder / str(previous.get("upload")), ignore_errors=True)

    def forget(self, name: str) -> None:
        """Remove every file kept for ``name``."""
        shutil.rmtree(self.root / name, ignore_errors=True)

    def sweep(self) -> None:
        """Remove what no manifest names: uploads cut off, versions that never served
        (at start-up only: a load may be warming later)."""
        if not self.root.is_dir():
            return
        shutil.rmtree(self.root / INCOMING, ignore_errors=True)
        for folder in (p for p in self.root.iterdir() if p.is_dir() and p.name != INCOMING):
            manifest = self._manifest(folder.name)
            if manifest is None:
                self.forget(folder.name)
                continue
            for other in folder.iterdir():
                if other.is_dir() and other.name != str(manifest.get("upload")):
                    shutil.rmtree(other, ignore_errors=True)

    def models(self) -> dict[str, ModelConfig]:
        """Every kept model (a manifest that no longer passes the checks is logged and
        skipped)."""
        found: dict[str, ModelConfig] = {}
        if not self.root.is_dir():
            return found
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            manifest = self._manifest(folder.name)
            if manifest is None:
                continue
            upload = folder / str(manifest.get("upload"))
            raw = {**manifest.get("settings", {}),
                   **{role: str(path) for role, path in files_in(upload).items()}}
            try:
                model, _ = parse_model(folder.name, raw, self.workers,
                                       key=f"{folder / MANIFEST}")
            except ConfigError as exc:
                log.error("kept model %s is not served: %s", folder.name, exc)
                continue
            found[model.name] = model
        return found

    def _manifest(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / name / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable (%s)", self.root / name / MANIFEST, exc)
            return None
        return data if isinstance(data, dict) else None
