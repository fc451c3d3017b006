"""Service configuration: one YAML file, validated once at start-up.

``load_config`` reads the YAML (path from the argument, else ``$YOLO_CONFIG``, else
``config/config.yaml``), applies environment overrides (``DATABASE_URL``), checks
every value and returns a frozen :class:`Config`. A bad value raises
:class:`ConfigError` whose message starts with the dotted key, e.g.
``workers.max_workers: must be a positive integer``.
Relative paths are resolved against the project root, ``BASE_DIR``.

Models: the ``models:`` mapping (name -> cfg, weights, names, thresholds, workers), the
one marked ``default: true`` (else the first) being the default. The older one-model
form ``workers.model_path: {cfg, weights, data}`` is translated into a ``models:`` entry
(named after its cfg file) by :func:`translate_model_path`, the one place that knows it.
The detection defaults (input size, thresholds, NMS) are the engine's
(:mod:`model.defaults`), which ``python -m model.detect`` uses too.
"""

from __future__ import annotations

import copy
import os
import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from model import defaults
from model.tiles import OFF, TileSetting, parse_tiles
from utils.event_loop import EVENT_LOOPS, uvloop_available

BASE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG_PATH = BASE_DIR / "config" / "config.yaml"
CONFIG_ENV = "YOLO_CONFIG"
DATABASE_URL_ENV = "DATABASE_URL"

DEVICE_CHOICES = ("auto", "cpu")
BACKEND_CHOICES = ("auto", "torch", "onnxruntime")
PRECISION_CHOICES = ("fp32", "int8")  # int8: ONNX Runtime on a quantized export (CPU)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_MODEL_NAMES = frozenset({"list"})  # DeepStack's custom/list lists the models


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    event_loop: str  # utils.event_loop.EVENT_LOOPS
    max_upload_mb: float
    max_pixels: int
    max_files: int
    shutdown_timeout: float
    request_timeout: float
    upload_grace: float
    upload_min_rate_kb: float
    max_uploads: int
    idle_timeout: float
    allowed_hosts: tuple[str, ...] = ()  # empty: the hosts the service was started for
    anonymous_uploads: int = 8  # bodies read at once for callers with no header credential
    max_receiving_mb: float = 256.0  # request bodies in transit, together
    max_connections: int = 1024  # open connections at once; more are refused at once
    public_url: str | None = None  # how others reach this service (event payloads' links)

    @property
    def base_url(self) -> str:
        """``public_url``, else http://host:port (a wildcard host as 127.0.0.1)."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_receiving_bytes(self) -> int:
        return int(self.max_receiving_mb * 1024 * 1024)

    @property
    def upload_min_rate(self) -> float:
        """Bytes per second a request body must average once ``upload_grace`` is over."""
        return self.upload_min_rate_kb * 1024.0


@dataclass(frozen=True)
class PostgresConfig:
    embedded: bool
    data_dir: Path
    dsn: str | None
    database: str
    user: str
    password: str | None
    host: str
    port: int
    minsize: int
    maxsize: int
    group_commit: bool
    close_timeout: float
    write_timeout: float

    def connect_kwargs(self) -> dict[str, Any]:
        """asyncpg connection arguments for an external server."""
        if self.dsn is not None:
            return {"dsn": self.dsn}
        return {"database": self.database, "user": self.user, "password": self.password,
                "host": self.host, "port": self.port}


@dataclass(frozen=True)
class ModelConfig:
    """One model the service serves, with its own warm workers."""

    name: str
    cfg: Path
    weights: Path
    names: Path
    img_size: int
    conf_thres: float  # defaults of requests that do not ask
    iou_thres: float
    agnostic_nms: bool  # NMS across classes: one box per object, whatever its class
    max_det: int  # detections per image at most
    workers: int  # worker processes
    precision: str = "fp32"  # fp32 | int8 (see model.quantize)
    tiles: TileSetting = OFF  # the whole photo plus overlapping windows (model.tiles)


@dataclass(frozen=True)
class WorkersConfig:
    """How model workers run; ``max_workers``, ``img_size`` and the thresholds are also
    the defaults of every model under ``models:``."""

    max_workers: int
    device: str
    threads_per_worker: int | None
    img_size: int
    conf_thres: float
    iou_thres: float
    warmup_timeout: float
    max_queue: int
    job_timeout: float
    backend: str  # auto | torch | onnxruntime (see model.inference.select_backend)
    onnx_cache_dir: Path  # ONNX exports, reused across restarts
    max_batch_size: int  # images one worker runs in one forward pass
    max_queue_delay_ms: float  # how long the first job of a batch may wait for more
    agnostic_nms: bool = defaults.AGNOSTIC_NMS
    max_det: int = defaults.MAX_DET
    precision: str = "fp32"  # fp32 | int8: the default of every model

    @property
    def running_capacity(self) -> int:
        """Images the workers can have in hand at once (every worker a full batch)."""
        return self.max_workers * self.max_batch_size


@dataclass(frozen=True)
class StorageConfig:
    store_images: bool
    spool_dir: Path
    spool_max_mb: float
    spool_reserve_mb: float = 64.0  # free space on the spool's disk that it leaves alone
    models_dir: Path = BASE_DIR / "var" / "models" / "managed"  # PUT /api/models/{name}
    max_model_mb: float = 1024.0  # the files of one PUT /api/models/{name}, in all

    @property
    def spool_max_bytes(self) -> int:
        return int(self.spool_max_mb * 1024 * 1024)

    @property
    def max_model_bytes(self) -> int:
        return int(self.max_model_mb * 1024 * 1024)

    @property
    def spool_reserve_bytes(self) -> int:
        return int(self.spool_reserve_mb * 1024 * 1024)


@dataclass(frozen=True)
class AuthConfig:
    tokens_file: Path | None  # None: access control off
    session_hours: float
    cookie_secure: bool | None  # None: Secure on HTTPS requests only
    max_sessions_per_token: int = 32  # signing in once more ends that token's oldest session

    @property
    def enabled(self) -> bool:
        return self.tokens_file is not None


@dataclass(frozen=True)
class MqttConfig:
    """The MQTT broker that event rules with ``mqtt:`` publish to."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    topic_prefix: str  # the availability topic is {topic_prefix}/status (retained)
    discovery: bool  # Home Assistant MQTT discovery
    discovery_prefix: str


