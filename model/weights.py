"""Loading and saving network weights: Darknet ``.weights`` and ultralytics-style ``.pt``.

Darknet binary layout: an int32 header (major, minor, revision), then ``seen`` (int64 when
``major * 10 + minor >= 2`` and both are below 1000, else int32), then float32 values for
each convolution in cfg order: biases, and when batch-normalised scales, rolling mean and
rolling variance, then the weights (out, in / groups, kh, kw).

PyTorch checkpoints are either a plain state dict or the ultralytics/yolov3 training
checkpoint ``{'epoch', 'best_fitness', 'training_results', 'model', 'optimizer'}``.  They are
read with ``torch.load(weights_only=True)`` plus an allow-list of the numpy types such
checkpoints hold, so a checkpoint that would run pickled code is refused, never executed.
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.darknet import BN_EPS_DARKNET, BN_EPS_PYTORCH, Darknet
from model.errors import WeightsError

log = logging.getLogger(__name__)

DARKNET_SUFFIXES = (".weights",)
TORCH_SUFFIXES = (".pt", ".pth")
_CHECKPOINT_KEYS = {"epoch", "best_fitness", "training_results", "model", "optimizer"}


def _conv_blocks(model: Darknet) -> list[tuple[int, nn.Sequential]]:
    if getattr(model, "fused", False):
        raise WeightsError("weights cannot be loaded into or saved from a fused network; "
                           "load/save first, then call fuse()")
    # A convolution with share_index has no values of its own in the file.
    return [(i, block) for i, block in enumerate(model.module_list)
            if isinstance(block, nn.Sequential) and hasattr(block, "Conv2d")
            and getattr(block, "share_index", None) is None]


def _conv_tensors(block: nn.Sequential) -> list[torch.Tensor]:
    """The tensors of one convolution block in Darknet's file order."""
    conv = block.Conv2d
    if hasattr(block, "BatchNorm2d"):
        bn = block.BatchNorm2d
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, conv.weight]
    return [conv.bias, conv.weight]


def _describe(model: Darknet, index: int) -> str:
    section = model.sections[index]
    return f"layer {index} [{section.type}] ({section.path}:{section.line})"


# -- Darknet binary -------------------------------------------------------------------------

def _read_darknet(model: Darknet, path: Path) -> None:
    data = path.read_bytes()
    if len(data) < 12:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a Darknet header")
    major, minor, _revision = np.frombuffer(data, dtype="<i4", count=3)
    wide_seen = (major * 10 + minor) >= 2 and major < 1000 and minor < 1000
    offset = 12 + (8 if wide_seen else 4)
    body = data[offset:]
    if len(body) % 4:
        raise WeightsError(f"{path}: body of {len(body)} bytes is not a whole number of floats")
    values = np.frombuffer(body, dtype="<f4")
    blocks = _conv_blocks(model)
    expected = sum(t.numel() for _, block in blocks for t in _conv_tensors(block))
    if values.size != expected:
        raise WeightsError(
            f"{path}: the cfg needs {expected} floats after the header, the file has "
            f"{values.size} ({'too short' if values.size < expected else 'too long'}; "
            f"header version {major}.{minor})")
    position = 0
    with torch.no_grad():
        for _, block in blocks:
            for tensor in _conv_tensors(block):
                chunk = values[position:position + tensor.numel()]
                tensor.copy_(torch.from_numpy(chunk.copy()).view_as(tensor))
                position += tensor.numel()
    model.set_bn_eps(BN_EPS_DARKNET)


def _write_darknet(model: Darknet, path: Path, seen: int = 0) -> None:
    with path.open("wb") as f:
        np.array([0, 2, 0], dtype="<i4").tofile(f)
        np.array([seen], dtype="<i8").tofile(f)
        for _, block in _conv_blocks(model):
            for tensor in _conv_tensors(block):
                tensor.detach().cpu().numpy().astype("<f4").tofile(f)


# -- PyTorch checkpoints --------------------------------------------------------------------

