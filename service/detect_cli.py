"""Command line detection with a model of the service, as its config sets it up:
``python -m service.detect_cli [--config PATH] [--model NAME] [flags] IMAGE...``.

The config is read and validated by the service's one reader (``settings.load_config``:
``--config``, else ``$YOLO_CONFIG``, else ``config/config.yaml``); the model is
``--model`` (default: the config's default model), with its ``img_size``, thresholds,
``agnostic_nms``, ``max_det`` and ``precision``, ``server.max_pixels``,
``workers.device``, ``workers.backend`` and ``workers.onnx_cache_dir``. The rest is
``python -m model.detect``'s (its flags override the config's values; its output and
exit statuses), which this module only hands those settings: ``model/`` reads no
service config (it stands alone).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from model import detect
from settings import Config, ConfigError, load_config


def model_settings(config: Config, name: str | None = None) -> detect.DetectSettings:
    """The settings ``model.detect`` runs the model ``name`` (None: the default) with;
    KeyError when the config serves no such model."""
    model = config.model(name)
    return detect.DetectSettings(
        name=model.name, cfg=model.cfg, weights=model.weights, names=model.names,
        img_size=model.img_size, conf_thres=model.conf_thres, iou_thres=model.iou_thres,
        agnostic_nms=model.agnostic_nms, max_det=model.max_det,
        max_pixels=config.server.max_pixels, device=config.workers.device,
        backend=config.workers.backend, onnx_cache_dir=config.workers.onnx_cache_dir,
        precision=model.precision, tiles=model.tiles)


def main(argv: Sequence[str] | None = None) -> int:
    parser = detect.build_parser(
        prog="python -m service.detect_cli",
        description="Detect objects in images with a model of the service, with the "
                    "service's settings (its config file); prints one JSON line per image.",
        defaults_from="the config's, else ", model_files=False)
    parser.add_argument("--config", type=Path,
                        help="the service's config file (default: $YOLO_CONFIG, else "
                             "config/config.yaml of the project)")
    parser.add_argument("--model", help="a model of the config (default: its default model)")
    args = detect.parse_args(argv, parser, model_files=False)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return detect.report_error(str(exc))
    try:
        base = model_settings(config, args.model)
    except KeyError:
        served = ", ".join(model.name for model in config.models)
        return detect.report_error(f"--model {args.model}: the config serves {served}")
    return detect.execute(args, base)


if __name__ == "__main__":
    sys.exit(main())
