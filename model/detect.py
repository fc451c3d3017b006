"""Command line detection: ``python -m model.detect [--config PATH | --cfg C --weights W
--names N] IMAGE...``.

Without ``--cfg``/``--weights``/``--names`` it runs the service's default model with the
service's settings, read from the service's YAML config (``--config``, else
``$YOLO_CONFIG``, else ``config/config.yaml`` of the project; see
:func:`model.service_config.read_service_model`), and it decodes images exactly as the
service's workers do (:func:`model.preprocess.decode_for_network`, then
:meth:`~model.inference.Detector.detect_decoded`), so an image gives the same detections
from both.  Flags override the config's values.

``--tiles off|auto|SIZE:OVERLAP`` (default: the model's ``tiles`` setting, else off)
runs the photo in tiles (:mod:`model.tiles`) as the service does.

Prints one JSON object per image per line (``image``, ``width``, ``height``, ``passes``,
``detections``); with ``--out DIR`` also writes annotated copies there. A bad input is
reported as one line on stderr with exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2

from model.draw import draw_detections
from model.errors import ModelError
from model.inference import Detector, select_device
from model.preprocess import decode_for_network, decode_image
from model.service_config import ServiceModel, read_service_model
from model.tiles import TileSetting, parse_tiles

logger = logging.getLogger("model.detect")

EXIT_BAD_INPUT = 1
# Suffixes cv2.imwrite can write; other names get ".png" appended.
WRITABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class InputError(Exception):
    """A file given on the command line cannot be used."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m model.detect",
        description="Detect objects in images with a Darknet YOLO network; prints one JSON "
                    "line per image. Without --cfg/--weights/--names: the service's default "
                    "model and settings, from its config file.")
    parser.add_argument("--config", type=Path,
                        help="the service's config file (default: $YOLO_CONFIG, else "
                             "config/config.yaml of the project)")
    parser.add_argument("--cfg", type=Path, help="Darknet .cfg file")
    parser.add_argument("--weights", type=Path,
                        help="Darknet .weights or PyTorch .pt checkpoint")
    parser.add_argument("--names", type=Path, help="class names, one per line")
    parser.add_argument("--img-size", type=int,
                        help="square network input size in pixels (default: the config's, "
                             "else 512)")
    parser.add_argument("--conf-thres", type=float,
                        help="minimum confidence (default: the config's, else 0.3)")
    parser.add_argument("--iou-thres", type=float,
                        help="NMS IoU threshold (default: the config's, else 0.6)")
    parser.add_argument("--max-det", type=int,
                        help="at most this many detections per image (default: the config's, "
                             "else 300)")
    parser.add_argument("--agnostic", action=argparse.BooleanOptionalAction, default=None,
                        help="class-agnostic NMS: boxes of different classes suppress each "
                             "other (default: the config's agnostic_nms, else off)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's "
                                         "workers.device, else auto)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnxruntime"),
                        help="what runs the network (default: the config's workers.backend, "
                             "else torch)")
    parser.add_argument("--tiles", type=_tiles_arg,
                        help="off, auto or SIZE:OVERLAP (e.g. 640:0.2): the whole photo plus "
                             "overlapping windows, merged (default: the config's tiles, else "
                             "off)")
    parser.add_argument("--out", type=Path, help="write annotated copies of the images here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    args = parser.parse_args(argv)
    given = [name for name in ("cfg", "weights", "names") if getattr(args, name) is not None]
    if given and len(given) != 3:
        parser.error("--cfg, --weights and --names go together (or none of them: the "
                     "service's model)")
    if given and args.config is not None:
        parser.error("--config names the service's model; it cannot be combined with --cfg")
    if args.img_size is not None and args.img_size <= 0:
        parser.error(f"--img-size must be positive, got {args.img_size}")
    for name in ("conf_thres", "iou_thres"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    if args.max_det is not None and args.max_det <= 0:
        parser.error(f"--max-det must be positive, got {args.max_det}")
    return args


def _tiles_arg(text: str) -> TileSetting:
    try:
        return parse_tiles(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_model(args: argparse.Namespace) -> ServiceModel:
    """The model and settings to run: the files named on the command line, or the
    service's default model from its config; flags override either."""
    if args.cfg is not None:
        base = ServiceModel(name=args.cfg.stem, cfg=args.cfg, weights=args.weights,
                            names=args.names)
    else:
        try:
            base = read_service_model(args.config)
        except ModelError as exc:
            raise InputError(str(exc)) from exc
    overrides = {"img_size": args.img_size, "conf_thres": args.conf_thres,
                 "iou_thres": args.iou_thres, "max_det": args.max_det,
                 "agnostic_nms": args.agnostic, "device": args.device,
                 "backend": args.backend, "tiles": args.tiles}
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})


def _check_files(model: ServiceModel, args: argparse.Namespace) -> None:
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


def run(args: argparse.Namespace) -> None:
    model = resolve_model(args)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        run(args)
    except (InputError, ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
