"""Running a Darknet network on decoded images: device choice and the ``Detector``."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.darknet import Darknet
from model.detection import Detection
from model.errors import CfgError, ImageError, ModelError
from model.postprocess import non_max_suppression, scale_boxes
from model.preprocess import PAD_COLOR, DecodedImage, letterbox, to_tensor
from model.quantize import Calibration, check_precision
from model.tile_merge import merge
from model.tiles import OFF, TileSetting, Window, parse_tiles, plan_windows
from model.weights import load_weights

logger = logging.getLogger(__name__)

_CUDA_SPEC = re.compile(r"cuda(?::(\d+))?")
BACKENDS = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class TiledDetections:
    """One photo's merged detections (boxes in its pixels) and the forward passes taken."""

    detections: list[Detection]
    passes: int


def select_device(spec: str = "auto", index: int = 0) -> torch.device:
    """Turn a device spec into a ``torch.device``.

    ``"auto"``: ``cuda:{index % gpu_count}`` when GPUs exist, else the CPU (``index``
    spreads workers over GPUs); ``"cpu"``; ``"cuda"`` (like auto, but GPUs are required);
    ``"cuda:N"``. Raises ValueError for anything else or for a GPU that is not there.
    """
    spec = spec.strip().lower()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "auto":
        return torch.device(f"cuda:{index % gpus}") if gpus else torch.device("cpu")
    match = _CUDA_SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(f"unknown device '{spec}': use auto, cpu, cuda or cuda:N")
    if not gpus:
        raise ValueError(f"device '{spec}' requested but no CUDA GPU is available")
    number = index % gpus if match.group(1) is None else int(match.group(1))
    if number >= gpus:
        raise ValueError(f"device '{spec}' requested but only {gpus} CUDA GPU(s) exist")
    return torch.device(f"cuda:{number}")