EVENT_TOPIC_FIELDS = frozenset({"model", "label", "source", "event"})
DEFAULT_EVENT_TOPIC = "yolo/{model}/{label}"


@dataclass(frozen=True)
class EventRule:
    """One ``events:`` entry: which records (filters) go where (a webhook or an MQTT
    topic template). Empty ``labels``/``models``: any."""

    name: str
    webhook: str | None
    mqtt: str | None  # topic template: {model}, {label}, {source}, {event}
    secret: str | None  # the webhook's HMAC-SHA256 key
    labels: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    min_confidence: float = 0.0
    changes_only: bool = False
    max_attempts: int = 20  # tries before an event is set aside as dead
    timeout: float = 10.0  # seconds per try
    max_backoff: float = 60.0  # longest wait between tries

    def to_json(self, *, with_secret: bool = False) -> dict[str, Any]:
        """The rule as the API shows it (the secret only as whether there is one)."""
        data: dict[str, Any] = {
            "labels": list(self.labels), "models": list(self.models),
            "min_confidence": self.min_confidence, "changes_only": self.changes_only,
            "max_attempts": self.max_attempts, "timeout": self.timeout,
            "max_backoff": self.max_backoff}
        if self.webhook is not None:
            data["webhook"] = self.webhook
        if self.mqtt is not None:
            data["mqtt"] = self.mqtt
        if with_secret:
            data["secret"] = self.secret
        else:
            data["has_secret"] = self.secret is not None
        return data


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    postgres: PostgresConfig
    workers: WorkersConfig
    storage: StorageConfig
    auth: AuthConfig
    log_level: str
    models: tuple[ModelConfig, ...]  # the default first; never empty
    source: Path | None = None
    mqtt: MqttConfig | None = None  # None: no broker
    events: tuple[EventRule, ...] = ()  # the rules of the config file

    @property
    def default_model(self) -> ModelConfig:
        return self.models[0]

    def model(self, name: str | None) -> ModelConfig:
        """The model called ``name`` (the default for None); KeyError if there is none."""
        if name is None:
            return self.default_model
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    @property
    def running_capacity(self) -> int:
        """Images every model's workers can have in hand at once (full batches)."""
        return sum(m.workers for m in self.models) * self.workers.max_batch_size


