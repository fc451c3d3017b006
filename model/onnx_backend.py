"""ONNX Runtime as an engine backend: export our network to ONNX and run it with ORT.

:func:`export_onnx` writes the fused eval network's first output, (N, A, 5 + nc), as an
ONNX graph with a dynamic batch axis and a fixed input size.  It uses PyTorch's
``torch.export``-based exporter (``dynamo=True``, the maintained one; it needs ``onnx``
and ``onnxscript``).  :class:`OnnxRunner` runs such a graph on the CPU and can stand in
for the network in :class:`model.inference.Detector`: ``runner(x)[0]`` is that tensor.
:meth:`OnnxRunner.from_darknet` exports into a cache directory, keyed by a hash of
everything the graph depends on, so a second start-up reuses the file; with
``precision="int8"`` it also quantizes the export (:mod:`model.quantize`) and caches that.

Each cached file is made once, whoever asks for it: the maker holds an exclusive
``fcntl.flock`` on ``<file>.lock`` beside it and writes to a temporary file renamed into
place, so a second process (the other workers of a pool, another service on the same
cache) waits for the lock and then opens the finished file instead of exporting again.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib.metadata
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from model.darknet import Darknet
from model.quantize import Calibration, check_precision

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "detections"
# Bump when the export procedure changes in a way that changes the graph.
_EXPORT_VERSION = "1"
# The exporter's libraries log every optimisation pass at INFO (and torch warns that
# torchvision's operators are not registered): quiet them for the export's duration.
_NOISY_LOGGERS = {"torch.onnx": logging.ERROR, "onnxscript": logging.WARNING,
                  "onnx_ir": logging.WARNING}


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = {name: logging.getLogger(name) for name in _NOISY_LOGGERS}
    levels = {name: lg.level for name, lg in loggers.items()}
    for name, lg in loggers.items():
        lg.setLevel(max(_NOISY_LOGGERS[name], lg.getEffectiveLevel()))
    try:
        with warnings.catch_warnings():
            # Raised inside torch.export by torch's own pytree code (torch 2.13).
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])


class _FirstOutput(nn.Module):
    """The network's eval output (N, A, 5 + nc) alone, without the raw head maps."""

    def __init__(self, net: Darknet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def _check_size(net: Darknet, img_size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(v) for v in img_size)
    if h <= 0 or w <= 0 or h % net.max_stride or w % net.max_stride:
        raise ValueError(f"img_size {img_size} must be positive multiples of the network's "
                         f"largest stride, {net.max_stride}")
    return h, w


def _inference_copy(net: Darknet, img_size: tuple[int, int]) -> Darknet:
    """A fused, eval-mode, float32 CPU copy whose per-shape caches (YOLO grids, reorg
    indices) are already filled, so they enter the graph as constants and the caller's
    network is left untouched."""
    clone = copy.deepcopy(net).float().cpu().eval()
    if any(isinstance(m, nn.BatchNorm2d) for m in clone.modules()):
        clone.fuse()
    with torch.no_grad():
        clone(torch.zeros(1, _in_channels(clone), *img_size))
    return clone


def _in_channels(net: Darknet) -> int:
    return next(m.in_channels for m in net.modules() if isinstance(m, nn.Conv2d))


def export_onnx(net: Darknet, path: str | Path, img_size: tuple[int, int],
                batch: int | None = None) -> Path:
    """Export ``net``'s eval output (N, A, 5 + nc) to ``path`` as ONNX (opset :data:`OPSET`).

    The input is ``images`` (N, 3, H, W) float32 RGB in 0..1 at ``img_size`` = (H, W); the
    output is ``detections``.  ``batch`` None gives a dynamic batch axis, an int fixes it.
    The network is copied, and the copy fused if it is not, so ``net`` is not modified.
    The file is written beside ``path`` and renamed into place, so a reader never sees a
    partial file.  Returns ``path``.
    """
    size = _check_size(net, img_size)
    return _export(_inference_copy(net, size), Path(path), size, batch)


def _export(clone: Darknet, path: Path, size: tuple[int, int], batch: int | None) -> Path:
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be positive or None, got {batch}")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _FirstOutput(clone).eval()
    # An example batch of 2 keeps the exporter from specialising the batch axis to 1.
    example = torch.zeros(batch or 2, _in_channels(clone), *size)
    dynamic = None if batch is not None else {"x": {0: torch.export.Dim("batch")}}
    fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        with _quiet_exporter():
            torch.onnx.export(module, (example,), tmp_name, dynamo=True, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=dynamic, external_data=False, verbose=False)
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    logger.info("exported %s at %dx%d to %s", Path(clone.cfg_path).name, *size, path)
    return path


def _cache_key(clone: Darknet, size: tuple[int, int]) -> str:
    """A hex digest of what the exported graph depends on: the cfg text, the network's
    structure and fused weights, the input size, opset and exporter versions."""
    digest = hashlib.sha256()
    for part in (Path(clone.cfg_path).read_bytes(), repr(clone).encode(),
                 f"{size[0]}x{size[1]}|opset={OPSET}|torch={torch.__version__}|"
                 f"onnxscript={importlib.metadata.version('onnxscript')}|"
                 f"export={_EXPORT_VERSION}".encode()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    for name, tensor in clone.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (kept: removing it would race)."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process to write %s", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_once(path: Path, make: Callable[[Path], object]) -> bool:
    """Run ``make(path)`` unless ``path`` exists, under :func:`_file_lock`, so concurrent
    callers make it once; ``make`` must write it atomically (temporary file, rename).
    Returns True when this call made it."""
    if path.is_file():  # files appear complete (renamed into place): no lock needed
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(path):
        if path.is_file():  # made by whoever held the lock before us
            return False
        make(path)
        return True


def _session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads sleep instead of spinning: between requests the cores belong
    # to the HTTP process, PostgreSQL and the other workers.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRunner:
    """An ONNX Runtime CPU session over an exported network.

    ``runner(x)`` takes a float N x 3 x H x W tensor and returns a one-tuple holding the
    (N, A, 5 + nc) output as a CPU tensor, like ``Darknet``'s eval forward.
    """

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        self.path = Path(onnx_path)
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.path), _session_options(self.threads),
                                            providers=["CPUExecutionProvider"])
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.output_name = self.session.get_outputs()[0].name
        hw = spec.shape[2:]
        # (H, W) when the graph fixes them (ours do); None when they are symbolic.
        self.input_hw = tuple(hw) if all(isinstance(v, int) for v in hw) else None
        self.exported = False  # True when from_darknet had to export (no cached file)
        self.precision = "fp32"  # what from_darknet made: fp32, or int8 (quantized)

    @classmethod
    def from_darknet(cls, net: Darknet, img_size: tuple[int, int],
                     cache_dir: str | Path | None = None,
                     threads: int | None = None, precision: str = "fp32",
                     calibration: Calibration | None = None) -> OnnxRunner:
        """Export ``net`` (see :func:`export_onnx`) and open it.

        With ``cache_dir`` the graph is kept there as ``<cfg stem>-<hash>.onnx`` and reused
        when the cfg, weights, size, opset and exporter are unchanged; without it the graph
        is exported to a temporary directory that is removed once the session is built.
        ``precision="int8"`` quantizes that graph (:func:`model.quantize.quantize_onnx`,
        ``calibration``: default :class:`~model.quantize.Calibration`) and opens the int8
        one, cached beside it as ``<cfg stem>-<hash>-int8-<hash of the calibration>.onnx``.
        """
        precision = check_precision(precision)
        calibration = calibration or Calibration()
        size = _check_size(net, img_size)
        clone = _inference_copy(net, size)

        def quantize(fp32: Path, out: Path) -> None:
            from model.quantize import quantize_onnx

            quantize_onnx(fp32, out, size, calibration, net.max_stride)

        if cache_dir is None:
            with tempfile.TemporaryDirectory(prefix="darknet-onnx-") as tmp:
                path = _export(clone, Path(tmp) / "model.onnx", size, None)
                if precision == "int8":
                    quantize(path, Path(tmp) / "model-int8.onnx")
                    path = Path(tmp) / "model-int8.onnx"
                runner = cls(path, threads)
            runner.exported = True
            runner.precision = precision
            return runner
        key = _cache_key(clone, size)
        path = Path(cache_dir) / f"{Path(net.cfg_path).stem}-{key[:20]}.onnx"
        exported = make_once(path, lambda p: _export(clone, p, size, None))
        if precision == "int8":
            digest = hashlib.sha256(f"{key}|{calibration.key()}".encode()).hexdigest()
            int8 = path.with_name(f"{path.stem}-int8-{digest[:12]}.onnx")
            exported = make_once(int8, lambda p: quantize(path, p)) or exported
            path = int8
        if not exported:
            logger.info("reusing cached ONNX export %s", path)
        runner = cls(path, threads)
        runner.exported = exported
        runner.precision = precision
        return runner

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if x.ndim != 4 or (self.input_hw is not None and tuple(x.shape[2:]) != self.input_hw):
            raise ValueError(f"expected an N x C x H x W batch with (H, W) = {self.input_hw}, "
                             f"got {tuple(x.shape)}")
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return (torch.from_numpy(out),)
