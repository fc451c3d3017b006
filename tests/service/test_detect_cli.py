"""``python -m service.detect_cli``: ``model.detect`` run with a model of the service's
config, read by the service's one reader (``settings.load_config``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.darknet import Darknet
from model.detect import parse_args, resolve_model
from model.inference import Detector
from model.preprocess import decode_for_network
from model.weights import save_weights
from service.detect_cli import main, model_settings
from settings import load_config
from tests.paths import DATA_DIR

CFG = DATA_DIR / "tiny.cfg"
NAMES = DATA_DIR / "tiny.names"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.weights"
    save_weights(Darknet(CFG, 64), path)
    return path


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "service.yaml"
    path.write_text(text)
    return path


def _jpeg(tmp_path: Path, size: tuple[int, int] = (300, 500)) -> Path:
    """A large-enough JPEG that the workers' decode takes the reduced-scale path."""
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 3)
    path = tmp_path / "photo.jpg"
    assert cv2.imwrite(str(path), img)
    return path


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_the_default_model_with_the_services_settings_decoded_as_the_workers(
        weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """models: mapping, the default: true entry (not the first), its own thresholds and
    the workers' ones for what it leaves out; paths relative to the project root."""
    config = _config(tmp_path, f"""
server:
  max_pixels: 1000000
workers:
  img_size: 64
  conf_thres: 0.9
  iou_thres: 0.5
  agnostic_nms: true
  max_det: 4
  device: cpu
  backend: torch
models:
  first:
    cfg: tests/data/service-6cls.cfg
    weights: tests/data/service-6cls.cfg
    names: tests/data/service-6cls.names
  tiny:
    default: true
    cfg: tests/data/tiny.cfg
    weights: {weights}
    names: tests/data/tiny.names
    conf_thres: 0.05
""")
    image = _jpeg(tmp_path)
    assert main(["--config", str(config), str(image)]) == 0
    record = json.loads(capsys.readouterr().out)

    detector = Detector.load(CFG, weights, NAMES, img_size=64, device="cpu")
    decoded = decode_for_network(image.read_bytes(), 1_000_000, 64)
    assert decoded.image.shape[:2] != (300, 500)  # the reduced-scale decode
    expected = detector.detect_decoded([decoded], conf_thres=0.05, iou_thres=0.5,
                                       agnostic=True, max_det=4)[0]
    assert (record["width"], record["height"]) == (500, 300)
    assert len(expected) == 4
    assert record["detections"] == [d.to_json() for d in expected]


def test_the_older_model_path_form_the_environment_and_flag_overrides(
        weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tmp_path, f"""
workers:
  img_size: 64
  conf_thres: 0.2
  device: cpu
  backend: torch
  model_path:
    cfg: tests/data/tiny.cfg
    weights: {weights}
    data: tests/data/tiny.names
""")
    monkeypatch.setenv("YOLO_CONFIG", str(config))
    model = model_settings(load_config())
    assert (model.name, model.cfg, model.names, model.weights) == ("tiny", CFG, NAMES, weights)
    # The service's defaults (model/defaults.py) for what the config leaves out.
    assert (model.img_size, model.conf_thres, model.iou_thres, model.agnostic_nms,
            model.max_det, model.max_pixels) == (64, 0.2, 0.45, False, 300, 50_000_000)
    flags = resolve_model(parse_args(["--conf-thres", "0.7", "--agnostic", "--max-det", "2",
                                      "x.jpg"], model_files=False), model)
    assert (flags.conf_thres, flags.agnostic_nms, flags.max_det) == (0.7, True, 2)

    image = _jpeg(tmp_path, (80, 120))
    assert main(["--max-det", "3", str(image)]) == 0
    record = json.loads(capsys.readouterr().out)
    detector = Detector.load(CFG, weights, NAMES, img_size=64, device="cpu")
    decoded = decode_for_network(image.read_bytes(), 50_000_000, 64)
    expected = detector.detect_decoded([decoded], conf_thres=0.2, iou_thres=0.45,
                                       max_det=3)[0]
    assert record["detections"] == [d.to_json() for d in expected]


def test_config_errors_and_unknown_models(weights: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    image = _jpeg(tmp_path, (40, 40))
    missing = tmp_path / "none.yaml"
    assert _error(capsys, ["--config", str(missing), str(image)]).startswith(
        f"error: cannot read config file {missing}")
    bad = _config(tmp_path, "workers:\n  img_size: big\nmodels:\n  tiny: {cfg: tests/data/"
                            f"tiny.cfg, weights: {weights}, names: tests/data/tiny.names}}\n")
    assert _error(capsys, ["--config", str(bad), str(image)]) == (
        "error: workers.img_size: must be a positive integer, got 'big'")
    good = _config(tmp_path, "models:\n  tiny: {cfg: tests/data/tiny.cfg, weights: "
                             f"{weights}, names: tests/data/tiny.names}}\n")
    assert _error(capsys, ["--config", str(good), "--model", "nope", str(image)]) == (
        "error: --model nope: the config serves tiny")
    with pytest.raises(SystemExit) as exc_info:  # files of their own: model.detect's job
        main(["--cfg", str(CFG), "--weights", str(weights), "--names", str(NAMES), str(image)])
    assert exc_info.value.code == 2
    assert "unrecognized arguments: --cfg" in capsys.readouterr().err
