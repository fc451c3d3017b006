"""int8 (model.quantize) and the export cache made once (model.onnx_backend.make_once):
small cfgs with random weights for the mechanics; two processes racing for one export."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model.darknet import Darknet
from model.inference import Detector
from model.onnx_backend import OnnxRunner, export_onnx
from model.quantize import Calibration, check_precision, edge_pool_padding, head_nodes
from model.weights import save_weights
from tests.engine_utils import DARKNET_DIR, DATA_DIR, randomize

FEW = Calibration(scenes=8)  # enough for the mechanics, quick
SIZE = 128
TINY = DARKNET_DIR / "yolov3-tiny.cfg"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Darknet]:
    """Random YOLOv3-tiny weights in a file, and the network loaded from it as
    ``Detector.load`` loads it (so the Detector finds the same cached exports)."""
    from model.weights import load_weights

    folder = tmp_path_factory.mktemp("tiny")
    weights = folder / "random.weights"
    save_weights(randomize(Darknet(TINY, SIZE), seed=3), weights)
    net = Darknet(TINY, SIZE)
    load_weights(net, weights)
    return weights, net.eval().fuse()


def _session(path: Path | str) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_edge_padding_gives_darknets_maxpool_the_same_maxima(tmp_path: Path) -> None:
    """YOLOv3-tiny's stride-1 maxpool pads right/bottom with -inf; edge mode must give the
    same output, checked by running both graphs (and its -inf, the ranges calibration
    would see, is gone)."""
    net = randomize(Darknet(DARKNET_DIR / "yolov3-tiny.cfg", 160), seed=5).eval()
    path = export_onnx(net, tmp_path / "fp32.onnx", (160, 160))
    model = onnx.load(str(path))
    assert edge_pool_padding(model) == 6  # one Pad before each of the six maxpools
    edged = tmp_path / "edge.onnx"
    onnx.save(model, str(edged))
    fills = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer
             if i.name in {n.input[2] for n in model.graph.node
                           if n.op_type == "Pad" and len(n.input) > 2}]
    assert not any(np.isinf(f).any() for f in fills)
    x = np.random.default_rng(0).random((2, 3, 160, 160), np.float32)
    (before,) = _session(path).run(None, {"images": x})
    (after,) = _session(edged).run(None, {"images": x})
    np.testing.assert_array_equal(before, after)


def test_decode_stays_fp32_and_heads_are_the_last_convolutions(tmp_path: Path) -> None:
    net = randomize(Darknet(DATA_DIR / "tiny.cfg", 64), seed=1).eval()
    model = onnx.load(str(export_onnx(net, tmp_path / "tiny.onnx", (64, 64))))
    decode, heads = head_nodes(model)
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    convs = {n.name: weights[n.input[1]] for n in model.graph.node if n.op_type == "Conv"}
    # tiny.cfg: 2 classes, 3 anchors per head -> the two head convolutions have 21 filters
    assert sorted(convs[h][0] for h in heads) == [21, 21]
    assert not set(decode) & set(convs)
    assert {n.op_type for n in model.graph.node if n.name in decode} >= {"Sigmoid", "Exp"}


def _int8_weights(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(1 for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)


def test_int8_export_is_made_cached_and_keyed(tiny: tuple[Path, Darknet],
                                             tmp_path: Path) -> None:
    _, net = tiny
    first = OnnxRunner.from_darknet(net, (SIZE, SIZE), tmp_path, threads=1, precision="int8",
                                    calibration=FEW)
    assert first.exported and first.precision == "int8" and "-int8-" in first.path.name
    assert _int8_weights(first.path) == 11  # every convolution's but the two heads
    fp32 = [p for p in tmp_path.glob("*.onnx") if p != first.path]
    assert len(fp32) == 1 and _int8_weights(fp32[0]) == 0  # the export it was made from
    mtime = first.path.stat().st_mtime_ns

    again = OnnxRunner.from_darknet(net, (SIZE, SIZE), tmp_path, threads=1, precision="int8",
                                    calibration=FEW)
    assert not again.exported and again.path == first.path
    assert first.path.stat().st_mtime_ns == mtime
    plain = OnnxRunner.from_darknet(net, (SIZE, SIZE), tmp_path, threads=1)
    assert not plain.exported and plain.path == fp32[0] and plain.precision == "fp32"

    # Another calibration, or the heads in int8 too, is another file.
    heads = OnnxRunner.from_darknet(net, (SIZE, SIZE), tmp_path, threads=1, precision="int8",
                                    calibration=Calibration(scenes=8, exclude_heads=False))
    assert heads.exported and heads.path not in (first.path, fp32[0])
    assert _int8_weights(heads.path) == 13
    assert len(list(tmp_path.glob("*.onnx"))) == 3


def test_int8_outputs_are_close_to_fp32_on_a_photo(tiny: tuple[Path, Darknet],
                                                   tmp_path_factory: Any) -> None:
    """Random weights, a real photo: int8 objectness and boxes stay near fp32's."""
    import cv2

    from model.preprocess import letterbox, to_tensor
    from tests.paths import PHOTOS_DIR

    _, net = tiny
    cache = tmp_path_factory.getbasetemp() / "tiny-cache"
    fp32 = OnnxRunner.from_darknet(net, (SIZE, SIZE), cache, threads=1)
    int8 = OnnxRunner.from_darknet(net, (SIZE, SIZE), cache, threads=1, precision="int8")
    image = cv2.imread(str(min(PHOTOS_DIR.glob("*.jpg"))))
    x = to_tensor([letterbox(image, SIZE)[0]])
    a, b = fp32(x)[0][0], int8(x)[0][0]
    assert not torch.equal(a, b)  # it is another graph
    objectness = (a[:, 4] - b[:, 4]).abs()
    assert objectness.mean() < 0.02 and objectness.max() < 0.2
    # box centres (pixels) of the most confident cells
    top = a[:, 4].argsort(descending=True)[:20]
    assert (a[top, :2] - b[top, :2]).abs().max() < 4.0


