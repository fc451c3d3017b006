"""fp32 against int8 in ONNX Runtime: the latency of one forward pass, in alternation.

Both graphs are made as the service makes them (:meth:`model.onnx_backend.OnnxRunner.
from_darknet`, ``precision`` fp32 and int8, calibration :class:`model.quantize.Calibration`)
and run on the same letterboxed real photo, one pass each in turn (the order flipping every
round), so that load from other processes hits both alike; per thread count, its own
sessions.  Prints the median, p90 and min ms per pass and the int8 / fp32 ratio.  Weights
are random unless given: speed does not depend on their values.

    python -m bench.precision --cfg model/data/traffic-lights-yolov3-tiny.cfg \\
        --weights model/data/traffic-lights-yolov3-tiny.pt --threads 1 2
    python -m bench.precision --cfg model/data/yolov3-spp-6cls.cfg --threads 1 2 --iters 10
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch

from model.darknet import Darknet
from model.onnx_backend import OnnxRunner
from model.preprocess import letterbox, to_tensor
from model.weights import load_weights

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "real" / "cinta-409.jpg"


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path, required=True)
    parser.add_argument("--weights", type=Path, help="default: random weights")
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iters", type=int, default=30, help="passes per graph and thread count")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument("--onnx-cache", type=Path,
                        help="keep the exports here and reuse them (default: made afresh)")
    return parser.parse_args()


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), "?")
    return f"{model}{' (avx512_vnni)' if 'avx512_vnni' in info else ''}"


def _measure(runners: dict[str, OnnxRunner], x: torch.Tensor, iters: int,
             warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners)
    for i in range(warmup + iters):
        for name in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            runners[name](x)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args()
    torch.set_num_threads(1)
    net = Darknet(args.cfg, args.img_size)
    if args.weights is not None:
        load_weights(net, args.weights)
    net.eval().fuse()
    image = cv2.imread(str(args.photo), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"{args.photo}: not a readable image")
    x = to_tensor([letterbox(image, args.img_size, stride=net.max_stride)[0]])
    size = (args.img_size, args.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.onnx_cache or Path(tmp)
        paths = {precision: OnnxRunner.from_darknet(net, size, cache, 1, precision).path
                 for precision in ("fp32", "int8")}
        rows = []
        for threads in args.threads:
            runners = {p: OnnxRunner(path, threads) for p, path in paths.items()}
            rows.append((threads, _measure(runners, x, args.iters, args.warmup)))
    print(f"cfg={args.cfg.name} weights={args.weights.name if args.weights else 'random'} "
          f"img_size={args.img_size} iters={args.iters} onnxruntime={ort.__version__} "
          f"cpu={_cpu()}")
    print(f"{'threads':>7}{'graph':>7}{'median ms':>11}{'p90 ms':>9}{'min ms':>9}"
          f"{'int8/fp32':>11}")
    for threads, times in rows:
        medians = {name: statistics.median(values) for name, values in times.items()}
        for name, values in times.items():
            p90 = float(np.percentile(values, 90))
            ratio = f"{medians['int8'] / medians['fp32']:.2f}" if name == "int8" else ""
            print(f"{threads:>7}{name:>7}{medians[name] * 1e3:>11.1f}{p90 * 1e3:>9.1f}"
                  f"{min(values) * 1e3:>9.1f}{ratio:>11}")


if __name__ == "__main__":
    main()
