"""Darknet ``.cfg`` parsing, with Darknet's own rules (AlexeyAB/darknet ``parser.c``,
``option_list.c``, ``utils.c``).

Reading (``read_cfg``): lines are split at ``\\n``; spaces, tabs, ``\\r`` and ``\\n`` are
removed from each; an empty line or one starting with ``#`` or ``;`` is a comment; a line
starting with ``[`` opens a section whose type is the whole line, compared
case-sensitively (``[Gaussian_yolo]``, not ``[gaussian_yolo]``); anything else is
``key=value`` split at the first ``=`` (``read_option``).

Options (``option_find``) behave as in Darknet:

- a key set twice: the *first* value is used; the later line is reported (Darknet
  leaves it unused, and ``option_unused`` prints it);
- a key that Darknet does not read for that section type: reported as Darknet's
  "Unused field" and ignored (Darknet does not check ``[net]``; we report it there too);
- a line ending with ``=`` cannot be parsed: Darknet prints "Config file error" and
  drops it; a line without ``=`` sets the key to nothing, so Darknet uses the default;
  both are reported and handled the same way;
- numbers are read with C's ``atoi`` / ``atof``: leading white space, a sign and the
  longest number prefix; trailing text is ignored (``180###P6`` is 180) and no number at
  all is 0; lists are split at ``,`` exactly as Darknet's loops do.

Every report is a ``logging`` warning of this module naming the file, the line and the
key.  What is still an error (:class:`~model.errors.CfgError`): a section type Darknet
does not know, an option before any section, a first section that is not ``[net]``,
and - raised by the layer builders (:mod:`model.darknet`) - options Darknet reads and
that would change the computation but that this engine does not implement.
"""

from __future__ import annotations

import logging
import math
import re
import struct
from dataclasses import dataclass, field
from collections.abc import Iterable
from pathlib import Path

from model.errors import CfgError

logger = logging.getLogger(__name__)

# Read by parse_network_cfg_custom for every layer, whatever its type.
_COMMON = frozenset({
    "clip", "onlyforward", "dont_update", "burnin_update", "stopbackward", "train_only_bn",
    "dontload", "dontloadscales", "learning_rate",
})

# parse_net_options, always (plus parse_network_cfg_custom's show_receptive_field).
_NET = frozenset({
    "max_batches", "batch", "learning_rate", "learning_rate_min", "sgdr_cycle", "sgdr_mult",
    "momentum", "decay", "subdivisions", "time_steps", "track", "augment_speed",
    "sequential_subdivisions", "try_fix_nan", "weights_reject_freq", "equidistant_point",
    "badlabels_rejection_percentage", "num_sigmas_reject_badlabels", "ema_alpha",
    "use_cuda_graph", "loss_scale", "dynamic_minibatch", "optimized_memory",
    "workspace_size_limit_MB", "adam", "height", "width", "channels", "inputs", "max_crop",
    "min_crop", "flip", "blur", "gaussian_noise", "mixup", "cutmix", "mosaic", "letter_box",
    "mosaic_bound", "contrastive", "contrastive_jit_flip", "contrastive_color",
    "unsupervised", "label_smooth_eps", "resize_step", "attention", "adversarial_lr",
    "max_chart_loss", "angle", "aspect", "saturation", "exposure", "hue", "power", "policy",
    "burn_in", "show_receptive_field",
})
# [net] keys read only for some values of other keys (parse_net_options).
_NET_BY_POLICY = {
    "step": frozenset({"step", "scale"}),
    "steps": frozenset({"steps", "scales", "seq_scales"}),
    "sgdr": frozenset({"steps", "scales", "seq_scales"}),
    "exp": frozenset({"gamma"}),
    "sigmoid": frozenset({"gamma", "step"}),
}
_NET_ADAM = frozenset({"B1", "B2", "eps"})

_YOLO_COMMON = frozenset({
    "classes", "num", "mask", "max", "max_delta", "counters_per_class", "label_smooth_eps",
    "scale_x_y", "objectness_smooth", "iou_normalizer", "obj_normalizer", "cls_normalizer",
    "delta_normalizer", "iou_loss", "iou_thresh_kind", "beta_nms", "nms_kind", "jitter",
    "resize", "ignore_thresh", "truth_thresh", "iou_thresh", "random", "map", "anchors",
})

