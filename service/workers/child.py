"""Code that runs inside the detection worker processes.

``pool.DetectorPool`` starts each worker with ``serve`` as the process target (spawn).
``serve`` ties the worker's life to its parent (Linux: ``PR_SET_PDEATHSIG``; elsewhere a
watchdog thread; everywhere: end of the pipe), ignores SIGINT and SIGTERM (the parent
owns shutdown), loads the model once and runs one warm-up forward pass (``init``),
reports ``("ready", WorkerInfo)`` and then answers one message at a time over its pipe
(the messages: :mod:`service.workers.protocol`). A detect message carries a batch of
``DetectJob`` (encoded image bytes and thresholds: the pool's dynamic batching) that runs
as one forward pass; it returns one ``DetectResult`` or ``DetectFailure`` per job. Bad
input never raises out of a job, so it cannot kill a worker, and spoils only its own job.

The one module-level variable, ``_state``, is this worker process's model and identity;
it is set once by ``init`` and never exists in the parent.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.workers.protocol import (
    DetectFailure,
    DetectJob,
    DetectResult,
    WorkerInfo,
    WorkerSpec,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_INTERVAL_S = 1.0


@dataclass
class _WorkerState:
    detector: Any
    info: WorkerInfo
    max_pixels: int


_state: _WorkerState | None = None


# ---------------------------------------------------------------- process life

def serve(spec: WorkerSpec, index: int, conn: Connection, parent_pid: int) -> None:
    """Process target: tie to the parent, load the model, then answer jobs until told
    to stop or until the parent is gone."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=spec.log_level,
        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s")
    info = init(spec, index)
    if not _send(conn, ("ready", info)):
        return
    job = spec.detect_fn or detect_batch
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died
            return
        if message[0] == "stop":
            return
        if not _send(conn, _answer(job, message)):
            return


def _answer(job: Callable[..., Any], message: tuple[Any, ...]) -> tuple[str, Any]:
    """Run one job message; an exception here is a bug, reported rather than fatal."""
    try:
        if message[0] == "detect":
            return "ok", job(*message[1:])
        if message[0] == "call":
            function, args = message[1], message[2]
            return "ok", function(*args)
        return "error", f"unknown message {message[0]!r}"
    except Exception as exc:  # noqa: BLE001 - reported to the parent (500), worker lives on
        log.exception("job failed")
        return "error", f"{type(exc).__name__}: {exc}"


def _send(conn: Connection, message: tuple[str, Any]) -> bool:
    try:
        conn.send(message)
    except OSError:  # the parent is gone
        return False
    return True


def die_with_parent(parent_pid: int) -> None:
    """Make sure this process ends when its parent does, however the parent ends.

    Linux: the kernel sends SIGKILL when the parent exits (``PR_SET_PDEATHSIG``).
    Elsewhere a daemon thread polls the parent pid. Either way, a parent that died
    before this ran is noticed at once.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog",
                         daemon=True).start()
    if os.getppid() != parent_pid:
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCHDOG_INTERVAL_S)
    os._exit(1)


def init(spec: WorkerSpec, index: int) -> WorkerInfo:
    """Load the model once and run one warm-up forward pass; sets ``_state``.

    A model that cannot be loaded does not raise: the error is reported in the returned
    :class:`WorkerInfo` and the parent stops this worker.
    """
    global _state
    started = time.perf_counter()
    try:
        import torch

        from model.inference import Detector, select_device

        torch.set_num_threads(spec.threads)
        device = str(select_device(spec.device, index))
        detector = Detector.load(spec.cfg, spec.weights, spec.names, img_size=spec.img_size,
                                 device=device, backend=spec.backend,
                                 onnx_cache_dir=spec.onnx_cache_dir, threads=spec.threads,
                                 precision=spec.precision)
        if spec.lone_threads > spec.threads:
            detector.enable_wide(spec.lone_threads)
        detector.warmup((1, spec.max_batch_size))
    except Exception as exc:  # noqa: BLE001 - reported to the parent in WorkerInfo.error
        log.exception("worker %d could not load the model", index)
        info = WorkerInfo(pid=os.getpid(), index=index, device=spec.device, threads=spec.threads,
                          model="", warmup_ms=0.0, error=f"{type(exc).__name__}: {exc}")
        _state = _WorkerState(detector=None, info=info, max_pixels=spec.max_pixels)
        return info
    warmup_ms = (time.perf_counter() - started) * 1000.0
    info = WorkerInfo(pid=os.getpid(), index=index, device=device, threads=spec.threads,
                      model=str(detector.model_name), warmup_ms=round(warmup_ms, 1),
                      backend=detector.backend, precision=detector.precision,
                      lone_threads=detector.wide_threads or 0)
    _state = _WorkerState(detector=detector, info=info, max_pixels=spec.max_pixels)
    log.info("worker %d warm on %s (%s) with %d threads in %.0f ms", index, device,
             detector.backend, spec.threads, warmup_ms)
    return info


# ---------------------------------------------------------------- jobs

def _current() -> _WorkerState:
    if _state is None:
        raise RuntimeError("child.init has not run in this process")
    return _state


def _detector() -> Any:
    state = _current()
    if state.detector is None:
        raise RuntimeError(f"this worker has no model: {state.info.error}")
    return state.detector


def detect_batch(jobs: Sequence[DetectJob],
                 lone: bool = False) -> list[DetectResult | DetectFailure]:
    """Decode every job's image and run the decodable ones through the model in one
    batch; one result (or failure, for an image that cannot be used) per job. ``lone``:
    no other worker is busy, so the forward pass may use every core (``lone_threads``)."""
    from model.errors import ImageError
    from model.preprocess import decode_for_network
    from model.tiles import parse_tiles

    state = _current()
    detector = _detector()
    answers: list[DetectResult | DetectFailure | None] = []
    decoded, settings, ready, decode_ms = [], [], [], []
    for job in jobs:
        started = time.perf_counter()
        try:
            tiles = parse_tiles(job.tiles)
            image = decode_for_network(job.data, state.max_pixels, detector.img_size, tiles)
        except ImageError as exc:
            answers.append(DetectFailure.of(exc))
            continue
        answers.append(None)
        decode_ms.append(round((time.perf_counter() - started) * 1000.0, 2))
        decoded.append(image)
        settings.append(tiles)
        ready.append(len(answers) - 1)
    if not decoded:
        return [a for a in answers if a is not None]
    started = time.perf_counter()
    wide = lone and detector.wide_threads is not None
    threads = detector.wide_threads if wide else state.info.threads
    asked = [jobs[i] for i in ready]
    found = detector.detect_decoded_tiled(
        decoded, settings, conf_thres=[job.conf_thres for job in asked],
        iou_thres=[job.iou_thres for job in asked], agnostic=[job.agnostic for job in asked],
        max_det=[job.max_det for job in asked], wide=wide)
    inference_ms = round((time.perf_counter() - started) * 1000.0, 2)
    for position, image, tiled, decode_time in zip(ready, decoded, found, decode_ms,
                                                   strict=True):
        answers[position] = DetectResult(
            width=image.width, height=image.height, inference_ms=inference_ms,
            model=state.info.model, detections=tiled.detections,
            batch_size=len(decoded), threads=threads, decode_ms=decode_time,
            passes=tiled.passes)
    return [a for a in answers if a is not None]


def torch_threads() -> int:
    """The torch intra-op thread count of this worker (a probe for tests)."""
    import torch

    return int(torch.get_num_threads())
