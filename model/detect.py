"""Command line detection: ``python -m model.detect --cfg C --weights W --names N
IMAGE...``.

The engine alone (``model/`` reads no service config): the model is the files named on
the command line, the settings are the flags, else the defaults the service has too
(:mod:`model.defaults`). To run a model of the service with the service's settings, as
its config says, use ``python -m service.detect_cli`` (the same command, reading the
config with ``settings.load_config``, then calling :func:`execute` here with those
settings as the base). Images are decoded exactly as the service's workers do
(:func:`model.preprocess.decode_for_network`, then
:meth:`~model.inference.Detector.detect_decoded`), so an image gives the same detections
from both.

``--tiles off|auto|SIZE:OVERLAP`` (default: the model's ``tiles`` setting, else off)
runs the photo in tiles (:mod:`model.tiles`) as the service does.

Prints one JSON object per image per line (``image``, ``width``, ``height``, ``passes``,
``detections``); with ``--out DIR`` also writes annotated copies there. A bad input is
reported as one line on stderr with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from model import defaults
from model.draw import draw_detections
from model.errors import ModelError
from model.inference import Detector, select_device
from model.preprocess import decode_for_network, decode_image
from model.tiles import OFF, TileSetting, parse_tiles

logger = logging.getLogger("model.detect")

EXIT_BAD_INPUT = 1
# Suffixes cv2.imwrite can write; other names get ".png" appended.
WRITABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class InputError(Exception):
    """A file given on the command line cannot be used."""


@dataclass(frozen=True)
class DetectSettings:
    """A model to run and how: files, input size, NMS settings, decode limit, device."""

    name: str
    cfg: Path
    weights: Path
    names: Path
    img_size: int = defaults.IMG_SIZE
    conf_thres: float = defaults.CONF_THRES
    iou_thres: float = defaults.IOU_THRES
    agnostic_nms: bool = defaults.AGNOSTIC_NMS
    max_det: int = defaults.MAX_DET
    max_pixels: int | None = None
    device: str = "auto"
    backend: str = "torch"
    onnx_cache_dir: Path | None = None
    precision: str = "fp32"  # fp32 | int8 (model.quantize)
    tiles: TileSetting = OFF  # model.tiles

    def replace(self, **changes: Any) -> DetectSettings:
        return dataclasses.replace(self, **changes)


def build_parser(prog: str = "python -m model.detect",
                 description: str = "Detect objects in images with a Darknet YOLO network; "
                                    "prints one JSON line per image.",
                 defaults_from: str = "", model_files: bool = True) -> argparse.ArgumentParser:
    """The command line's parser (``service.detect_cli`` adds its own options to it).
    ``defaults_from``: where the defaults come from, for the help ("the config's, ");
    ``model_files``: with ``--cfg``, ``--weights`` and ``--names`` (False where the
    model comes from elsewhere)."""
    d = defaults_from
    parser = argparse.ArgumentParser(prog=prog, description=description)
    if model_files:
        parser.add_argument("--cfg", type=Path, help="Darknet .cfg file")
        parser.add_argument("--weights", type=Path,
                            help="Darknet .weights or PyTorch .pt checkpoint")
        parser.add_argument("--names", type=Path, help="class names, one per line")
    parser.add_argument("--img-size", type=int,
                        help=f"square network input size in pixels (default: {d}"
                             f"{defaults.IMG_SIZE})")
    parser.add_argument("--conf-thres", type=float,
                        help=f"minimum confidence (default: {d}{defaults.CONF_THRES})")
    parser.add_argument("--iou-thres", type=float,
                        help=f"NMS IoU threshold (default: {d}{defaults.IOU_THRES})")
    parser.add_argument("--max-det", type=int,
                        help=f"at most this many detections per image (default: {d}"
                             f"{defaults.MAX_DET})")
    parser.add_argument("--agnostic", action=argparse.BooleanOptionalAction, default=None,
                        help="class-agnostic NMS: boxes of different classes suppress each "
                             f"other (default: {d}off)")
    parser.add_argument("--device", help=f"auto, cpu, cuda or cuda:N (default: {d}auto)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime"),
                        help=f"what runs the network (default: {d}torch)")
    parser.add_argument("--tiles", type=_tiles_arg,
                        help="off, auto or SIZE:OVERLAP (e.g. 640:0.2): the whole photo plus "
                             f"overlapping windows, merged (default: {d}off)")
    parser.add_argument("--out", type=Path, help="write annotated copies of the images here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    return parser


def _tiles_arg(text: str) -> TileSetting:
    try:
        return parse_tiles(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: Sequence[str] | None = None,
               parser: argparse.ArgumentParser | None = None, *,
               model_files: bool = True) -> argparse.Namespace:
    """Parse and check the arguments. ``parser``: :func:`build_parser`'s by default;
    ``model_files``: as it was built with (False: the model comes from elsewhere, and
    ``args.cfg``, ``args.weights`` and ``args.names`` are None)."""
    parser = parser or build_parser(model_files=model_files)
    args = parser.parse_args(argv)
    for name in ("cfg", "weights", "names"):
        setattr(args, name, getattr(args, name, None))
    given = [name for name in ("cfg", "weights", "names") if getattr(args, name) is not None]
    if model_files and len(given) != 3:
        parser.error("--cfg, --weights and --names go together; they name the model "
                     "(a model of the service's config: python -m service.detect_cli)")
    if args.img_size is not None and args.img_size <= 0:
        parser.error(f"--img-size must be positive, got {args.img_size}")
    for name in ("conf_thres", "iou_thres"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    if args.max_det is not None and args.max_det <= 0:
        parser.error(f"--max-det must be positive, got {args.max_det}")
    return args


def resolve_model(args: argparse.Namespace,
                  base: DetectSettings | None = None) -> DetectSettings:
    """The model and settings to run: the files named on the command line, else ``base``
    (the service's model, from ``service.detect_cli``); flags override either."""
    if args.cfg is not None:
        base = DetectSettings(name=args.cfg.stem, cfg=args.cfg, weights=args.weights,
                              names=args.names)
    elif base is None:
        raise InputError("no model: --cfg, --weights and --names name one")
    overrides = {"img_size": args.img_size, "conf_thres": args.conf_thres,
                 "iou_thres": args.iou_thres, "max_det": args.max_det,
                 "agnostic_nms": args.agnostic, "device": args.device,
                 "backend": args.backend, "tiles": args.tiles}
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})