# The keys each parse_<type> function reads, by the type names used below.
_KNOWN_KEYS: dict[str, frozenset[str]] = {
    "net": _NET,
    "convolutional": _COMMON | {
        "filters", "groups", "size", "stride_x", "stride_y", "stride", "dilation",
        "antialiasing", "pad", "padding", "activation", "assisted_excitation", "share_index",
        "batch_normalize", "cbn", "binary", "xnor", "bin_output", "sway", "rotate",
        "stretch", "stretch_sway", "flipped", "dot", "angle", "grad_centr", "reverse",
        "coordconv", "stream", "wait_stream",
    },
    "maxpool": _COMMON | {
        "stride", "stride_x", "stride_y", "size", "padding", "maxpool_depth", "out_channels",
        "antialiasing", "maxpool_zero_nonmax",
    },
    "local_avgpool": _COMMON | {"stride", "stride_x", "stride_y", "size", "padding"},
    "avgpool": _COMMON,
    "upsample": _COMMON | {"stride", "scale"},
    "route": _COMMON | {"layers", "groups", "group_id", "stream", "wait_stream"},
    "shortcut": _COMMON | {"activation", "weights_type", "weights_normalization", "from"},
    "scale_channels": _COMMON | {"from", "scale_wh", "activation"},
    "sam": _COMMON | {"from", "activation"},
    "reorg": _COMMON | {"stride", "reverse"},
    "reorg3d": _COMMON | {"stride", "reverse"},
    "dropout": _COMMON | {"probability", "dropblock", "dropblock_size_rel",
                          "dropblock_size_abs"},
    "activation": _COMMON | {"activation"},
    "empty": _COMMON,
    "yolo": _COMMON | _YOLO_COMMON | {
        "show_details", "new_coords", "focal_loss", "track_history_size", "sim_thresh",
        "dets_for_track", "dets_for_show", "track_ciou_norm", "embedding_layer",
    },
    "gaussian_yolo": _COMMON | _YOLO_COMMON | {"uc_normalizer", "yolo_point"},
    "region": _COMMON | {
        "coords", "classes", "num", "max", "log", "sqrt", "softmax", "focal_loss", "jitter",
        "resize", "rescore", "thresh", "classfix", "absolute", "random", "coord_scale",
        "object_scale", "noobject_scale", "mask_scale", "class_scale", "bias_match", "tree",
        "map", "anchors",
    },
}

# Darknet's section spellings (string_to_layer_type, case-sensitive) -> our type names.
SECTION_TYPES = {
    "[net]": "net", "[network]": "net",
    "[convolutional]": "convolutional", "[conv]": "convolutional",
    "[maxpool]": "maxpool", "[max]": "maxpool",
    "[local_avgpool]": "local_avgpool", "[local_avg]": "local_avgpool",
    "[avgpool]": "avgpool", "[avg]": "avgpool",
    "[upsample]": "upsample", "[route]": "route", "[shortcut]": "shortcut",
    "[scale_channels]": "scale_channels", "[sam]": "sam",
    "[reorg]": "reorg", "[reorg3d]": "reorg3d",
    "[dropout]": "dropout", "[activation]": "activation",
    "[empty]": "empty", "[silence]": "empty",
    "[yolo]": "yolo", "[Gaussian_yolo]": "gaussian_yolo", "[region]": "region",
    # Known to Darknet, not built by this engine (model.darknet says why).
    "[crop]": "crop", "[cost]": "cost", "[detection]": "detection", "[local]": "local",
    "[crnn]": "crnn", "[gru]": "gru", "[lstm]": "lstm", "[conv_lstm]": "conv_lstm",
    "[history]": "history", "[rnn]": "rnn", "[connected]": "connected", "[conn]": "connected",
    "[lrn]": "normalization", "[normalization]": "normalization", "[batchnorm]": "batchnorm",
    "[softmax]": "softmax", "[soft]": "softmax", "[contrastive]": "contrastive",
    "[implicit]": "implicit",
}
_BY_LOWER = {name.lower(): name for name in SECTION_TYPES}

