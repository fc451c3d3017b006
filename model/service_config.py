"""The service's default model and its settings, read from the service's YAML config
without importing the service (``model/`` stands alone), for ``python -m model.detect``.

The file is ``--config`` (as ``main.py`` takes it), else ``$YOLO_CONFIG``, else
``config/config.yaml`` in the project root (the parent of ``model/``).  The default
model is, when a top-level ``models:`` mapping exists, its entry with ``default: true``,
else its first entry (keys ``cfg``, ``weights``, ``names``, ``img_size``,
``conf_thres``, ``iou_thres``, ``agnostic_nms``, ``max_det``, ``precision``; missing ones
come from ``workers:``; and ``tiles``: off, auto or {size, overlap}, see
:mod:`model.tiles`, default off); otherwise ``workers.model_path.{cfg, weights, data}`` with
``workers.img_size``, ``conf_thres``, ``iou_thres``, ``agnostic_nms`` and ``max_det``.
The defaults are the service's (512, 0.3, 0.6, false, 300); relative paths are relative
to the project root.  ``server.max_pixels`` bounds the decode, ``workers.device``,
``workers.backend`` and ``workers.onnx_cache_dir`` say how to run the network.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from model.errors import ModelError
from model.tiles import OFF, TileSetting, parse_tiles

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ENV = "YOLO_CONFIG"
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "config.yaml"
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class ServiceModel:
    """A model to run and how: files, input size, NMS settings, decode limit, device."""

    name: str
    cfg: Path
    weights: Path
    names: Path
    img_size: int = 512
    conf_thres: float = 0.3
    iou_thres: float = 0.6
    agnostic_nms: bool = False
    max_det: int = 300
    max_pixels: int | None = None
    device: str = "auto"
    backend: str = "torch"
    onnx_cache_dir: Path | None = None
    precision: str = "fp32"  # fp32 | int8 (model.quantize)
    tiles: TileSetting = OFF  # model.tiles

    def replace(self, **changes: Any) -> ServiceModel:
        return dataclasses.replace(self, **changes)


def config_path(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Path:
    """The argument, else ``$YOLO_CONFIG``, else the project's ``config/config.yaml``
    (a relative path is relative to the working directory, as for ``main.py``)."""
    env = os.environ if env is None else env
    chosen = Path(path if path is not None else env.get(CONFIG_ENV) or DEFAULT_CONFIG)
    chosen = chosen.expanduser()
    return chosen if chosen.is_absolute() else Path.cwd() / chosen


class _Reader:
    """Typed look-ups in one YAML mapping, errors naming the dotted key."""

    def __init__(self, source: Path, data: Any, prefix: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ModelError(f"{source}: {prefix or 'the file'} must be a mapping")
        self.source, self.data, self.prefix = source, data, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def section(self, name: str) -> _Reader:
        return _Reader(self.source, self.data.get(name), self.key(name))

    def value(self, name: str, kind: type, default: Any) -> Any:
        value = self.data.get(name)
        if value is None:
            return default
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ModelError(f"{self.source}: {self.key(name)} must be a {kind.__name__}, "
                             f"got {value!r}")
        return value

    def path(self, name: str) -> Path:
        value = self.value(name, str, None)
        if not value:
            raise ModelError(f"{self.source}: {self.key(name)} is required")
        path = Path(value).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path


def read_service_model(path: str | os.PathLike[str] | None = None,
                       env: Mapping[str, str] | None = None) -> ServiceModel:
    """The service's default model and settings (see the module docstring)."""
    source = config_path(path, env)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read config file {source}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ModelError(f"{source}: not valid YAML: {exc}") from exc
    root = _Reader(source, data, "")
    workers, server = root.section("workers"), root.section("server")
    defaults = {
        "img_size": workers.value("img_size", int, 512),
        "conf_thres": workers.value("conf_thres", float, 0.3),
        "iou_thres": workers.value("iou_thres", float, 0.6),
        "agnostic_nms": workers.value("agnostic_nms", bool, False),
        "max_det": workers.value("max_det", int, 300),
        "precision": workers.value("precision", str, "fp32"),
    }
    kinds = {"img_size": int, "conf_thres": float, "iou_thres": float, "agnostic_nms": bool,
             "max_det": int, "precision": str}
    models = root.data.get("models")
    if models is not None:
        listing = root.section("models")
        if not listing.data:
            raise ModelError(f"{source}: models must name at least one model")
        entries = {str(name): listing.section(str(name)) for name in listing.data}
        chosen = next((name for name, entry in entries.items()
                       if entry.value("default", bool, False)), next(iter(entries)))
        entry = entries[chosen]
        files = (entry.path("cfg"), entry.path("weights"), entry.path("names"))
        settings = {key: entry.value(key, kind, defaults[key]) for key, kind in kinds.items()}
        try:
            settings["tiles"] = parse_tiles(entry.data.get("tiles"))
        except ValueError as exc:
            raise ModelError(f"{source}: {entry.key('tiles')}: {exc}") from exc
        name = chosen
    else:
        paths = workers.section("model_path")
        files = (paths.path("cfg"), paths.path("weights"), paths.path("data"))
        settings = defaults
        name = files[0].stem
    cache = workers.value("onnx_cache_dir", str, "var/onnx")
    cache_dir = Path(cache).expanduser()
    return ServiceModel(
        name=name, cfg=files[0], weights=files[1], names=files[2], **settings,
        max_pixels=server.value("max_pixels", int, DEFAULT_MAX_PIXELS),
        device=str(workers.value("device", str, "auto")),
        backend=str(workers.value("backend", str, "auto")),
        onnx_cache_dir=cache_dir if cache_dir.is_absolute() else PROJECT_ROOT / cache_dir)
