"""The messages that cross the process boundary between the pool and its workers.

Only plain, picklable data: the spec a worker loads its model from, the report it sends
when warm, and per image a :class:`DetectJob` (encoded bytes and thresholds) answered by
a :class:`DetectResult` (its :class:`~model.detection.Detection` s) or a
:class:`DetectFailure` (the ``code`` and message of the :class:`~model.errors.ImageError`
that the image raised, raised again in the parent by :meth:`DetectFailure.error`).

Over the pipe (``process.WorkerProcess``): ``("detect", [DetectJob, ...], lone)`` or
``("call", function, args)`` to the worker; ``("ready", WorkerInfo)`` once, then
``("ok", answer)`` or ``("error", text)`` back; ``("stop",)`` ends it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from model.detection import Detection
from model.errors import ImageError, image_error


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to load its model."""

    cfg: str
    weights: str
    names: str
    img_size: int
    device: str  # auto | cpu | cuda:N
    threads: int
    max_pixels: int
    backend: str = "torch"  # auto | torch | onnxruntime
    onnx_cache_dir: str | None = None
    precision: str = "fp32"  # fp32 | int8 (ONNX Runtime on a quantized export)
    max_batch_size: int = 1  # the warm-up runs this batch size too
    lone_threads: int = 0  # CPU threads for a job run while no other worker is busy (0: threads)
    log_level: str = "INFO"
    # What runs a batch: ``child.detect_batch`` (tests substitute a module-level function
    # with the same signature to inject faults into a real worker process).
    detect_fn: Callable[[Sequence[DetectJob], bool],
                        list[DetectResult | DetectFailure]] | None = None


@dataclass(frozen=True)
class WorkerInfo:
    """What a warm worker reports about itself."""

    pid: int
    index: int
    device: str
    threads: int
    model: str
    warmup_ms: float
    backend: str = ""
    precision: str = ""  # fp32 | int8
    lone_threads: int = 0  # threads used while no other worker is busy (0: no more than threads)
    error: str | None = None  # why the model could not be loaded


@dataclass(frozen=True)
class DetectJob:
    """One image to detect, with the thresholds its request asked for."""

    data: bytes = field(repr=False)
    conf_thres: float
    iou_thres: float
    agnostic: bool = False  # NMS across classes
    max_det: int = 300
    tiles: str = "off"  # off | auto | SIZE:OVERLAP (model.tiles.parse_tiles)


@dataclass(frozen=True)
class DetectResult:
    width: int
    height: int
    inference_ms: float  # the forward pass + NMS of the batch this image ran in
    model: str
    detections: list[Detection]
    batch_size: int = 1
    threads: int = 0  # intra-op threads of the forward pass (CPU)
    decode_ms: float = 0.0  # decoding this image (and its reduced-scale resize)
    passes: int = 1  # forward passes over it: the whole photo, plus its tiles


@dataclass(frozen=True)
class DetectFailure:
    """The image could not be used: the ``code`` and message of its ImageError."""

    code: str
    message: str

    @classmethod
    def of(cls, exc: ImageError) -> DetectFailure:
        return cls(exc.code, str(exc))

    def error(self) -> ImageError:
        """The same error, to raise in the parent."""
        return image_error(self.code, self.message)