# C's isspace, which atoi/atof skip first.
_C_SPACE = " \t\n\v\f\r"
_ATOI = re.compile(r"[+-]?\d+")
_ATOF = re.compile(
    r"[+-]?(?:0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?"
    r"|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
    r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?"
    r"|[nN][aA][nN](?:\([0-9A-Za-z_]*\))?)")
# What Darknet's strip() removes from every line.
_STRIP = str.maketrans("", "", " \t\n\r")


def c_atoi(text: str) -> int:
    """C's ``atoi``: optional white space and sign, then the leading digits; else 0."""
    match = _ATOI.match(text.lstrip(_C_SPACE))
    return int(match.group()) if match else 0


def c_atof(text: str) -> float:
    """C's ``atof`` (``strtod``): the longest leading decimal, hex, inf or nan; else 0.0."""
    match = _ATOF.match(text.lstrip(_C_SPACE))
    if not match:
        return 0.0
    number = match.group()
    body = number.lstrip("+-")
    sign = -1.0 if number.startswith("-") else 1.0
    if body[:2] in ("0x", "0X"):
        mantissa, _, exponent = body[2:].lower().partition("p")
        if mantissa.startswith("."):
            mantissa = "0" + mantissa
        return sign * math.ldexp(float.fromhex("0x" + mantissa), int(exponent or 0))
    if body[:1] in "iInN":
        return sign * float("inf" if body[0] in "iI" else "nan")
    return sign * float(body)


def c_list(text: str, stop_at_hash: bool = False) -> list[str]:
    """The items Darknet's list loops read: one more than the commas (counted up to the
    first ``#`` when ``stop_at_hash``, as parse_yolo_mask does), each item the text up
    to the next comma, to be read with :func:`c_atoi` / :func:`c_atof`."""
    counted = text.split("#", 1)[0] if stop_at_hash else text
    return text.split(",")[:counted.count(",") + 1]


@dataclass
class Section:
    """One ``[type]`` block of a cfg file, with Darknet-style typed accessors.

    ``options`` holds each key's first value (None for a line without ``=``: unset);
    ``lines`` the line each key was first set on.
    """

    type: str
    path: str
    line: int
    options: dict[str, str | None] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    header: str = ""

    def _error(self, key: str | None, message: str) -> CfgError:
        line = self.lines.get(key, self.line) if key is not None else self.line
        return CfgError(f"{self.header or '[' + self.type + ']'} {message}", self.path, line,
                        key)

    def error(self, message: str, key: str | None = None) -> CfgError:
        """A :class:`CfgError` pointing at this section (or at one of its keys)."""
        return self._error(key, message)

    def warn(self, message: str, key: str | None = None) -> None:
        """Log a warning pointing at this section (or at one of its keys)."""
        line = self.lines.get(key, self.line) if key is not None else self.line
        where = f"{self.path}:{line}" + (f": key '{key}'" if key is not None else "")
        logger.warning("%s: %s %s", where, self.header or f"[{self.type}]", message)

    def has(self, key: str) -> bool:
        """Whether Darknet's option_find would return a value for ``key``."""
        return self.options.get(key) is not None

    def _raw(self, key: str, default: object) -> str | None:
        if not self.has(key):
            if default is None:
                raise self._error(key, "is required")
            return None
        return self.options[key]

    def get_str(self, key: str, default: str | None = None,
                choices: Iterable[str] | None = None) -> str:
        raw = self._raw(key, default)
        if raw is None:
            return default  # type: ignore[return-value]
        if choices is not None and raw not in set(choices):
            raise self._error(key, f"'{raw}' is not one of: {', '.join(sorted(choices))}")
        return raw

    def get_int(self, key: str, default: int | None = None, minimum: int | None = None) -> int:
        """The value as C's atoi reads it (``'3x'`` is 3, ``'x'`` is 0)."""
        raw = self._raw(key, default)
        value = default if raw is None else c_atoi(raw)
        if minimum is not None and value < minimum:  # type: ignore[operator]
            raise self._error(key, f"{value} is below the minimum {minimum}")
        return value  # type: ignore[return-value]

    def get_float(self, key: str, default: float | None = None) -> float:
        """The value as C's atof reads it, rounded to float32 as Darknet stores it."""
        raw = self._raw(key, default)
        if raw is None:
            return float(default)  # type: ignore[arg-type]
        return _float32(c_atof(raw))

    def get_ints(self, key: str, default: list[int] | None = None,
                 stop_at_hash: bool = False) -> list[int]:
        raw = self._raw(key, default)
        if raw is None:
            return list(default)  # type: ignore[arg-type]
        return [c_atoi(item) for item in c_list(raw, stop_at_hash)]

    def get_floats(self, key: str, stop_at_hash: bool = False) -> list[float]:
        raw = self._raw(key, None)
        return [_float32(c_atof(item)) for item in c_list(raw or "", stop_at_hash)]

    def require_default(self, key: str, allowed: object) -> None:
        """Refuse ``key`` unless it is absent or equal to ``allowed`` (an unimplemented option)."""
        if not self.has(key):
            return
        if isinstance(allowed, (int, float)):
            value: object = self.get_float(key)
        else:
            value = self.options[key]
        if value != allowed:
            raise self._error(key, f"'{self.options[key]}' is not supported by this engine "
                                   f"(only {allowed})")