# ---------------------------------------------------------------- value checks

class _Section:
    """Reads typed values from one mapping of the YAML, naming keys in errors."""

    def __init__(self, raw: Any, prefix: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(prefix, "must be a mapping")
        self.raw = raw
        self.prefix = prefix
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        self.used.add(name)
        if name not in self.raw or self.raw[name] is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return default
        return self.raw[name]

    def section(self, name: str) -> _Section:
        self.used.add(name)
        return _Section(self.raw.get(name), self.key(name))

    def integer(self, name: str, default: int | None = None, *, minimum: int = 1,
                maximum: int | None = None, required: bool = False) -> int:
        value = self.get(name, default, required=required)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
                or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" <= {maximum}"
            if minimum == 1:
                raise ConfigError(self.key(name), f"must be a positive integer{upper}, got {value!r}")
            upper = "" if maximum is None else f" and <= {maximum}"
            raise ConfigError(self.key(name), f"must be an integer >= {minimum}{upper}, got {value!r}")
        return value

    def optional_integer(self, name: str) -> int | None:
        if self.get(name) is None:
            return None
        return self.integer(name)

    def number(self, name: str, default: float, *, low: float = 0.0, high: float | None = None,
               low_inclusive: bool = False) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.key(name), f"must be a number, got {value!r}")
        too_low = value < low if low_inclusive else value <= low
        if too_low or (high is not None and value > high):
            bracket = "[" if low_inclusive else "("
            upper = "inf)" if high is None else f"{high}]"
            raise ConfigError(self.key(name), f"must be in {bracket}{low}, {upper}, got {value!r}")
        return float(value)

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(name, default, required=required)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.key(name), f"must be a non-empty string, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be true or false, got {value!r}")
        return value

    def path(self, name: str, default: str | None = None, *, must_exist: bool = False,
             required: bool = False) -> Path:
        value = self.string(name, default, required=required)
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = BASE_DIR / path
        if must_exist and not path.is_file():
            raise ConfigError(self.key(name), f"file not found: {path}")
        return path

    def check_unknown(self) -> None:
        for name in self.raw:
            if name not in self.used:
                raise ConfigError(self.key(str(name)), "unknown key")


def _device(section: _Section) -> str:
    value = section.string("device", "auto").strip().lower()
    if value in DEVICE_CHOICES:
        return value
    if value.startswith("cuda:") and value[5:].isdigit():
        return value
    raise ConfigError(section.key("device"), f"must be auto, cpu or cuda:N, got {value!r}")


def _event_loop(section: _Section) -> str:
    value = section.string("event_loop", "asyncio").strip().lower()
    if value not in EVENT_LOOPS:
        raise ConfigError(section.key("event_loop"),
                          f"must be one of {', '.join(EVENT_LOOPS)}, got {value!r}")
    if value == "uvloop" and not uvloop_available():
        raise ConfigError(section.key("event_loop"), "uvloop is not installed")
    return value


# ---------------------------------------------------------------- sections

def _server(raw: _Section) -> ServerConfig:
    s = raw.section("server")
    config = ServerConfig(
        host=s.string("host", "127.0.0.1"),
        port=s.integer("port", 8080, minimum=0, maximum=65535),
        event_loop=_event_loop(s),
        max_upload_mb=s.number("max_upload_mb", 20.0, high=4096.0),
        max_pixels=s.integer("max_pixels", 50_000_000),
        max_files=s.integer("max_files", 16, maximum=1000),
        shutdown_timeout=s.number("shutdown_timeout", 30.0),
        request_timeout=s.number("request_timeout", 30.0),
        upload_grace=s.number("upload_grace", 3.0),
        upload_min_rate_kb=s.number("upload_min_rate_kb", 16.0),
        max_uploads=s.integer("max_uploads", 64, maximum=100_000),
        idle_timeout=s.number("idle_timeout", 15.0),
        allowed_hosts=_hosts(s),
        anonymous_uploads=s.integer("anonymous_uploads", 8, maximum=100_000),
        max_receiving_mb=s.number("max_receiving_mb", 256.0, high=1 << 20),
        max_connections=s.integer("max_connections", 1024, maximum=1_000_000),
        public_url=_url(s, "public_url") if s.get("public_url") is not None else None,
    )
    s.check_unknown()
    return config