def _numpy_safe_globals() -> list[Any]:
    """The numpy objects an ultralytics checkpoint pickles (arrays and scalars), by both the
    numpy 1.x and 2.x module paths under which they may have been written."""
    from numpy import dtypes  # noqa: PLC0415 (numpy >= 1.25)

    core = np._core if hasattr(np, "_core") else np.core  # type: ignore[attr-defined]
    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        fn = getattr(core.multiarray, name)
        allowed += [(fn, f"numpy.core.multiarray.{name}"),
                    (fn, f"numpy._core.multiarray.{name}")]
    allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``.pt`` file without executing pickled code; returns the checkpoint dict.

    A plain state dict is returned as ``{'model': state_dict}``.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise WeightsError(
                f"{path}: refused: the checkpoint pickles '{found.group(1)}', code that would "
                "run on load; only tensors, numbers, strings and numpy arrays are accepted"
            ) from exc
        detail = re.search(r"WeightsUnpickler error: (.*)", str(exc))
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint"
                           f"{': ' + detail.group(1) if detail else ''}") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file surfaces as many types
        # (KeyError, RuntimeError, EOFError, BadZipFile, ...); weights_only=True means none
        # of them can come from code in the file.
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint: "
                           f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict, found {type(obj).__name__}")
    if "model" in obj:
        if not isinstance(obj["model"], dict):
            raise WeightsError(f"{path}: 'model' is a {type(obj['model']).__name__}, "
                               "expected a state dict")
        return obj
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": obj}
    raise WeightsError(f"{path}: neither a state dict nor a checkpoint with a 'model' entry "
                       f"(keys: {sorted(map(str, obj))[:8]})")


def _load_state_dict(model: Darknet, state: dict[str, torch.Tensor], path: Path) -> None:
    _conv_blocks(model)  # refuses a fused model
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"missing {len(missing)} (first: {missing[0]})")
        if unexpected:
            details.append(f"unexpected {len(unexpected)} (first: {unexpected[0]})")
        raise WeightsError(f"{path}: parameters do not match the cfg: {'; '.join(details)}")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise WeightsError(f"{path}: {key} is a {type(tensor).__name__}, not a tensor")
        if tensor.shape != own[key].shape:
            index = int(key.split(".")[1])
            raise WeightsError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, {_describe(model, index)} "
                f"needs {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=True)
    model.set_bn_eps(BN_EPS_PYTORCH)


# -- public API -----------------------------------------------------------------------------

def load_weights(model: Darknet, path: str | Path) -> None:
    """Load Darknet ``.weights`` or a PyTorch ``.pt``/``.pth`` checkpoint into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    suffix = path.suffix.lower()
    if suffix in DARKNET_SUFFIXES:
        _read_darknet(model, path)
    elif suffix in TORCH_SUFFIXES:
        _load_state_dict(model, read_checkpoint(path)["model"], path)
    else:
        raise WeightsError(f"{path}: unknown weights format '{suffix}' "
                           f"(expected {', '.join(DARKNET_SUFFIXES + TORCH_SUFFIXES)})")
    log.info("loaded weights %s into %s", path, model.cfg_path)


def save_weights(model: Darknet, path: str | Path, *, epoch: int = -1,
                 best_fitness: np.ndarray | None = None, training_results: str | None = None,
                 optimizer: dict[str, Any] | None = None, seen: int = 0) -> None:
    """Write ``model``'s weights as Darknet ``.weights`` or an ultralytics ``.pt`` checkpoint."""
    path = Path(path)
    suffix = path.suffix.lower()
    tmp = path.with_name(path.name + ".tmp")
    if suffix in DARKNET_SUFFIXES:
        _write_darknet(model, tmp, seen)
    elif suffix in TORCH_SUFFIXES:
        _conv_blocks(model)
        checkpoint = {
            "epoch": epoch,
            "best_fitness": best_fitness,
            "training_results": training_results,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer,
        }
        torch.save(checkpoint, tmp)
    else:
        raise WeightsError(f"{path}: unknown weights format '{suffix}'")
    tmp.replace(path)
