"""Engine benchmark: our PyTorch engine against OpenCV DNN and ONNX Runtime, same cfg and weights.

All run on the CPU with the same thread count, interleaved (one batch each, in turn) so
that background load affects them alike.  ONNX Runtime runs an ONNX export of our fused
network (:mod:`model.onnx_backend`).  Prints ms per image and images/s per engine and each
engine's speed relative to the fastest.  Weights are random (written once in Darknet
format) unless given: speed does not depend on their values.

    python -m bench.engine --cfg ../shared/darknet/yolov3-spp-6cls.cfg --img-size 512

``--photos 1280x960 1920x1080 4032x3024`` then also times whole photos through the engine
as the service runs them (ONNX Runtime, :meth:`model.inference.Detector.detect_decoded_tiled`
after :func:`model.preprocess.decode_for_network` of a JPEG of that size), once per
``--tiles`` setting (default off and auto): forward passes and ms per photo, decode included.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

from model.darknet import Darknet
from model.onnx_backend import OnnxRunner
from model.weights import load_weights, save_weights

logger = logging.getLogger(__name__)

OURS = "ours (torch)"


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/darknet/yolov3-spp-6cls.cfg")
    parser.add_argument("--weights", type=Path,
                        help="Darknet .weights or a PyTorch state_dict; default: random")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--onnx-cache", type=Path,
                        help="keep the ONNX export here and reuse it (default: export afresh)")
    parser.add_argument("--photos", nargs="*", default=[], metavar="WxH",
                        help="also time whole photos of these sizes, tiles off and on")
    parser.add_argument("--tiles", nargs="+", default=["off", "auto"],
                        help="tile settings for --photos (model.tiles)")
    parser.add_argument("--names", type=Path,
                        default=Path(__file__).resolve().parents[1] / "model/data/traffic_light.names")
    return parser.parse_args()


def _engines(args: argparse.Namespace, tmp: Path,
             x: np.ndarray) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per engine, each running the batch ``x`` once."""
    weights = args.weights
    if weights is None:
        weights = tmp / "random.weights"
        save_weights(Darknet(args.cfg, args.img_size), weights)
    net = Darknet(args.cfg, args.img_size)
    load_weights(net, weights)
    net.eval().fuse()
    if weights.suffix != ".weights":  # OpenCV reads Darknet weights only
        weights = tmp / "ref.weights"
        reference = Darknet(args.cfg, args.img_size)
        load_weights(reference, args.weights)
        save_weights(reference, weights)

    ref = cv2.dnn.readNetFromDarknet(str(args.cfg), str(weights))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    names = ref.getUnconnectedOutLayersNames()
    logger.info("exporting to ONNX (this takes a while for large networks)")
    runner = OnnxRunner.from_darknet(net, (args.img_size, args.img_size), args.onnx_cache,
                                     threads=args.threads)
    tx = torch.from_numpy(x)

    def ours() -> object:
        with torch.inference_mode():
            return net(tx)[0]

    def opencv() -> object:
        ref.setInput(x)
        return ref.forward(names)

    def onnxruntime() -> object:
        return runner(tx)[0]

    return {OURS: ours, "opencv dnn": opencv, "onnxruntime": onnxruntime}


def _measure(engines: dict[str, Callable[[], object]], iters: int,
             warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in engines}
    for i in range(warmup + iters):
        for name, run in engines.items():
            start = time.perf_counter()
            run()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _report(args: argparse.Namespace, times: dict[str, list[float]]) -> None:
    print(f"cfg={args.cfg.name} img_size={args.img_size} batch={args.batch} "
          f"threads={args.threads} iters={args.iters} torch={torch.__version__} "
          f"opencv={cv2.__version__} onnxruntime={ort.__version__}")
    per_image = {name: statistics.median(v) / args.batch for name, v in times.items()}
    fastest = min(per_image.values())
    print(f"{'engine':<14}{'median ms/img':>14}{'min ms/img':>12}{'img/s':>8}"
          f"{'vs fastest':>12}")
    for name, values in times.items():
        print(f"{name:<14}{per_image[name] * 1e3:>14.1f}{min(values) / args.batch * 1e3:>12.1f}"
              f"{1 / per_image[name]:>8.2f}{fastest / per_image[name]:>12.2f}")
    peers = {name: t for name, t in per_image.items() if name != OURS}
    best = min(peers, key=peers.__getitem__)
    print(f"ours (torch) speed / fastest peer ({best}): {peers[best] / per_image[OURS]:.2f} "
          "(>= 1 means ours is at least as fast)")


def _photo_bytes(width: int, height: int) -> bytes:
    """A JPEG of ``width`` x ``height``: a real photo of the project stretched to it."""
    photo = Path(__file__).resolve().parents[1] / "tests/data/photos/landscape.jpg"
    img = cv2.resize(cv2.imread(str(photo)), (width, height), interpolation=cv2.INTER_LINEAR)
    ok, data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("cannot encode the photo")
    return data.tobytes()


def _time_photos(args: argparse.Namespace, tmp: Path) -> None:
    """Per photo size and tile setting: passes and the median ms per photo."""
    from model.inference import Detector
    from model.preprocess import decode_for_network
    from model.tiles import parse_tiles

    weights = args.weights or tmp / "random.weights"
    detector = Detector.load(args.cfg, weights, args.names, img_size=args.img_size,
                             device="cpu", backend="onnxruntime", onnx_cache_dir=args.onnx_cache,
                             threads=args.threads)
    print(f"whole photos (ONNX Runtime, {args.threads} threads, decode + detect, median of "
          f"{args.iters}):")
    print(f"{'photo':<12}{'tiles':<8}{'passes':>7}{'ms/photo':>10}{'ms/pass':>9}")
    for size in args.photos:
        width, height = (int(v) for v in size.lower().split("x"))
        data = _photo_bytes(width, height)
        for text in args.tiles:
            setting = parse_tiles(text)
            times, passes = [], 0
            for i in range(args.warmup + args.iters):
                start = time.perf_counter()
                decoded = decode_for_network(data, None, args.img_size, setting)
                passes = detector.detect_decoded_tiled([decoded], setting, 0.5, 0.45)[0].passes
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
            ms = statistics.median(times) * 1e3
            print(f"{size:<12}{str(setting):<8}{passes:>7}{ms:>10.1f}{ms / passes:>9.1f}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    x = np.random.default_rng(0).random((args.batch, 3, args.img_size, args.img_size),
                                        dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        engines = _engines(args, Path(tmp), x)
        times = _measure(engines, args.iters, args.warmup)
        _report(args, times)
        if args.photos:
            _time_photos(args, Path(tmp))


if __name__ == "__main__":
    main()