def _hosts(s: _Section) -> tuple[str, ...]:
    """``allowed_hosts``: host names (no port), ``[::1]`` or ``::1`` for IPv6, ``*`` for any;
    null or empty: the default, worked out at start-up (``service.web.origin``)."""
    value = s.get("allowed_hosts", [])
    if not isinstance(value, list) or not all(isinstance(h, str) and h.strip() for h in value):
        raise ConfigError(s.key("allowed_hosts"), f"must be a list of host names, got {value!r}")
    hosts = []
    for raw in value:
        host = raw.strip().lower()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if host != "*" and not re.fullmatch(r"[a-z0-9_.:-]+", host):
            raise ConfigError(s.key("allowed_hosts"), f"not a host name: {raw!r}")
        hosts.append(host)
    return tuple(hosts)


def _postgres(raw: _Section, env: Mapping[str, str]) -> PostgresConfig:
    s = raw.section("postgres")
    dsn = env.get(DATABASE_URL_ENV) or None
    if dsn is not None and urlsplit(dsn).scheme not in ("postgres", "postgresql"):
        raise ConfigError(DATABASE_URL_ENV, "must be a postgresql:// URL")
    embedded = s.boolean("embedded", False) and dsn is None
    config = PostgresConfig(
        embedded=embedded,
        data_dir=s.path("data_dir", "var/pgdata"),
        dsn=dsn,
        database=s.string("database", "postgres"),
        user=s.string("user", "postgres"),
        password=s.get("password"),
        host=s.string("host", "127.0.0.1"),
        port=s.integer("port", 5432, maximum=65535),
        minsize=s.integer("minsize", 1, minimum=0),
        maxsize=s.integer("maxsize", 10),
        group_commit=s.boolean("group_commit", True),
        close_timeout=s.number("close_timeout", 10.0),
        write_timeout=s.number("write_timeout", 5.0),
    )
    if config.password is not None and not isinstance(config.password, str):
        raise ConfigError(s.key("password"), "must be a string")
    if config.minsize > config.maxsize:
        raise ConfigError(s.key("minsize"), f"must not exceed postgres.maxsize ({config.maxsize})")
    s.check_unknown()
    return config


def _img_size(s: _Section, default: int) -> int:
    img_size = s.integer("img_size", default)
    if img_size % 32:
        raise ConfigError(s.key("img_size"), f"must be a multiple of 32, got {img_size}")
    return img_size


def _workers(raw: _Section) -> WorkersConfig:
    s = raw.section("workers")
    s.get("model_path")  # translated into models: before (translate_model_path)
    img_size = _img_size(s, defaults.IMG_SIZE)
    device = _device(s)
    config = WorkersConfig(
        max_workers=s.integer("max_workers", 1, maximum=256),
        device=device,
        threads_per_worker=s.optional_integer("threads_per_worker"),
        img_size=img_size,
        conf_thres=s.number("conf_thres", defaults.CONF_THRES, high=1.0),
        iou_thres=s.number("iou_thres", defaults.IOU_THRES, high=1.0),
        warmup_timeout=s.number("warmup_timeout", 300.0),
        max_queue=s.integer("max_queue", 8, minimum=0, maximum=100_000),
        job_timeout=s.number("job_timeout", 60.0),
        backend=_backend(s, device),
        onnx_cache_dir=s.path("onnx_cache_dir", "var/onnx"),
        max_batch_size=s.integer("max_batch_size", 1, maximum=256),
        max_queue_delay_ms=s.number("max_queue_delay_ms", 0.0, high=10_000.0,
                                    low_inclusive=True),
        agnostic_nms=s.boolean("agnostic_nms", defaults.AGNOSTIC_NMS),
        max_det=s.integer("max_det", defaults.MAX_DET, maximum=100_000),
        precision=_precision(s, "fp32", device, s.get("backend", "auto")),
    )
    s.check_unknown()
    return config


