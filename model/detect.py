"""Command line detection: ``python -m model.detect --cfg C --weights W --names N IMAGE...``.

Prints one JSON object per image per line (``image``, ``width``, ``height``,
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

from model.errors import ModelError
from model.inference import Detector, select_device
from model.preprocess import decode_image
from model.draw import draw_detections

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
                    "line per image.")
    parser.add_argument("--cfg", required=True, type=Path, help="Darknet .cfg file")
    parser.add_argument("--weights", required=True, type=Path,
                        help="Darknet .weights or PyTorch .pt checkpoint")
    parser.add_argument("--names", required=True, type=Path, help="class names, one per line")
    parser.add_argument("--img-size", type=int, default=512,
                        help="square network input size in pixels (default: 512)")
    parser.add_argument("--conf-thres", type=float, default=0.3,
                        help="minimum confidence (default: 0.3)")
    parser.add_argument("--iou-thres", type=float, default=0.6,
                        help="NMS IoU threshold (default: 0.6)")
    parser.add_argument("--max-det", type=int, default=300,
                        help="at most this many detections per image (default: 300)")
    parser.add_argument("--agnostic", action="store_true",
                        help="class-agnostic NMS (boxes of different classes suppress each other)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--out", type=Path, help="write annotated copies of the images here")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    args = parser.parse_args(argv)
    if args.img_size <= 0:
        parser.error(f"--img-size must be positive, got {args.img_size}")
    for name in ("conf_thres", "iou_thres"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1]")
    if args.max_det <= 0:
        parser.error(f"--max-det must be positive, got {args.max_det}")
    return args


def _check_files(args: argparse.Namespace) -> None:
    """Fail before loading the model if any named file is missing."""
    for label, path in [("cfg", args.cfg), ("weights", args.weights), ("names", args.names)]:
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
    _check_files(args)
    try:
        select_device(args.device)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    detector = Detector.load(args.cfg, args.weights, args.names, img_size=args.img_size,
                             device=args.device)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    used_names: set[str] = set()
    for path in args.images:
        try:
            img = decode_image(path.read_bytes())
        except (ModelError, OSError) as exc:
            raise InputError(f"{path}: {exc}") from exc
        detections = detector.detect([img], conf_thres=args.conf_thres,
                                     iou_thres=args.iou_thres, agnostic=args.agnostic,
                                     max_det=args.max_det)[0]
        record = {"image": str(path), "width": img.shape[1], "height": img.shape[0],
                  "detections": [d.to_json() for d in detections]}
        print(json.dumps(record), flush=True)
        if args.out is not None:
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