def _check_files(model: DetectSettings, args: argparse.Namespace) -> None:
    """Fail before loading the model if any named file is missing."""
    for label, path in [("cfg", model.cfg), ("weights", model.weights),
                        ("names", model.names)]:
        if not path.is_file():
            raise InputError(f"{label} file not found: {path}")
    for path in args.images:
        if not path.is_file():
            raise InputError(f"image not found: {path}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out is not a directory: {args.out}")


def _output_path(out_dir: Path, image: Path, used: set[str]) -> Path:
    """``out_dir/<name>``, made unique when two inputs share a file name."""
    stem, suffix = image.stem, image.suffix
    if suffix.lower() not in WRITABLE_SUFFIXES:
        stem, suffix = image.name, ".png"
    name, counter = stem + suffix, 1
    while name in used:
        name = f"{stem}_{counter}{suffix}"
        counter += 1
    used.add(name)
    return out_dir / name


def run(args: argparse.Namespace, base: DetectSettings | None = None) -> None:
    model = resolve_model(args, base)
    _check_files(model, args)
    try:
        select_device(model.device)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    detector = Detector.load(model.cfg, model.weights, model.names, img_size=model.img_size,
                             device=model.device, backend=model.backend,
                             onnx_cache_dir=model.onnx_cache_dir, precision=model.precision)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    for path in args.images:
        try:
            data = path.read_bytes()
            # Exactly the workers' decode (a large JPEG decoded at a reduced scale).
            decoded = decode_for_network(data, model.max_pixels, detector.img_size,
                                         model.tiles)
        except (ModelError, OSError) as exc:
            raise InputError(f"{path}: {exc}") from exc
        found = detector.detect_decoded_tiled(
            [decoded], model.tiles, conf_thres=model.conf_thres, iou_thres=model.iou_thres,
            agnostic=model.agnostic_nms, max_det=model.max_det)[0]
        detections = found.detections
        record = {"image": str(path), "width": decoded.width, "height": decoded.height,
                  "passes": found.passes, "detections": [d.to_json() for d in detections]}
        print(json.dumps(record), flush=True)
        if args.out is not None:
            img = decode_image(data) if (decoded.scale_x, decoded.scale_y) != (1, 1) \
                else decoded.image
            target = _output_path(args.out, path, used_names)
            try:
                written = cv2.imwrite(str(target), draw_detections(img, detections))
            except cv2.error as exc:
                raise InputError(f"cannot write {target}: {exc}") from exc
            if not written:
                raise InputError(f"cannot write {target}")
            logger.info("wrote %s", target)


def report_error(message: str) -> int:
    """A bad input: one line on stderr; the exit status."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def execute(args: argparse.Namespace, base: DetectSettings | None = None) -> int:
    """Run parsed arguments (see :func:`run`); the exit status."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        run(args, base)
    except (InputError, ModelError, OSError) as exc:
        return report_error(str(exc))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return execute(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