def _models(raw: _Section, workers: WorkersConfig) -> tuple[ModelConfig, ...]:
    """The ``models:`` mapping, default first."""
    if raw.get("models") is None:
        raise ConfigError("models", "is required: name -> {cfg, weights, names} "
                                    "(see config/config.yaml)")
    s = raw.section("models")
    if not s.raw:
        raise ConfigError(s.prefix, "must name at least one model")
    models, defaults = [], []
    for name in s.raw:
        model, default = parse_model(name, s.section(name) if isinstance(name, str) else None,
                                     workers, key=s.key(str(name)))
        if default:
            defaults.append(model)
        models.append(model)
    if len(defaults) > 1:
        raise ConfigError(s.prefix, "more than one model says default: true: "
                                    + ", ".join(m.name for m in defaults))
    if defaults:
        models.remove(defaults[0])
        models.insert(0, defaults[0])
    return tuple(models)


def form_value(text: str) -> Any:
    """A value typed in a form (``0.5``, ``true``, ``416``, ``auto``) as this config's YAML
    reads it; text YAML cannot read stays text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_model(name: Any, raw: Any, workers: WorkersConfig, *,
                key: str | None = None) -> tuple[ModelConfig, bool]:
    """One model's settings (a ``models:`` entry, or the form of ``PUT /api/models/{name}``
    as a mapping), checked as the config is; the model, and whether it says
    ``default: true``. A new model setting is one field of :class:`ModelConfig` and one
    line here."""
    prefix = key if key is not None else f"models.{name}"
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) \
            or name in RESERVED_MODEL_NAMES:
        raise ConfigError(prefix, "a model name is 1-64 letters, digits, '_', '.' or '-' "
                                  "(not 'list')")
    m = raw if isinstance(raw, _Section) else _Section(raw, prefix)
    model = ModelConfig(
        name=name, cfg=m.path("cfg", required=True, must_exist=True),
        weights=m.path("weights", required=True, must_exist=True),
        names=m.path("names", required=True, must_exist=True),
        img_size=_img_size(m, workers.img_size),
        conf_thres=m.number("conf_thres", workers.conf_thres, high=1.0),
        iou_thres=m.number("iou_thres", workers.iou_thres, high=1.0),
        agnostic_nms=m.boolean("agnostic_nms", workers.agnostic_nms),
        max_det=m.integer("max_det", workers.max_det, maximum=100_000),
        workers=m.integer("workers", workers.max_workers, maximum=256),
        precision=_precision(m, workers.precision, workers.device, workers.backend),
        tiles=_tiles(m))
    default = m.boolean("default", False)
    m.check_unknown()
    return model, default


def _backend(section: _Section, device: str) -> str:
    value = section.string("backend", "auto").strip().lower()
    if value not in BACKEND_CHOICES:
        raise ConfigError(section.key("backend"),
                          f"must be one of {', '.join(BACKEND_CHOICES)}, got {value!r}")
    if value == "onnxruntime" and device.startswith("cuda"):
        raise ConfigError(section.key("backend"),
                          f"onnxruntime runs on the CPU only; device is {device}")
    return value


def _tiles(section: _Section) -> TileSetting:
    """``tiles``: off (the default), auto or {size, overlap} (``SIZE:OVERLAP``). YAML reads
    a bare ``off`` as false: that is off too."""
    value = section.get("tiles")
    try:
        return parse_tiles("off" if value is False else value)
    except ValueError as exc:
        raise ConfigError(section.key("tiles"), str(exc)) from None


def _precision(section: _Section, default: str, device: str, backend: str) -> str:
    value = section.string("precision", default).strip().lower()
    if value not in PRECISION_CHOICES:
        raise ConfigError(section.key("precision"),
                          f"must be one of {', '.join(PRECISION_CHOICES)}, got {value!r}")
    if value == "int8" and (device.startswith("cuda") or str(backend).lower() == "torch"):
        raise ConfigError(section.key("precision"),
                          f"int8 runs on ONNX Runtime on the CPU only; workers.device is "
                          f"{device}, workers.backend {backend}")
    return value


def _storage(raw: _Section) -> StorageConfig:
    s = raw.section("storage")
    config = StorageConfig(store_images=s.boolean("store_images", True),
                           spool_dir=s.path("spool_dir", "var/spool"),
                           spool_max_mb=s.number("spool_max_mb", 1024.0),
                           spool_reserve_mb=s.number("spool_reserve_mb", 64.0, low_inclusive=True),
                           models_dir=s.path("models_dir", "var/models/managed"),
                           max_model_mb=s.number("max_model_mb", 1024.0, high=65536.0))
    s.check_unknown()
    return config


def _auth(raw: _Section) -> AuthConfig:
    s = raw.section("auth")
    tokens_file = s.path("tokens_file") if s.get("tokens_file") is not None else None
    secure = s.get("cookie_secure", "auto")
    if secure == "auto":
        secure = None
    elif not isinstance(secure, bool):
        raise ConfigError(s.key("cookie_secure"), f"must be auto, true or false, got {secure!r}")
    config = AuthConfig(tokens_file=tokens_file,
                        session_hours=s.number("session_hours", 12.0, high=24.0 * 365),
                        cookie_secure=secure,
                        max_sessions_per_token=s.integer("max_sessions_per_token", 32,
                                                         maximum=100_000))
    s.check_unknown()
    return config


def translate_model_path(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """The older one-model form, ``workers.model_path: {cfg, weights, data}``, as the
    ``models:`` entry it stands for (named after the cfg file; its settings come from
    ``workers:`` as for any entry). Refused beside a ``models:`` section. The files are
    checked here, so that an error names the key the file has."""
    if not isinstance(data, Mapping) or not isinstance(data.get("workers"), Mapping) \
            or data["workers"].get("model_path") is None:
        return data
    if data.get("models") is not None:
        raise ConfigError("workers.model_path", "remove it: the models are listed under "
                                                "models:")
    paths = _Section(data["workers"]["model_path"], "workers.model_path")
    entry = {"cfg": paths.path("cfg", required=True, must_exist=True),
             "weights": paths.path("weights", required=True, must_exist=True),
             "names": paths.path("data", required=True, must_exist=True)}
    paths.check_unknown()
    workers = {key: value for key, value in data["workers"].items() if key != "model_path"}
    return {**data, "workers": workers,
            "models": {entry["cfg"].stem: {key: str(path) for key, path in entry.items()}}}


def _url(s: _Section, name: str) -> str:
    value = s.string(name).strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(s.key(name), f"must be an http:// or https:// URL, got {value!r}")
    return value


def _mqtt(raw: _Section) -> MqttConfig | None:
    if raw.get("mqtt") is None:
        return None
    s = raw.section("mqtt")
    password = s.get("password")
    if password is not None and not isinstance(password, str):
        raise ConfigError(s.key("password"), "must be a string")
    config = MqttConfig(
        host=s.string("host", "127.0.0.1"), port=s.integer("port", 1883, maximum=65535),
        username=s.string("username") if s.get("username") is not None else None,
        password=password, tls=s.boolean("tls", False),
        topic_prefix=_topic(s, "topic_prefix", "yolo"),
        discovery=s.boolean("discovery", False),
        discovery_prefix=_topic(s, "discovery_prefix", "homeassistant"))
    s.check_unknown()
    return config


def _topic(s: _Section, name: str, default: str) -> str:
    value = s.string(name, default).strip()
    if any(ch in value for ch in "+#\0") or value.startswith("/") or value.endswith("/"):
        raise ConfigError(s.key(name), f"must be an MQTT topic without wildcards, got {value!r}")
    return value


def _strings(s: _Section, name: str) -> tuple[str, ...]:
    value = s.get(name, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(s.key(name), f"must be a list of non-empty strings, got {value!r}")
    return tuple(dict.fromkeys(v.strip() for v in value))


def _topic_template(s: _Section) -> str:
    value = s.get("mqtt")
    if value is True:
        return DEFAULT_EVENT_TOPIC
    template = s.string("mqtt").strip()
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template)
                  if field is not None}
    except ValueError as exc:
        raise ConfigError(s.key("mqtt"), f"not a topic template: {exc}") from None
    if not fields <= EVENT_TOPIC_FIELDS or any(ch in template for ch in "+#\0"):
        raise ConfigError(s.key("mqtt"), "a topic template: {model}, {label}, {source} and "
                                         f"{{event}} only, no wildcards; got {template!r}")
    return template


def parse_event_rule(name: Any, raw: Any, *, mqtt: MqttConfig | None,
                     models: Collection[str] | None = None,
                     prefix: str = "events") -> EventRule:
    """One event rule, checked (the config's ``events:`` and ``PUT /api/events/{name}``
    alike); raises ConfigError naming the key. ``models``: the names served, when known."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ConfigError(f"{prefix}.{name}", "an event name is 1-64 letters, digits, '_', "
                                              "'.' or '-'")
    s = _Section(raw, f"{prefix}.{name}")
    webhook = _url(s, "webhook") if s.get("webhook") is not None else None
    topic = _topic_template(s) if s.get("mqtt") not in (None, False) else None
    if (webhook is None) == (topic is None):
        raise ConfigError(s.prefix, "needs one target: webhook: URL or mqtt: TOPIC")
    if topic is not None and mqtt is None:
        raise ConfigError(s.key("mqtt"), "no broker: add the top-level mqtt: section")
    secret = s.string("secret") if s.get("secret") is not None else None
    if secret is not None and webhook is None:
        raise ConfigError(s.key("secret"), "signs webhooks only")
    rule = EventRule(
        name=name, webhook=webhook, mqtt=topic, secret=secret,
        labels=_strings(s, "labels"), models=_strings(s, "models"),
        min_confidence=s.number("min_confidence", 0.0, high=1.0, low_inclusive=True),
        changes_only=s.boolean("changes_only", False),
        max_attempts=s.integer("max_attempts", 20, maximum=1000),
        timeout=s.number("timeout", 10.0, high=300.0),
        max_backoff=s.number("max_backoff", 60.0, high=86400.0))
    unknown = [m for m in rule.models if models is not None and m not in models]
    if unknown:
        raise ConfigError(s.key("models"), f"no model named {', '.join(unknown)}; the models "
                                           f"are: {', '.join(models or ())}")
    s.check_unknown()
    return rule


