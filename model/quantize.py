"""int8 for the CPU: ONNX Runtime static quantization of our ONNX export.

:func:`quantize_onnx` turns an fp32 export (:mod:`model.onnx_backend`) into an int8 graph
with ``onnxruntime.quantization.quantize_static``: QDQ format, weights int8 per output
channel, activations uint8 per tensor (U8S8, ONNX Runtime's choice for x86 CPUs), their
ranges calibrated (min/max, averaged over the images) by running the fp32 graph on
calibration images.  The YOLO decode at the end of the graph (sigmoid, exp, the grid and
anchor arithmetic, the concatenation of boxes in pixels with scores in 0..1) stays fp32:
one 8-bit scale cannot hold both; so, by default, does the convolution before each head.  Darknet's -inf maxpool padding is rewritten first (:func:`edge_pool_padding`),
else the pooled tensors' ranges would be infinite.

The calibration images are the model's own training data by default (:class:`Calibration`:
samples of the generated training set, from the generator that ships in ``model/train``),
so calibration needs no data set on disk; real photos can be added.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.preprocess import letterbox, to_tensor

if TYPE_CHECKING:
    import onnx

# onnx and onnxruntime take seconds to import: only quantizing needs them (and the
# engine runs without them on the torch backend).

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
# Bump when the quantization recipe changes (it is part of the cache key).
QUANT_VERSION = "2"


@dataclass(frozen=True)
class Calibration:
    """The images an int8 graph is calibrated on.

    By default ``scenes`` samples of the generated training set that stage 2 of the
    default model's training drew from (seed 12, scenes of long side 256 scaled to the
    input, model/data/README.md): the model's own training data, made by the generator
    that ships in ``model/train``, so calibration needs nothing on disk.  Never the
    held-out set (seed 2026).  ``photos``: real photos to calibrate on as well.

    ``exclude_heads`` keeps the last convolution before each YOLO head in fp32: in 8 bits
    its box logits are too coarse (exp(tw) steps of several percent), and that cost 0.03
    AP@0.5 on real photos.  ``averaging``: each tensor's range is an exponential moving
    average (this weight for the newest) of the per-``batch`` minima and maxima instead of
    the extremes over every image, which a few outliers stretch (0.016 AP@0.5 on real
    photos); None for the extremes.  Measured in docs/model.md.
    """

    scenes: int = 96
    seed: int = 12
    scene_size: int = 256
    photos: tuple[Path, ...] = ()
    exclude_heads: bool = True
    batch: int = 1
    averaging: float | None = 0.1

    def images(self, img_size: int) -> Iterator[np.ndarray]:
        """The BGR uint8 calibration images: the photos, then the scenes."""
        yield from read_photos(self.photos)
        if self.scenes:
            from model.train.real import generated_sample  # only needed to calibrate

            for index in range(self.scenes):
                image, _ = generated_sample(self.seed, 0, index, img_size, self.scene_size,
                                            crops=None)
                yield image

    def key(self) -> str:
        """What the int8 graph depends on besides the fp32 graph, as text."""
        import onnxruntime as ort

        digest = hashlib.sha256()
        for path in self.photos:
            digest.update(Path(path).read_bytes())
        return (f"int8|v={QUANT_VERSION}|ort={ort.__version__}|scenes={self.scenes}|"
                f"seed={self.seed}|scene_size={self.scene_size}|"
                f"photos={digest.hexdigest() if self.photos else ''}|"
                f"exclude_heads={self.exclude_heads}|batch={self.batch}|"
                f"averaging={self.averaging}")


def read_photos(paths: Iterable[str | Path]) -> Iterator[np.ndarray]:
    """BGR images read from ``paths`` (unreadable files are skipped with a warning)."""
    import cv2

    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("calibration: %s is not a readable image, skipped", path)
            continue
        yield image


class _Batches:
    """Letterboxed calibration batches, as the service feeds the network: ONNX Runtime's
    ``CalibrationDataReader`` protocol (``get_next`` until None), with ``__len__`` and
    ``set_range`` so that ``CalibStridedMinMax`` takes the ranges one batch at a time
    (memory for one batch's activations, not every image's)."""

    def __init__(self, images: Iterable[np.ndarray], input_name: str,
                 img_size: tuple[int, int], stride: int, batch: int) -> None:
        boxed = [letterbox(image, img_size, stride=stride)[0] for image in images]
        self._batches = [boxed[i:i + batch] for i in range(0, len(boxed), batch)]
        self._input_name = input_name
        self.count = len(boxed)
        self._todo: Iterator[list[np.ndarray]] = iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._todo = iter(self._batches[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._todo, None)
        return None if chunk is None else {self._input_name: to_tensor(chunk).numpy()}


def edge_pool_padding(model: onnx.ModelProto) -> int:
    """Give every ``Pad`` that fills with -inf in front of max pools (Darknet's asymmetric
    maxpool padding) edge mode instead; returns how many were changed.

    The same maxima: each pooling window holds at least one real cell (no pad reaches a
    window's size), and an edge-padded cell repeats the outermost real cell, which is in
    that window too.  Calibrated, a -inf fill would make the pooled tensor's int8 range
    infinite; the edge fill keeps it to the values the network computes.
    """
    from onnx import helper, numpy_helper

    values = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Pad" or len(node.input) < 3 or node.input[2] not in values \
                or node.input[1] not in values:
            continue
        fill = numpy_helper.to_array(values[node.input[2]])
        pads = numpy_helper.to_array(values[node.input[1]])
        pools = consumers.get(node.output[0], [])
        if fill.size != 1 or not np.isneginf(fill).all() or not pools \
                or any(p.op_type != "MaxPool" for p in pools) or len(node.input) > 3:
            continue
        if pads.size != 8 or pads[:2].any() or pads[4:6].any():
            continue  # only H and W padded
        kernels = [helper.get_attribute_value(a) for p in pools for a in p.attribute
                   if a.name == "kernel_shape"]
        if len(kernels) != len(pools) or any(
                max(pads[2], pads[6]) >= k[0] or max(pads[3], pads[7]) >= k[1]
                for k in kernels):
            continue
        del node.input[2:]
        for attribute in node.attribute:
            if attribute.name == "mode":
                attribute.s = b"edge"
        changed += 1
    return changed


def head_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(decode, head convolutions) of an exported network: the nodes from which the graph's
    outputs are reached without passing a convolution, and the convolutions feeding them."""
    producer = {out: node for node in model.graph.node for out in node.output}
    decode: dict[str, None] = {}
    heads: dict[str, None] = {}
    todo = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            heads[node.name] = None
            continue
        decode[node.name] = None
        todo.extend(node.input)
    return list(decode), list(heads)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, img_size: tuple[int, int],
                  calibration: Calibration | None = None, stride: int = 32) -> Path:
    """Write the int8 (QDQ) version of the fp32 export ``fp32_path`` to ``out_path``,
    calibrated on ``calibration``'s images (default :class:`Calibration`), letterboxed to
    the graph's input ``img_size`` = (H, W) as the service feeds the network.  Written beside
    ``out_path`` and renamed into place.  Returns ``out_path``.

    Raises ValueError when there are no calibration images.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = calibration or Calibration()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantize-", dir=out_path.parent) as tmp:
        source = onnx.load(str(fp32_path))
        edge_pool_padding(source)
        padded, prepared = Path(tmp) / "padded.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(source, str(padded))
        # Shape inference and ORT's fusions first, as ORT recommends for quantization.
        quant_pre_process(str(padded), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        decode, heads = head_nodes(model)
        exclude = decode + (heads if calibration.exclude_heads else [])
        reader = _Batches(calibration.images(max(img_size)), model.graph.input[0].name,
                          img_size, stride, calibration.batch)
        if reader.count == 0:
            raise ValueError("no calibration images")
        result = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(result), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options=_calibration_options(calibration))
        os.replace(result, out_path)
    logger.info("quantized %s to int8 on %d calibration images (%d decode nodes%s in fp32): "
                "%s", fp32_path.name, reader.count, len(decode),
                f" + {len(heads)} head convolutions" if calibration.exclude_heads else "", out_path)
    return out_path


def _calibration_options(calibration: Calibration) -> dict[str, object]:
    # Ranges one batch at a time, merged: memory does not grow with the image count.
    options: dict[str, object] = {"CalibStridedMinMax": 1}
    if calibration.averaging is not None:
        options.update(CalibMovingAverage=True,
                       CalibMovingAverageConstant=calibration.averaging)
    return options


def check_precision(precision: str) -> str:
    """``precision`` normalised; ValueError when it is not one of :data:`PRECISIONS`."""
    value = precision.strip().lower()
    if value not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}")
    return value
