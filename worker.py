"""Code that runs inside the detection worker processes.

The parent creates the process pool with ``initializer=init``: every worker ignores
SIGINT (the parent owns shutdown), sets its torch thread count, picks its device, loads
the model once and runs one warm-up forward pass before it takes any job. Jobs receive
encoded image bytes and return plain data (:class:`DetectResult` or
:class:`DetectFailure`); bad input never raises out of a job, so it cannot kill a worker.

The one module-level variable, ``_state``, is this worker process's model and identity;
it is set once by ``init`` and never exists in the parent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Barrier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to load its model: plain, picklable data."""

    cfg: str
    weights: str
    names: str
    img_size: int
    device: str  # auto | cpu | cuda:N
    threads: int
    max_pixels: int
    log_level: str = "INFO"


@dataclass(frozen=True)
class WorkerInfo:
    """What a warm worker reports about itself."""

    pid: int
    index: int
    device: str
    threads: int
    model: str
    warmup_ms: float
    error: str | None = None  # why the model could not be loaded


@dataclass(frozen=True)
class DetectResult:
    width: int
    height: int
    sha256: str
    inference_ms: float
    model: str
    detections: list[dict[str, Any]]


@dataclass(frozen=True)
class DetectFailure:
    """The input could not be used. kind: ``decode`` (-> 400) or ``too_large`` (-> 413)."""

    kind: str
    message: str


@dataclass
class _WorkerState:
    detector: Any
    info: WorkerInfo
    max_pixels: int
    barrier: Barrier


_state: _WorkerState | None = None


def init(spec: WorkerSpec, counter: Synchronized[int], barrier: Barrier) -> None:
    """Process-pool initializer: runs once per worker before its first job.

    A model that cannot be loaded does not raise here (that would only surface as a
    BrokenProcessPool in the parent): the error is kept and reported by ``ping``.
    """
    global _state
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=spec.log_level,
                        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s")
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    started = time.perf_counter()
    try:
        import torch

        from model.inference import Detector, select_device

        torch.set_num_threads(spec.threads)
        device = str(select_device(spec.device, index))
        detector = Detector.load(spec.cfg, spec.weights, spec.names, img_size=spec.img_size,
                                 device=device)
        detector.warmup()
    except Exception as exc:  # reported to the parent by ping(); the worker stays alive
        log.exception("worker %d could not load the model", index)
        info = WorkerInfo(pid=os.getpid(), index=index, device=spec.device, threads=spec.threads,
                          model="", warmup_ms=0.0, error=f"{type(exc).__name__}: {exc}")
        _state = _WorkerState(detector=None, info=info, max_pixels=spec.max_pixels,
                              barrier=barrier)
        return
    warmup_ms = (time.perf_counter() - started) * 1000.0
    info = WorkerInfo(pid=os.getpid(), index=index, device=device, threads=spec.threads,
                      model=str(detector.model_name), warmup_ms=round(warmup_ms, 1))
    _state = _WorkerState(detector=detector, info=info, max_pixels=spec.max_pixels,
                          barrier=barrier)
    log.info("worker %d warm on %s with %d threads in %.0f ms", index, device, spec.threads,
             warmup_ms)


def _current() -> _WorkerState:
    if _state is None:
        raise RuntimeError("worker.init has not run in this process")
    return _state


def _detector() -> Any:
    state = _current()
    if state.detector is None:
        raise RuntimeError(f"this worker has no model: {state.info.error}")
    return state.detector


def ping(timeout: float) -> WorkerInfo:
    """Report this worker (warm, or why not); block until every worker is inside ``ping``.

    The pool submits one ping per worker. A worker blocked in the barrier cannot take a
    second ping, so the pings complete only once ``max_workers`` distinct processes are
    running them, i.e. every worker has finished ``init`` (loaded and warm).
    """
    state = _current()
    state.barrier.wait(timeout)
    return state.info


def detect(data: bytes, conf_thres: float, iou_thres: float) -> DetectResult | DetectFailure:
    """Decode ``data``, run the model and return plain detection data."""
    from model.errors import ImageError, ImageTooLargeError
    from model.preprocess import decode_image

    state = _current()
    detector = _detector()
    try:
        image = decode_image(data, max_pixels=state.max_pixels)
    except ImageTooLargeError as exc:
        return DetectFailure("too_large", str(exc))
    except ImageError as exc:
        return DetectFailure("decode", str(exc))
    height, width = image.shape[:2]
    started = time.perf_counter()
    detections = detector.detect([image], conf_thres=conf_thres, iou_thres=iou_thres)[0]
    inference_ms = (time.perf_counter() - started) * 1000.0
    return DetectResult(width=int(width), height=int(height),
                        sha256=hashlib.sha256(data).hexdigest(),
                        inference_ms=round(inference_ms, 2), model=state.info.model,
                        detections=[_plain(d) for d in detections])


def _plain(detection: dict[str, Any]) -> dict[str, Any]:
    """Copy one detection into builtin types (no numpy scalars cross the process line)."""
    box = detection["box"]
    return {
        "label": str(detection["label"]),
        "class_id": int(detection["class_id"]),
        "confidence": float(detection["confidence"]),
        "box": {k: float(box[k]) for k in ("x1", "y1", "x2", "y2")},
    }


def torch_threads() -> int:
    """The torch intra-op thread count of this worker (a probe for tests)."""
    import torch

    return int(torch.get_num_threads())
