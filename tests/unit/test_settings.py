"""Configuration: loading, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from model import defaults
from settings import BASE_DIR, ConfigError, config_path, load_config, merge, parse_config
from tests.configs import load_test_config
from tests.paths import DATA_DIR

TEST_CONFIG = BASE_DIR / "config" / "test.yaml"
DATA = DATA_DIR
MODEL = {"models": {"service-6cls": {"weights": str(DATA / "service-6cls.cfg")}}}


def load(overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None):
    """config/test.yaml with an existing file as weights (validation checks existence)."""
    return load_config(TEST_CONFIG, env=env or {},
                       overrides=merge(MODEL, overrides or {}))


def test_default_config_shape() -> None:
    """config/config.yaml has every documented section and valid values (model files aside)."""
    raw = yaml.safe_load((BASE_DIR / "config" / "config.yaml").read_text())
    assert raw["postgres"]["embedded"] is True
    assert raw["postgres"]["data_dir"] == "var/pgdata"
    assert "model_path" not in raw["workers"]  # the models: section names the models
    assert list(raw["models"]) == ["traffic-lights"]
    assert {"cfg", "weights", "names"} <= set(raw["models"]["traffic-lights"])
    assert list(raw)[-1] == "models"  # last: make coco-model appends to it
    for key in ("max_workers", "device", "threads_per_worker", "img_size", "conf_thres",
                "iou_thres"):
        assert key in raw["workers"]
    for key in ("host", "port", "max_upload_mb", "max_pixels"):
        assert key in raw["server"]
    paths = {key: str(DATA / name) for key, name in
             (("names", "service-6cls.names"), ("weights", "service-6cls.cfg"),
              ("cfg", "service-6cls.cfg"))}
    config = load_config(BASE_DIR / "config" / "config.yaml", env={},
                         overrides={"models": {"traffic-lights": paths}})
    model = config.default_model
    assert (model.name, model.img_size, model.workers) == ("traffic-lights", 512, 2)
    assert model.agnostic_nms is True  # one box per light
    assert config.running_capacity == 2 * 4
    assert config.postgres.embedded
    assert config.postgres.data_dir == BASE_DIR / "var" / "pgdata"
    assert config.server.port == 8080
    assert config.server.max_upload_bytes == 20 * 1024 * 1024
    assert config.workers.device == "auto"
    assert config.workers.threads_per_worker is None
    # The throughput defaults chosen by measurement (README, Throughput).
    assert config.workers.backend == "auto"
    assert config.workers.onnx_cache_dir == BASE_DIR / "var" / "onnx"
    assert (config.workers.max_batch_size, config.workers.max_queue_delay_ms) == (4, 0.0)
    assert config.workers.running_capacity == 2 * 4
    assert config.workers.precision == "fp32" and model.precision == "fp32"


def test_test_config_loads_and_resolves_paths() -> None:
    config = load()
    assert [m.name for m in config.models] == ["service-6cls"]
    assert config.default_model.cfg == DATA / "service-6cls.cfg"
    assert config.default_model.names == DATA / "service-6cls.names"
    assert config.workers.max_workers == 1
    assert config.postgres.embedded is False
    assert config.postgres.connect_kwargs()["database"] == "postgres"
    assert config.source == TEST_CONFIG


def test_database_url_switches_to_external() -> None:
    url = "postgresql://app:secret@db.example:5433/history"
    config = load({"postgres": {"embedded": True}}, env={"DATABASE_URL": url})
    assert config.postgres.embedded is False
    assert config.postgres.connect_kwargs() == {"dsn": url}


def test_database_url_must_be_postgres() -> None:
    with pytest.raises(ConfigError, match="^DATABASE_URL: must be a postgresql:// URL"):
        load(env={"DATABASE_URL": "mysql://x@y/z"})


def test_config_path_from_environment(tmp_path: Path) -> None:
    target = tmp_path / "other.yaml"
    assert config_path(None, {"YOLO_CONFIG": str(target)}) == target
    assert config_path("explicit.yaml", {"YOLO_CONFIG": str(target)}) == Path.cwd() / "explicit.yaml"
    assert config_path(None, {}) == BASE_DIR / "config" / "config.yaml"


def test_yolo_config_env_is_read(tmp_path: Path) -> None:
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    raw["server"]["port"] = 9123
    raw["models"]["service-6cls"]["weights"] = str(DATA / "service-6cls.cfg")
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(env={"YOLO_CONFIG": str(path)})
    assert config.server.port == 9123
    assert config.source == path


@pytest.mark.parametrize(("overrides", "message"), [
    ({"workers": {"max_workers": 0}}, "workers.max_workers: must be a positive integer"),
    ({"workers": {"max_workers": "two"}}, "workers.max_workers: must be a positive integer"),
    ({"workers": {"max_workers": True}}, "workers.max_workers: must be a positive integer"),
    ({"workers": {"device": "gpu"}}, "workers.device: must be auto, cpu or cuda:N"),
    ({"workers": {"threads_per_worker": -1}}, "workers.threads_per_worker: must be a positive"),
    ({"workers": {"img_size": 500}}, "workers.img_size: must be a multiple of 32"),
    ({"workers": {"conf_thres": 0}}, r"workers.conf_thres: must be in \(0.0, 1.0\]"),
    ({"workers": {"iou_thres": 1.5}}, r"workers.iou_thres: must be in \(0.0, 1.0\]"),
    ({"models": {"service-6cls": {"cfg": "nope/missing.cfg"}}},
     "models.service-6cls.cfg: file not found: .*nope/missing.cfg"),
    ({"models": {"service-6cls": {"names": None}}}, "models.service-6cls.names: is required"),
    ({"workers": {"batch": 4}}, "workers.batch: unknown key"),
    ({"workers": {"backend": "tensorrt"}}, "workers.backend: must be one of auto, torch, "),
    ({"workers": {"backend": "onnxruntime", "device": "cuda:0"}},
     "workers.backend: onnxruntime runs on the CPU only; device is cuda:0"),
    ({"workers": {"max_batch_size": 0}}, "workers.max_batch_size: must be a positive integer"),
    ({"workers": {"precision": "fp16"}}, "workers.precision: must be one of fp32, int8, got"),
    ({"workers": {"precision": "int8", "backend": "torch"}},
     "workers.precision: int8 runs on ONNX Runtime on the CPU only; workers.device is cpu, "
     "workers.backend torch"),
    ({"workers": {"precision": "int8", "device": "cuda:0"}},
     "workers.precision: int8 runs on ONNX Runtime on the CPU only; workers.device is cuda:0"),
    ({"workers": {"max_queue_delay_ms": -1}}, r"workers.max_queue_delay_ms: must be in \[0.0, "),
    ({"server": {"port": 70000}}, "server.port: must be an integer >= 0 and <= 65535"),
    ({"server": {"max_upload_mb": -1}}, "server.max_upload_mb: must be in"),
    ({"server": {"host": ""}}, "server.host: must be a non-empty string"),
    ({"postgres": {"maxsize": 0}}, "postgres.maxsize: must be a positive integer"),
    ({"postgres": {"minsize": 5, "maxsize": 2}}, "postgres.minsize: must not exceed"),
    ({"postgres": {"embedded": "yes"}}, "postgres.embedded: must be true or false"),
    ({"postgres": {"password": 1234}}, "postgres.password: must be a string"),
    ({"storage": {"store_images": 1}}, "storage.store_images: must be true or false"),
    ({"logging": {"level": "LOUD"}}, "logging.level: must be one of"),
    ({"workers": {"max_queue": -1}}, "workers.max_queue: must be an integer >= 0"),
    ({"workers": {"job_timeout": 0}}, r"workers.job_timeout: must be in \(0.0, inf\)"),
    ({"server": {"request_timeout": "soon"}}, "server.request_timeout: must be a number"),
    ({"postgres": {"write_timeout": -2}}, "postgres.write_timeout: must be in"),
    ({"storage": {"spool_max_mb": 0}}, "storage.spool_max_mb: must be in"),
    ({"auth": {"cookie_secure": "maybe"}}, "auth.cookie_secure: must be auto, true or false"),
    ({"auth": {"tokens_file": ""}}, "auth.tokens_file: must be a non-empty string"),
    ({"auth": {"token": "x"}}, "auth.token: unknown key"),
    ({"server": {"allowed_hosts": "a.example"}}, "server.allowed_hosts: must be a list"),
    ({"server": {"allowed_hosts": ["a b"]}}, "server.allowed_hosts: not a host name"),
    ({"server": {"max_connections": 0}}, "server.max_connections: must be a positive"),
    ({"server": {"anonymous_uploads": 0}}, "server.anonymous_uploads: must be a positive"),
    ({"server": {"max_receiving_mb": 0}}, "server.max_receiving_mb: must be in"),
    ({"auth": {"max_sessions_per_token": 0}}, "auth.max_sessions_per_token: must be a posit"),
    ({"serverr": {}}, "serverr: unknown key"),
    ({"server": "fast"}, "server: must be a mapping"),
])
def test_bad_values_name_the_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        load(overrides)


def test_reliability_settings_and_access_control_defaults() -> None:
    config = load()
    assert config.auth.tokens_file is None and not config.auth.enabled  # off by default
    assert config.auth.cookie_secure is None
    assert config.workers.max_queue == 8 and config.workers.job_timeout == 60
    assert config.storage.spool_dir.is_absolute()
    on = load({"auth": {"tokens_file": "var/tokens.json", "cookie_secure": True},
               "workers": {"max_queue": 0}})
    assert on.auth.enabled and on.auth.tokens_file == BASE_DIR / "var" / "tokens.json"
    assert on.auth.cookie_secure is True and on.workers.max_queue == 0


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad, env={})
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listing, env={})


def _legacy(**paths: str) -> dict[str, Any]:
    """config/test.yaml in the older one-model form, ``workers.model_path``."""
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    del raw["models"]
    raw["workers"]["model_path"] = {"cfg": str(DATA / "service-6cls.cfg"),
                                    "weights": str(DATA / "service-6cls.cfg"),
                                    "data": str(DATA / "service-6cls.names"), **paths}
    return raw


def test_model_path_is_read_as_the_models_entry_it_stands_for() -> None:
    """One reader: the older form becomes a models: entry (named after its cfg), so the
    config has one shape whichever form the file has."""
    legacy = parse_config(_legacy())
    documented = load()
    assert legacy.models == documented.models
    assert legacy.workers == documented.workers
    assert not hasattr(legacy.workers, "model_path")


@pytest.mark.parametrize(("paths", "message"), [
    ({"cfg": "nope/missing.cfg"}, "^workers.model_path.cfg: file not found: .*nope/missing.cfg"),
    ({"data": None}, "^workers.model_path.data: is required"),
    ({"names": "x"}, "^workers.model_path.names: unknown key"),
])
def test_model_path_errors_name_its_keys(paths: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(_legacy(**paths))


def test_model_path_beside_models_is_refused_with_the_replacement() -> None:
    raw = _legacy()
    raw["models"] = {"a": {"cfg": str(DATA / "tiny.cfg"), "weights": str(DATA / "tiny.cfg"),
                           "names": str(DATA / "tiny.names")}}
    with pytest.raises(ConfigError, match="^workers.model_path: remove it: the models are "
                                          "listed under models:"):
        parse_config(raw)


def test_a_config_without_models_names_the_section() -> None:
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    del raw["models"]
    with pytest.raises(ConfigError, match="^models: is required"):
        parse_config(raw)


def test_detection_defaults_are_the_engines() -> None:
    """One set of defaults (model/defaults.py), which python -m model.detect uses too."""
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    for key in ("img_size", "conf_thres", "iou_thres", "agnostic_nms", "max_det"):
        raw["workers"].pop(key, None)
    raw["models"]["service-6cls"]["weights"] = str(DATA / "service-6cls.cfg")
    model = parse_config(raw).default_model
    assert (model.img_size, model.conf_thres, model.iou_thres, model.agnostic_nms,
            model.max_det) == (defaults.IMG_SIZE, defaults.CONF_THRES, defaults.IOU_THRES,
                               defaults.AGNOSTIC_NMS, defaults.MAX_DET)


def test_precision_is_per_model_with_the_workers_default() -> None:
    entry = {"cfg": str(DATA / "tiny.cfg"), "weights": str(DATA / "tiny.cfg"),
             "names": str(DATA / "tiny.names")}
    config = load_test_config({"workers": {"backend": "auto", "precision": "int8"}},
                              models={"a": entry, "b": {**entry, "precision": "FP32"}})
    assert config.workers.precision == "int8"
    assert (config.model("a").precision, config.model("b").precision) == ("int8", "fp32")
    with pytest.raises(ConfigError, match="^models.b.precision: int8 runs on ONNX Runtime"):
        load_test_config({"workers": {"backend": "torch"}},
                         models={"a": entry, "b": {**entry, "precision": "int8"}})


def test_tiles_are_per_model_and_read_as_yaml_writes_them() -> None:
    entry = {"cfg": str(DATA / "tiny.cfg"), "weights": str(DATA / "tiny.cfg"),
             "names": str(DATA / "tiny.names")}
    text = """
a: {tiles: auto}
b: {tiles: off}
c: {tiles: {size: 640, overlap: 0.25}}
d: {tiles: "800:0.1"}
e: {}
"""
    tiles = yaml.safe_load(text)
    config = load_test_config(models={name: {**entry, **extra} for name, extra in tiles.items()})
    assert [str(config.model(name).tiles) for name in "abcde"] == \
        ["auto", "off", "640:0.25", "800:0.1", "off"]
    with pytest.raises(ConfigError, match="^models.a.tiles: "):
        load_test_config(models={"a": {**entry, "tiles": "sometimes"}})
    shipped = load_config(BASE_DIR / "config" / "config.yaml", env={})
    assert str(shipped.default_model.tiles) in ("off", "auto")