def _float32(value: float) -> float:
    if not math.isfinite(value):
        return value
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def read_keys(section: Section) -> frozenset[str] | None:
    """The keys Darknet reads for ``section`` (None: a type this engine does not build)."""
    known = _KNOWN_KEYS.get(section.type)
    if known is None or section.type != "net":
        return known
    policy = section.options.get("policy") or "constant"
    extra = _NET_BY_POLICY.get(policy, frozenset())
    if section.has("adam") and c_atoi(section.options["adam"] or ""):
        extra = extra | _NET_ADAM
    return known | extra


def parse_cfg_text(text: str, path: str = "<cfg>") -> list[Section]:
    """Parse cfg text into sections (see the module docstring); the first must be ``[net]``.

    Problems Darknet tolerates are logged as warnings; what it does not is a CfgError.
    """
    sections: list[Section] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.translate(_STRIP)
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            name = SECTION_TYPES.get(line)
            if name is None:
                hint = _BY_LOWER.get(line.lower())
                reason = (f"is not a Darknet section (section names are case-sensitive: "
                          f"{hint})" if hint else "is not a Darknet section")
                raise CfgError(f"{line} {reason}", path, number)
            sections.append(Section(type=name, path=path, line=number, header=line))
            continue
        if not sections:
            raise CfgError(f"option '{line}' outside of any section", path, number)
        current = sections[-1]
        key, sep, value = line.partition("=")
        if sep and value == "":
            logger.warning("%s:%d: '%s' cannot be parsed (nothing after '='); Darknet "
                           "ignores the line", path, number, line)
            continue
        if key in current.options:
            first = current.lines[key]
            logger.warning("%s:%d: key '%s' is set again in %s (first on line %d); Darknet "
                           "uses the first value, '%s'", path, number, key, current.header,
                           first, current.options[key])
            continue
        if not sep:
            logger.warning("%s:%d: key '%s' has no '=': Darknet leaves it unset and uses "
                           "the default", path, number, key)
        current.options[key] = value if sep else None
        current.lines[key] = number
    if not sections:
        raise CfgError("no sections", path)
    if sections[0].type != "net":
        raise CfgError("the first section must be [net] or [network]", path, sections[0].line)
    for extra in sections[1:]:
        if extra.type == "net":
            raise CfgError(f"{extra.header} may appear only once, first", path, extra.line)
    if len(sections) == 1:
        raise CfgError("no layers after [net]", path)
    for section in sections:
        known = read_keys(section)
        if known is None:
            continue
        for key in section.options:
            if key not in known:
                logger.warning("%s:%d: key '%s': Darknet does not read it in %s and ignores "
                               "it (Darknet: Unused field)", path, section.lines[key], key,
                               section.header)
    return sections


def parse_cfg(path: str | Path) -> list[Section]:
    """Read and parse a Darknet cfg file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CfgError(f"cannot read cfg file: {exc.strerror or exc}", str(path)) from exc
    return parse_cfg_text(text, str(path))