def read_names(path: str | Path) -> list[str]:
    """Class names, one per non-empty line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read names file: {exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def select_backend(spec: str, device: torch.device) -> str:
    """Resolve a backend spec: ``"torch"``; ``"onnxruntime"`` (CPU only); ``"auto"``:
    ONNX Runtime on the CPU when it and the ONNX exporter's packages are installed, else
    PyTorch.  Raises ValueError for anything else or for ONNX Runtime on a GPU."""
    spec = spec.strip().lower()
    if spec not in BACKENDS:
        raise ValueError(f"unknown backend '{spec}': use {', '.join(BACKENDS)}")
    if spec == "auto":
        usable = all(importlib.util.find_spec(name) is not None
                     for name in ("onnxruntime", "onnx", "onnxscript"))
        return "onnxruntime" if device.type == "cpu" and usable else "torch"
    if spec == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"the onnxruntime backend runs on the CPU only, not {device}")
    return spec


def _build_network(cfg: Path, img_size: int) -> Darknet:
    """Build the network for ``img_size``, explaining a size the network cannot take."""
    try:
        return Darknet(cfg, img_size)
    except CfgError as exc:
        try:
            native = Darknet(cfg)  # at the cfg's own [net] size
        except CfgError:
            raise exc from None
        if img_size % native.max_stride:
            raise ModelError(f"img_size {img_size} must be a multiple of the network's "
                             f"largest stride, {native.max_stride}") from exc
        raise


def _per_image(value: float | Sequence[float], count: int, name: str,
               kind: type = float) -> list:
    if isinstance(value, (bool, int, float)):
        return [kind(value)] * count
    values = [kind(v) for v in value]
    if len(values) != count:
        raise ValueError(f"{name}: {len(values)} values for {count} images")
    return values


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run the block with torch on ``threads`` intra-op threads, then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Detector:
    """A loaded, fused network in eval mode plus the pipeline around it.

    Build one with :meth:`Detector.load`; :meth:`detect` takes decoded BGR images.
    """

    def __init__(self, model: Darknet, names: list[str], device: torch.device, img_size: int,
                 model_name: str,
                 runner: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None,
                 backend: str = "torch", precision: str = "fp32") -> None:
        if len(names) != model.num_classes:
            raise ModelError(f"{len(names)} class names for a network with "
                             f"{model.num_classes} classes")
        self.model = model
        # What runs the forward pass: the network itself or, e.g., an ONNX Runtime session.
        self.runner = runner if runner is not None else model
        self.backend = backend
        # fp32, or int8 (an ONNX Runtime graph quantized by model.quantize)
        self.precision = precision
        self.names = names
        self.device = device
        self.img_size = img_size
        self.model_name = model_name
        self.stride = model.max_stride
        # The torch backend on a GPU runs in half precision with channels-last tensors.
        self.half = backend == "torch" and device.type == "cuda"
        # More intra-op threads for a lone request (see enable_wide); None: not set up.
        self.wide_threads: int | None = None
        self._wide_runner: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None

    @classmethod
    def load(cls, cfg: str | Path, weights: str | Path | None, names: str | Path,
             img_size: int = 512, device: str = "auto", backend: str = "torch",
             onnx_cache_dir: str | Path | None = None, threads: int | None = None,
             precision: str = "fp32", calibration: Calibration | None = None) -> Detector:
        """Build the network from ``cfg``, load ``weights`` (random weights when None),
        fuse it and move it to ``device`` (see :func:`select_device`).

        ``backend`` (see :func:`select_backend`) picks what runs the forward pass; for
        ONNX Runtime the fused network is exported to ONNX (cached in ``onnx_cache_dir``
        when given, see :meth:`model.onnx_backend.OnnxRunner.from_darknet`) and run with
        ``threads`` intra-op threads (default: torch's thread count).

        ``precision="int8"`` runs ONNX Runtime on an int8 quantization of that export
        (:mod:`model.quantize`, calibrated on ``calibration``, by default samples of the
        generated training set), cached beside it; it needs the onnxruntime backend, so
        ``backend="auto"`` picks it and ``"torch"`` or a GPU is a ValueError.

        With ``backend="auto"``, a network that ONNX Runtime cannot take (an export or a
        session that fails) runs in PyTorch instead, with a warning; asked for by name,
        ``"onnxruntime"`` fails instead.

        Raises CfgError / WeightsError / ModelError for unusable files or settings and
        ValueError for a bad device or backend spec.
        """
        cfg, names_path = Path(cfg), Path(names)
        precision = check_precision(precision)
        torch_device = select_device(device)
        fallback = backend.strip().lower() == "auto"
        if precision == "int8":
            if torch_device.type != "cpu" or backend.strip().lower() == "torch":
                raise ValueError(f"precision int8 runs on ONNX Runtime on the CPU only, not "
                                 f"the {backend} backend on {torch_device}")
            backend, fallback = "onnxruntime", False
        backend = select_backend(backend, torch_device)
        class_names = read_names(names_path)
        model = _build_network(cfg, img_size)
        if len(class_names) != model.num_classes:
            raise ModelError(f"{names_path}: {len(class_names)} class names, but {cfg} has "
                             f"{model.num_classes} classes")
        if weights is None:
            logger.warning("no weights given for %s: the network has random weights", cfg)
            model_name = cfg.stem
        else:
            load_weights(model, weights)
            model_name = f"{cfg.stem}:{Path(weights).stem}"
        model.eval()
        model.fuse()
        model.to(torch_device)
        if backend == "torch" and torch_device.type == "cuda":
            # fp16 tensor cores, NHWC convolutions, cuDNN picks its fastest kernels for the
            # (fixed) input size on the first pass: the warm-up.
            model.half().to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        runner = None
        if backend == "onnxruntime":
            from model.onnx_backend import OnnxRunner  # optional dependency

            try:
                runner = OnnxRunner.from_darknet(model, (img_size, img_size), onnx_cache_dir,
                                                 threads, precision, calibration)
            except Exception as exc:  # noqa: BLE001 - any exporter/ORT failure: fall back
                if not fallback:
                    raise
                logger.warning("ONNX Runtime cannot run %s (%s: %s); using PyTorch", cfg.name,
                               type(exc).__name__, exc)
                backend = "torch"
        logger.info("loaded %s on %s at %d px (%d classes, %s backend, %s)", model_name,
                    torch_device, img_size, model.num_classes, backend, precision)
        return cls(model, class_names, torch_device, img_size, model_name, runner, backend,
                   precision)

    def enable_wide(self, threads: int) -> None:
        """Let ``detect(..., wide=True)`` run the forward pass on ``threads`` intra-op
        threads (on the CPU): a worker that is alone at work may use every core.

        ONNX Runtime fixes its thread count per session, so this opens a second session
        on the same exported graph; PyTorch changes its thread count for the call.
        """
        if self.device.type != "cpu" or threads < 1:
            return
        if self.backend == "onnxruntime":
            from model.onnx_backend import OnnxRunner

            graph = getattr(self.runner, "path", None)
            if graph is None or not Path(graph).is_file():
                logger.warning("no cached ONNX graph to open a %d-thread session on", threads)
                return
            self._wide_runner = OnnxRunner(graph, threads)
        else:
            self._wide_runner = self.runner
        self.wide_threads = threads

    def detect(self, images: Sequence[np.ndarray], conf_thres: float | Sequence[float] = 0.3,
               iou_thres: float | Sequence[float] = 0.6,
               agnostic: bool | Sequence[bool] = False, max_det: int | Sequence[int] = 300,
               wide: bool = False) -> list[list[Detection]]:
        """Detect objects in BGR ``uint8`` HxWx3 images (sizes may differ), in one batch.

        ``conf_thres``, ``iou_thres``, ``agnostic`` and ``max_det`` are one value for all
        images or one per image (a batch may join requests that asked for different
        settings).  ``agnostic``: NMS across classes (one box per object, whatever its
        class), else per class; ``max_det``: at most that many detections per image, the
        most confident.  ``wide`` runs the forward pass on the threads set by
        :meth:`enable_wide`, when it was called.

        Returns, per image, :class:`~model.detection.Detection` s sorted by confidence,
        each box in that image's pixels (clipped to it; boxes left empty by clipping, i.e.
        wholly in the letterbox padding, are dropped).
        """
        if len(images) == 0:
            return []
        confs, ious, agnostics, max_dets = self._settings(images, conf_thres, iou_thres,
                                                          agnostic, max_det)
        with self._light_threads():
            rows = self._rows(images, confs, ious, agnostics, wide)
        return [[Detection.from_row(row, self.names) for row in r[:n].tolist()]
                for r, n in zip(rows, max_dets, strict=True)]

    def detect_tiled(self, images: Sequence[np.ndarray],
                     tiles: object | Sequence[object] = OFF,
                     conf_thres: float | Sequence[float] = 0.3,
                     iou_thres: float | Sequence[float] = 0.6,
                     agnostic: bool | Sequence[bool] = False,
                     max_det: int | Sequence[int] = 300, wide: bool = False,
                     sizes: Sequence[tuple[int, int]] | None = None
                     ) -> list[TiledDetections]:
        """:meth:`detect` with tiles (:mod:`model.tiles`): each photo's windows (the whole
        photo first) are cut out, all windows of all photos run as one batch, and each
        photo's detections are merged. ``tiles``: one setting for all photos or one per
        photo (anything :func:`model.tiles.parse_tiles` reads). ``sizes``: the photos'
        original (width, height) when ``images`` were decoded at a reduced scale: windows
        are planned on the original size (``auto`` decides on it) and boxes stay in the
        pixels of ``images``. Returns per photo the merged detections and the number of
        forward passes; with ``tiles="off"`` the detections equal :meth:`detect`'s."""
        if len(images) == 0:
            return []
        confs, ious, agnostics, max_dets = self._settings(images, conf_thres, iou_thres,
                                                          agnostic, max_det)
        if isinstance(tiles, (str, TileSetting, Mapping)) or tiles is None:
            settings = [parse_tiles(tiles)] * len(images)
        else:
            settings = [parse_tiles(t) for t in tiles]
            if len(settings) != len(images):
                raise ValueError(f"tiles: {len(settings)} values for {len(images)} images")
        crops, owners, plans = [], [], []
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            ow, oh = sizes[i] if sizes is not None else (w, h)
            windows = [_scaled_window(win, w / ow, h / oh, w, h)
                       for win in plan_windows(ow, oh, self.img_size, settings[i])]
            plans.append(windows)
            for win in windows:
                crops.append(img if win.whole else img[win.y1:win.y2, win.x1:win.x2])
                owners.append(i)
        with self._light_threads():
            rows = self._rows(crops, [confs[i] for i in owners], [ious[i] for i in owners],
                              [agnostics[i] for i in owners], wide)
        out, k = [], 0
        for i, (img, windows) in enumerate(zip(images, plans, strict=True)):
            parts = []
            for win in windows:
                r = rows[k].numpy().astype(np.float64)
                r[:, [0, 2]] += win.x1
                r[:, [1, 3]] += win.y1
                parts.append(r)
                k += 1
            h, w = img.shape[:2]
            if len(windows) == 1:
                merged = parts[0][:max_dets[i]]
            else:
                merged = merge(parts, windows, w, h, self.img_size, ious[i], agnostics[i],
                               max_dets[i])
            out.append(TiledDetections(
                [Detection.from_row(row, self.names) for row in merged.tolist()],
                len(windows)))
        return out

    def _settings(self, images: Sequence[np.ndarray], conf_thres: float | Sequence[float],
                  iou_thres: float | Sequence[float], agnostic: bool | Sequence[bool],
                  max_det: int | Sequence[int]
                  ) -> tuple[list[float], list[float], list[bool], list[int]]:
        for position, img in enumerate(images):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
                raise ImageError(f"image {position}: expected a BGR uint8 HxWx3 array, got "
                                 f"{img.dtype} {img.shape}")
        confs = _per_image(conf_thres, len(images), "conf_thres")
        ious = _per_image(iou_thres, len(images), "iou_thres")
        agnostics = _per_image(agnostic, len(images), "agnostic", bool)
        max_dets = _per_image(max_det, len(images), "max_det", int)
        if min(max_dets) < 1:
            raise ValueError(f"max_det must be >= 1, got {min(max_dets)}")
        return confs, ious, agnostics, max_dets

    def _light_threads(self) -> contextlib.AbstractContextManager[None]:
        # Another runtime runs the forward pass: torch's part (tensors, NMS) is too small
        # to gain from threads, and its idle OpenMP threads spin against that runtime's.
        light = self.backend != "torch" and self.device.type == "cpu"
        return _torch_threads(1) if light else nullcontext()

    def _rows(self, images: Sequence[np.ndarray], confs: list[float], ious: list[float],
              agnostics: list[bool], wide: bool) -> list[torch.Tensor]:
        """Per image, the NMS rows (x1, y1, x2, y2, confidence, class; CPU) in its pixels,
        most confident first, without boxes that lie wholly in the letterbox padding."""
        boxed = [letterbox(img, self.img_size, stride=self.stride) for img in images]
        batch = to_tensor([b[0] for b in boxed]).to(self.device)
        if self.half:
            batch = batch.half().contiguous(memory_format=torch.channels_last)
        # NMS keeps every box: boxes that turn out to lie wholly in the letterbox padding
        # are dropped below, and only then are the first max_det kept.
        with torch.inference_mode():
            pred = self._forward(batch, wide)
            nms_det = max(int(pred.shape[1]), 1)
            settings = list(zip(confs, ious, agnostics, strict=True))
            if len(set(settings)) == 1:
                per_image = non_max_suppression(pred, *settings[0], max_det=nms_det)
            else:
                per_image = [non_max_suppression(pred[i:i + 1], *settings[i],
                                                 max_det=nms_det)[0]
                             for i in range(len(images))]
        results = []
        for img, (_, ratio, pad), dets in zip(images, boxed, per_image, strict=True):
            rows = scale_boxes(dets.cpu().float(), ratio, pad, img.shape[:2])
            # A box that lies wholly in the letterbox padding is empty once clipped.
            results.append(rows[(rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])])
        return results

    def _forward(self, batch: torch.Tensor, wide: bool) -> torch.Tensor:
        if not wide or self._wide_runner is None or self.wide_threads is None:
            return self.runner(batch)[0].float()
        if self._wide_runner is not self.runner:  # a session of its own
            return self._wide_runner(batch)[0].float()
        narrow = torch.get_num_threads()
        torch.set_num_threads(self.wide_threads)
        try:
            return self.runner(batch)[0].float()
        finally:
            torch.set_num_threads(narrow)

    def detect_decoded(self, decoded: Sequence[DecodedImage],
                       conf_thres: float | Sequence[float] = 0.3,
                       iou_thres: float | Sequence[float] = 0.6,
                       wide: bool = False, agnostic: bool | Sequence[bool] = False,
                       max_det: int | Sequence[int] = 300) -> list[list[Detection]]:
        """:meth:`detect` on images from :func:`model.preprocess.decode_for_network`
        (possibly decoded at a reduced scale); boxes in the original image's pixels."""
        found = self.detect([d.image for d in decoded], conf_thres, iou_thres,
                            agnostic=agnostic, max_det=max_det, wide=wide)
        return [[det.scaled(d.scale_x, d.scale_y, d.width, d.height) for det in dets]
                if (d.scale_x, d.scale_y) != (1, 1) else dets
                for d, dets in zip(decoded, found, strict=True)]

    def detect_decoded_tiled(self, decoded: Sequence[DecodedImage],
                             tiles: object | Sequence[object] = OFF,
                             conf_thres: float | Sequence[float] = 0.3,
                             iou_thres: float | Sequence[float] = 0.6, wide: bool = False,
                             agnostic: bool | Sequence[bool] = False,
                             max_det: int | Sequence[int] = 300) -> list[TiledDetections]:
        """:meth:`detect_tiled` on images from :func:`model.preprocess.decode_for_network`
        (decode them with the same ``tiles`` so that the windows keep their resolution);
        boxes in the original image's pixels."""
        found = self.detect_tiled([d.image for d in decoded], tiles, conf_thres, iou_thres,
                                  agnostic, max_det, wide, [(d.width, d.height) for d in decoded])
        return [TiledDetections([det.scaled(d.scale_x, d.scale_y, d.width, d.height)
                                 for det in t.detections]
                                if (d.scale_x, d.scale_y) != (1, 1) else t.detections, t.passes)
                for d, t in zip(decoded, found, strict=True)]

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Run the whole pipeline on blank images once per batch size (allocations, CUDA
        kernels, cuDNN's choice of algorithms for each input shape)."""
        blank = np.full((self.img_size, self.img_size, 3), PAD_COLOR, np.uint8)
        for size in dict.fromkeys(batch_sizes):
            self.detect([blank] * size)
            if self.wide_threads is not None:
                self.detect([blank] * size, wide=True)


def _scaled_window(win: Window, sx: float, sy: float, width: int, height: int) -> Window:
    """``win`` (original pixels) in the pixels of an image decoded at scales ``sx``, ``sy``."""
    if win.whole or (sx, sy) == (1, 1):
        return Window(0, 0, width, height, True) if win.whole else win
    return Window(int(win.x1 * sx), int(win.y1 * sy), min(width, round(win.x2 * sx)),
                  min(height, round(win.y2 * sy)))