def test_precision_is_checked(tmp_path: Path) -> None:
    assert check_precision(" INT8 ") == "int8"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        check_precision("fp16")
    cfg = DATA_DIR / "tiny.cfg"
    weights = tmp_path / "w.weights"
    save_weights(randomize(Darknet(cfg, 64)), weights)
    with pytest.raises(ValueError, match="int8 runs on ONNX Runtime on the CPU only"):
        Detector.load(cfg, weights, DATA_DIR / "tiny.names", img_size=64, device="cpu",
                      backend="torch", precision="int8")


def test_detector_int8_picks_onnxruntime_and_finds_what_fp32_finds(
        tiny: tuple[Path, Darknet], tmp_path_factory: Any) -> None:
    import cv2

    from tests.paths import PHOTOS_DIR

    weights, _ = tiny
    load: dict[str, Any] = {"img_size": SIZE, "device": "cpu", "backend": "auto",
                            "threads": 1,
                            "onnx_cache_dir": tmp_path_factory.getbasetemp() / "tiny-cache"}
    fp32 = Detector.load(TINY, weights, DARKNET_DIR / "coco.names", **load)
    int8 = Detector.load(TINY, weights, DARKNET_DIR / "coco.names", precision="int8", **load)
    assert (fp32.precision, int8.precision, int8.backend) == ("fp32", "int8", "onnxruntime")
    image = cv2.imread(str(min(PHOTOS_DIR.glob("*.jpg"))))
    a, b = fp32.detect([image], 0.05, 0.5)[0], int8.detect([image], 0.05, 0.5)[0]
    assert a, "random weights at 0.05 give boxes"
    matched = sum(any(_iou(d.box, e.box) > 0.7 and abs(d.confidence - e.confidence) < 0.05
                      for e in b) for d in a)
    assert matched >= 0.8 * len(a) and abs(len(a) - len(b)) <= max(2, len(a) // 5)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


# ------------------------------------------------------------- made once, in any process

def _race(cache: str, barrier: Any, results: Any) -> None:
    """In a spawned process: build the network, wait for the other, ask for the int8
    export; report its path and what was logged (exports made, locks waited for)."""
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logging.getLogger("model").addHandler(Keep())
    logging.getLogger("model").setLevel(logging.INFO)
    net = randomize(Darknet(DATA_DIR / "tiny.cfg", 64), seed=1).eval().fuse()
    barrier.wait(timeout=120)
    runner = OnnxRunner.from_darknet(net, (64, 64), cache, threads=1, precision="int8",
                                     calibration=Calibration(scenes=4))
    results.put((str(runner.path), records))


def test_two_processes_racing_for_one_export_make_it_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, results))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert len({path for path, _ in outcomes}) == 1
    logged = [m for _, records in outcomes for m in records]
    # The fp32 export and its int8 graph are each made once, by one or the other process
    # (the one that waited for the export may quantize it while the other waits).
    assert sum(m.startswith("exported tiny.cfg") for m in logged) == 1
    assert sum(m.startswith("quantized tiny-") for m in logged) == 1
    assert any(m.startswith("waiting for another process") for m in logged), \
        "one process waited for the other's file"
    # one fp32 export and one int8 graph, no temporary files left
    assert sorted(p.suffix for p in tmp_path.iterdir() if not p.name.endswith(".lock")) \
        == [".onnx", ".onnx"]
