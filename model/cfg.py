"""Darknet ``.cfg`` parsing.

The reader follows Darknet's own rules: every whitespace character is removed from a
line, lines starting with ``#`` or ``;`` are comments, ``[name]`` opens a section and
``key=value`` sets an option of the current section.  Unlike Darknet, nothing is
silently ignored: an unknown section, an unknown key or a malformed value raises
:class:`~model.errors.CfgError` naming the file, the line and the key.

Options that only matter for training in Darknet (augmentation, loss settings,
learning-rate schedule, ...) are accepted and ignored, because they do not change what
the network computes at inference time.  Options that *would* change the computation
but that this engine does not implement are refused by the layer builders
(:mod:`model.darknet`) instead of being approximated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from model.errors import CfgError

# Options Darknet reads for every layer type (parse_network_cfg); none changes inference.
_COMMON = frozenset({
    "stopbackward", "dontload", "dontloadscales", "learning_rate", "onlyforward",
    "dont_update", "burnin_update", "train_only_bn", "smooth", "time_normalizer",
})

# [net] is mostly training hyper-parameters; only width, height and channels matter here.
_NET = frozenset({
    "batch", "subdivisions", "width", "height", "channels", "inputs", "max_crop", "min_crop",
    "momentum", "decay", "angle", "saturation", "exposure", "hue", "aspect", "flip", "blur",
    "gaussian_noise", "mosaic", "mosaic_bound", "cutmix", "mixup", "letter_box", "jitter",
    "learning_rate", "learning_rate_min", "burn_in", "power", "max_batches", "max_epochs",
    "policy", "steps", "scales", "step", "gamma", "sgdr_cycle", "sgdr_mult", "seq_scales",
    "num_steps", "time_steps", "track", "augment_speed", "sequential_subdivisions",
    "init_sequential_subdivisions", "try_fix_nan", "loss_scale", "dynamic_minibatch",
    "optimized_memory", "workspace_size_limit_mb", "adam", "b1", "b2", "eps",
    "label_smooth_eps", "resize_step", "attention", "adversarial_lr", "contrastive",
    "contrastive_jit_flip", "contrastive_color", "unsupervised", "max_chart_loss",
    "weights_reject_freq", "ema_alpha", "equidistant_point", "num_sigmas_reject_badlabels",
    "badlabels_rejection_percentage", "show_receptive_field", "rotate", "center", "random",
    "cudnn_half", "train_only_bn", "batch_norm_momentum",
})

_KNOWN_KEYS: dict[str, frozenset[str]] = {
    "net": _NET,
    "convolutional": _COMMON | {
        "filters", "size", "stride", "stride_x", "stride_y", "dilation", "pad", "padding",
        "groups", "activation", "batch_normalize", "antialiasing", "binary", "xnor",
        "bin_output", "sway", "rotate", "stretch", "stretch_sway", "share_index", "flipped",
        "dot", "deform", "assisted_excitation", "coordconv", "cbn", "angle", "grad_centr",
        "reverse",
    },
    "maxpool": _COMMON | {
        "size", "stride", "stride_x", "stride_y", "padding", "maxpool_depth", "out_channels",
        "antialiasing",
    },
    "avgpool": _COMMON,
    "upsample": _COMMON | {"stride", "scale"},
    "route": _COMMON | {"layers", "groups", "group_id"},
    "shortcut": _COMMON | {"from", "activation", "weights_type", "weights_normalization",
                           "alpha", "beta"},
    "scale_channels": _COMMON | {"from", "scale_wh", "activation"},
    "sam": _COMMON | {"from", "activation"},
    "reorg": _COMMON | {"stride", "reverse", "flatten", "extra"},
    "dropout": _COMMON | {"probability", "dropblock", "dropblock_size_rel",
                          "dropblock_size_abs"},
    "yolo": _COMMON | {
        "mask", "anchors", "classes", "num", "jitter", "ignore_thresh", "truth_thresh",
        "iou_thresh", "random", "scale_x_y", "new_coords", "iou_normalizer", "cls_normalizer",
        "obj_normalizer", "delta_normalizer", "iou_loss", "iou_thresh_kind", "beta_nms",
        "nms_kind", "max_delta", "counters_per_class", "label_smooth_eps", "resize", "max",
        "focal_loss", "objectness_smooth", "track_history_size", "sim_thresh",
        "dets_for_track", "dets_for_show", "track_ciou_norm", "embedding_layer", "map",
        "show_details",
    },
}

# Section spellings Darknet accepts, mapped to the names used above.
_ALIASES = {
    "network": "net", "conv": "convolutional", "max": "maxpool", "avg": "avgpool",
}

# Layer types Darknet knows but this engine does not build: named so the error is precise.
_KNOWN_UNSUPPORTED = frozenset({
    "region", "detection", "gaussian_yolo", "connected", "conn", "local", "crop", "cost",
    "activation", "crnn", "gru", "lstm", "conv_lstm", "history", "rnn", "local_avgpool",
    "local_avg", "reorg3d", "lrn", "normalization", "batchnorm", "soft", "softmax",
    "contrastive", "empty", "silence", "implicit_add", "implicit_mul", "deconvolutional",
    "deconv",
})

_SECTION = re.compile(r"^\[([^\]]*)\]$")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class Section:
    """One ``[type]`` block of a cfg file, with typed, validating accessors."""

    type: str
    path: str
    line: int
    options: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def _error(self, key: str | None, message: str) -> CfgError:
        line = self.lines.get(key, self.line) if key is not None else self.line
        return CfgError(f"[{self.type}] {message}", self.path, line, key)

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A :class:`CfgError` pointing at this section (or at one of its keys)."""
        return self._error(key, message)

    def has(self, key: str) -> bool:
        return key in self.options

    def get_str(self, key: str, default: str | None = None,
                choices: Iterable[str] | None = None) -> str:
        if key not in self.options:
            if default is None:
                raise self._error(key, "is required")
            return default
        value = self.options[key]
        if choices is not None and value not in set(choices):
            raise self._error(key, f"'{value}' is not one of: {', '.join(sorted(choices))}")
        return value

    def get_int(self, key: str, default: int | None = None, minimum: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise self._error(key, "is required")
            return default
        raw = self.options[key]
        if not _INT.match(raw):
            raise self._error(key, f"'{raw}' is not an integer")
        value = int(raw)
        if minimum is not None and value < minimum:
            raise self._error(key, f"{value} is below the minimum {minimum}")
        return value

    def get_float(self, key: str, default: float | None = None) -> float:
        if key not in self.options:
            if default is None:
                raise self._error(key, "is required")
            return default
        raw = self.options[key]
        if not _FLOAT.match(raw):
            raise self._error(key, f"'{raw}' is not a number")
        return float(raw)

    def get_ints(self, key: str, default: list[int] | None = None) -> list[int]:
        if key not in self.options:
            if default is None:
                raise self._error(key, "is required")
            return list(default)
        items = [item for item in self.options[key].split(",") if item != ""]
        bad = [item for item in items if not _INT.match(item)]
        if not items or bad:
            raise self._error(key, f"'{self.options[key]}' is not a comma-separated list of integers")
        return [int(item) for item in items]

    def get_floats(self, key: str) -> list[float]:
        if key not in self.options:
            raise self._error(key, "is required")
        items = [item for item in self.options[key].split(",") if item != ""]
        bad = [item for item in items if not _FLOAT.match(item)]
        if not items or bad:
            raise self._error(key, f"'{self.options[key]}' is not a comma-separated list of numbers")
        return [float(item) for item in items]

    def require_default(self, key: str, allowed: object) -> None:
        """Refuse ``key`` unless it is absent or equal to ``allowed`` (an unimplemented option)."""
        if key not in self.options:
            return
        value = self.get_float(key) if isinstance(allowed, (int, float)) else self.options[key]
        if value != allowed:
            raise self._error(key, f"'{self.options[key]}' is not supported by this engine "
                                   f"(only {allowed})")


def parse_cfg_text(text: str, path: str = "<cfg>") -> list[Section]:
    """Parse cfg text into sections; the first must be ``[net]``."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        header = _SECTION.match(line)
        if header:
            name = header.group(1).lower()
            name = _ALIASES.get(name, name)
            if name not in _KNOWN_KEYS:
                reason = ("is a Darknet layer this engine does not support"
                          if name in _KNOWN_UNSUPPORTED else "is not a Darknet section")
                raise CfgError(f"[{header.group(1)}] {reason}", path, number)
            sections.append(Section(type=name, path=path, line=number))
            continue
        if line[0] == "[":
            raise CfgError(f"malformed section header '{line}'", path, number)
        if not sections:
            raise CfgError(f"option '{line}' outside of any section", path, number)
        key, sep, value = line.partition("=")
        key = key.lower()
        current = sections[-1]
        if not sep or not key:
            raise CfgError(f"expected key=value, got '{line}'", path, number)
        if key not in _KNOWN_KEYS[current.type]:
            raise CfgError(f"unknown key in [{current.type}]", path, number, key)
        if value == "":
            raise CfgError("has an empty value", path, number, key)
        if key in current.options:
            raise CfgError(f"is set twice in [{current.type}] (first on line "
                           f"{current.lines[key]})", path, number, key)
        current.options[key] = value
        current.lines[key] = number
    if not sections:
        raise CfgError("no sections", path)
    if sections[0].type != "net":
        raise CfgError("the first section must be [net]", path, sections[0].line)
    for extra in sections[1:]:
        if extra.type == "net":
            raise CfgError("[net] may appear only once", path, extra.line)
    if len(sections) == 1:
        raise CfgError("no layers after [net]", path)
    return sections


def parse_cfg(path: str | Path) -> list[Section]:
    """Read and parse a Darknet cfg file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CfgError(f"cannot read cfg file: {exc.strerror or exc}", str(path)) from exc
    return parse_cfg_text(text, str(path))