def _events(raw: _Section, mqtt: MqttConfig | None,
            models: tuple[ModelConfig, ...]) -> tuple[EventRule, ...]:
    s = raw.section("events")
    names = [model.name for model in models]
    return tuple(parse_event_rule(name, s.get(name), mqtt=mqtt, models=names)
                 for name in s.raw)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (a deep copy): mappings merge, other values replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None,
                 source: Path | None = None) -> Config:
    """Validate an already-parsed YAML mapping; raise ConfigError naming the bad key."""
    env = {} if env is None else env
    root = _Section(translate_model_path(data), "")
    workers = _workers(root)
    mqtt = _mqtt(root)
    models = _models(root, workers)
    config = Config(
        server=_server(root),
        postgres=_postgres(root, env),
        workers=workers,
        storage=_storage(root),
        auth=_auth(root),
        log_level=_log_level(root),
        source=source,
        models=models,
        mqtt=mqtt,
        events=_events(root, mqtt, models),
    )
    root.check_unknown()
    return config


def _log_level(root: _Section) -> str:
    s = root.section("logging")
    level = s.string("level", "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(s.key("level"), f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    s.check_unknown()
    return level


def config_path(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None) -> Path:
    """The config file to read: the argument, else $YOLO_CONFIG, else config/config.yaml."""
    env = os.environ if env is None else env
    chosen = path if path is not None else env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH
    resolved = Path(chosen).expanduser()
    return resolved if resolved.is_absolute() else (Path.cwd() / resolved)


def load_config(path: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Read, override and validate the configuration file."""
    env = dict(os.environ) if env is None else dict(env)
    source = config_path(path, env)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {source}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{source}: invalid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{source}: the top level must be a mapping")
    if overrides:
        data = merge(data, overrides)
    return parse_config(data, env, source)
