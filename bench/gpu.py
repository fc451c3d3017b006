"""GPU measurements in one go, one table: engine batch 1 vs batches, the service, parity.

On a CUDA machine, in under 10 minutes (``--budget``, 540 s by default, each step
bounded so that the rest still fits):

1. **engine**: ``model.inference.Detector`` on ``cuda:0`` (PyTorch fp16, channels-last,
   cuDNN autotuning: what ``workers.backend: auto`` runs on a GPU), yolov3-spp-6cls at
   512 with random weights (speed does not depend on their values), on real photos
   decoded as the workers do; batch 1, then batches of 4, 8 and 16 (what dynamic
   batching forms under load): images/s and ms per batch;
2. **service**: ``bench.load`` on the same model, ``workers.device: cuda:0``, 2 workers,
   ``max_batch_size: 16``, ``max_queue_delay_ms: 2``, concurrency 1, 8 and 32, with the
   bare engine in turns at concurrency 1;
3. **parity**: the GPU tests of the suite (``pytest -k "gpu or cuda"`` on
   ``tests/model/test_inference.py``: fp16 on the GPU against fp32 on the CPU).

Without CUDA it says so in one line per step and exits with status 0, having measured
nothing (``--allow-cpu`` runs the same steps on the CPU instead, to check the script
itself; the numbers then mean nothing for a GPU).

    python -m bench.gpu                    # or: bench/gpu.sh
    python -m bench.gpu --allow-cpu --cfg tests/data/service-6cls.cfg \\
        --names tests/data/service-6cls.names --img-size 128 --seconds 2   # script check
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._service import PROJECT_ROOT
from bench.common import ModelChoice, load_images, materialize_weights, percentile

log = logging.getLogger("bench.gpu")

SPP_CFG = PROJECT_ROOT.parent / "shared" / "darknet" / "yolov3-spp-6cls.cfg"
SPP_NAMES = PROJECT_ROOT.parent / "shared" / "darknet" / "traffic_light.names"
BATCHES = (4, 8, 16)


@dataclass
class Row:
    step: str
    setting: str
    images_per_s: float = math.nan
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    note: str = ""


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", type=Path, default=SPP_CFG,
                        help="Darknet cfg (default: ../shared/darknet/yolov3-spp-6cls.cfg)")
    parser.add_argument("--names", type=Path, default=SPP_NAMES)
    parser.add_argument("--img-size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=12.0,
                        help="measured seconds per engine setting (default: 12)")
    parser.add_argument("--service-seconds", type=float, default=15.0,
                        help="measured seconds per service level (default: 15)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds for everything (default: 540)")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="without CUDA, run the steps on the CPU (checks the script only)")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("engine", "service", "parity"), help="leave a step out")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- engine

def engine_rows(model: ModelChoice, device: str, seconds: float) -> list[Row]:
    import torch

    from model.inference import Detector
    from model.preprocess import decode_for_network

    detector = Detector.load(model.cfg, model.weights, model.names, img_size=model.img_size,
                             device=device, backend="torch")
    precision = "fp16" if getattr(detector, "half", False) else "fp32"
    decoded = [decode_for_network(image.data, 50_000_000, model.img_size)
               for image in load_images(None)]
    detector.warmup((1, *BATCHES))
    rows = []
    for batch in (1, *BATCHES):
        inputs = [decoded[i % len(decoded)] for i in range(batch)]
        for _ in range(3):
            detector.detect_decoded(inputs)
        times = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(times) < 5:
            begin = time.perf_counter()
            detector.detect_decoded(inputs)  # results on the host: synchronised
            times.append((time.perf_counter() - begin) * 1e3)
        elapsed = time.perf_counter() - started
        rows.append(Row("engine", f"batch {batch}, {precision}, {device}",
                        images_per_s=batch * len(times) / elapsed,
                        p50_ms=percentile(times, 50), p95_ms=percentile(times, 95),
                        note="ms per batch" + ("" if batch == 1 else
                                               f"; {percentile(times, 50) / batch:.2f} "
                                               "ms per image")))
        log.info("engine batch %d: %.1f images/s", batch, rows[-1].images_per_s)
    del detector
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- service

def service_rows(model: ModelChoice, device: str, seconds: float, timeout: float) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="yolo-gpu-") as folder:
        out = Path(folder) / "load.json"
        command = [sys.executable, "-m", "bench.load", "--cfg", str(model.cfg),
                   "--weights", str(model.weights), "--names", str(model.names),
                   "--img-size", str(model.img_size),
                   "--set", f"workers.device={device}", "--set", "workers.backend=torch",
                   "--set", "workers.max_workers=2", "--set", "workers.max_batch_size=16",
                   "--set", "workers.max_queue_delay_ms=2", "--set", "workers.max_queue=64",
                   "--levels", "1,8,32", "--duration", str(seconds), "--warmup", "4",
                   "--engine-duration", str(max(seconds / 2, 2.0)), "--json", str(out)]
        log.info("service: %s", " ".join(command))
        try:
            completed = subprocess.run(command, cwd=PROJECT_ROOT, timeout=timeout, check=False,
                                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return [Row("service", "bench.load", note=f"did not finish in {timeout:.0f} s")]
        if completed.returncode != 0 or not out.exists():
            tail = (completed.stdout + completed.stderr).strip().splitlines()[-3:]
            return [Row("service", "bench.load",
                        note=f"failed (status {completed.returncode}): {' | '.join(tail)}")]
        data = json.loads(out.read_text(encoding="utf-8"))
    run_ = data["runs"][0]
    workers = run_["service"].get("workers") or []
    layout = f"{len(workers)} workers, {workers[0].get('backend') if workers else '?'}"
    rows = []
    for level in run_["levels"]:
        rows.append(Row("service", f"c={level['concurrency']}, {layout}, batch <= 16",
                        images_per_s=level["images_per_s"], p50_ms=_num(level["p50_ms"]),
                        p95_ms=_num(level["p95_ms"]),
                        note=f"p99 {_num(level['p99_ms']):.1f} ms; errors "
                             f"{level['errors'] or 0}"))
    derived = run_.get("derived") or {}
    if derived.get("added_latency_c1_ms") is not None:
        rows[0].note += f"; +{derived['added_latency_c1_ms']:.1f} ms over the bare engine"
    if derived.get("efficiency") is not None:
        rows[-1].note += f"; efficiency {derived['efficiency']:.2f}"
    return rows


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


# ---------------------------------------------------------------- parity

def parity_rows(timeout: float) -> list[Row]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/model/test_inference.py", "-k", "gpu or cuda", "-rs"]
    try:
        completed = subprocess.run(command, cwd=PROJECT_ROOT, timeout=timeout, check=False,
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return [Row("parity", "pytest -k 'gpu or cuda'", note=f"timed out ({timeout:.0f} s)")]
    lines = (completed.stdout or completed.stderr).strip().splitlines()
    summary = lines[-1] if lines else "no output"
    if completed.returncode != 0:
        verdict = f"FAILED (status {completed.returncode})"
    elif " passed" in summary:
        verdict = "passed"
    else:
        verdict = "NOT RUN"  # skipped: no GPU seen by the test

    return [Row("parity", "fp16 GPU vs fp32 CPU", note=f"{verdict}: {summary}")]


# ---------------------------------------------------------------- report

def format_table(rows: Sequence[Row]) -> str:
    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.1f}"

    width = max(len(r.setting) for r in rows)
    lines = [f"{'step':<8} {'setting':<{width}} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8}  note"]
    for r in rows:
        lines.append(f"{r.step:<8} {r.setting:<{width}} {ms(r.images_per_s):>9} "
                     f"{ms(r.p50_ms):>8} {ms(r.p95_ms):>8}  {r.note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    started = time.monotonic()
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        device, where = "cuda:0", torch.cuda.get_device_name(0)
    elif args.allow_cpu:
        device, where = "cpu", "CPU (--allow-cpu: a check of the script, not a GPU number)"
    else:
        reason = (f"no CUDA device (torch {torch.__version__}, built for CUDA "
                  f"{torch.version.cuda or 'none'}): nothing measured")
        print(format_table([Row(step, "-", note=reason) for step in ("engine", "service",
                                                                       "parity")]))
        print(f"bench.gpu: {reason}. Run it on a machine with an NVIDIA GPU and a CUDA build "
              "of torch.")
        return 0
    if not args.cfg.is_file():
        print(f"bench.gpu: {args.cfg} not found (the yolov3-spp-6cls cfg lives in "
              "../shared/darknet; give another with --cfg and --names)")
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="yolo-gpu-weights-") as folder:
        model = materialize_weights(ModelChoice(args.cfg.resolve(), None, args.names.resolve(),
                                                args.img_size), Path(folder))

        def left() -> float:
            return args.budget - (time.monotonic() - started)

        if "engine" not in args.skip:
            rows += engine_rows(model, device, args.seconds)
        if "service" not in args.skip:
            rows += service_rows(model, device, args.service_seconds,
                                 timeout=max(left() - 60.0, 30.0))
        if "parity" not in args.skip:
            rows += parity_rows(timeout=max(left(), 30.0))
    print(f"device: {where}; model {args.cfg.name} at {args.img_size} px, random weights; "
          f"{time.monotonic() - started:.0f} s in all")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
