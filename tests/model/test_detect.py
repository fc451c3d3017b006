"""Tests for the model.detect CLI: end to end in a subprocess, and error paths in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.darknet import Darknet
from model import defaults
from model.detect import main, parse_args, resolve_model
from model.inference import Detector
from model.preprocess import decode_for_network
from model.tiles import parse_tiles
from model.weights import save_weights
from settings import BASE_DIR
from tests.paths import DATA_DIR

ROOT = BASE_DIR
DATA = DATA_DIR
CFG = DATA / "tiny.cfg"
NAMES = DATA / "tiny.names"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.weights"
    save_weights(Darknet(CFG, 64), path)
    return path


@pytest.fixture()
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name, shape in [("wide.jpg", (48, 80, 3)), ("tall.png", (100, 60, 3))]:
        path = tmp_path / name
        assert cv2.imwrite(str(path), rng.integers(0, 256, shape, dtype=np.uint8))
        paths.append(path)
    return paths


def _model_args(weights: Path) -> list[str]:
    return ["--cfg", str(CFG), "--weights", str(weights), "--names", str(NAMES),
            "--img-size", "64", "--device", "cpu"]


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model.detect", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_prints_json_lines_and_writes_annotated_images(weights: Path, images: list[Path],
                                                           tmp_path: Path) -> None:
    out_dir = tmp_path / "out" / "nested"
    result = _run_cli(*_model_args(weights), "--conf-thres", "0.2", "--out", str(out_dir),
                      *map(str, images))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    assert [(r["image"], r["width"], r["height"]) for r in records] == [
        (str(images[0]), 80, 48), (str(images[1]), 60, 100)]
    for record in records:
        assert set(record) == {"image", "width", "height", "passes", "detections"}
        assert record["passes"] == 1  # tiles off: the whole photo only
        assert record["detections"], "random weights at 0.2 should give some boxes"
        for det in record["detections"]:
            assert set(det) == {"label", "class_id", "confidence", "box"}
            assert det["label"] in ("red", "green") and det["confidence"] > 0.2
            assert 0 <= det["box"]["x1"] <= det["box"]["x2"] <= record["width"]
    for path in images:
        annotated = cv2.imread(str(out_dir / path.name))
        original = cv2.imread(str(path))
        assert annotated is not None and annotated.shape == original.shape
        assert not np.array_equal(annotated, original)


def test_cli_missing_image_is_one_line_error(weights: Path, images: list[Path],
                                             tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    result = _run_cli(*_model_args(weights), str(images[0]), str(missing))
    assert result.returncode == 1
    assert result.stdout == ""  # checked before any work is done
    assert result.stderr.strip().splitlines() == [f"error: image not found: {missing}"]


def _main_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_unreadable_image(weights: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image")
    assert "junk.jpg" in _main_error(capsys, [*_model_args(weights), str(junk)])


def test_missing_model_files(weights: Path, images: list[Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    args = _model_args(weights)
    for flag, label in [("--cfg", "cfg"), ("--weights", "weights"), ("--names", "names")]:
        argv = list(args)
        argv[argv.index(flag) + 1] = str(tmp_path / "missing")
        assert _main_error(capsys, [*argv, str(images[0])]) == (
            f"error: {label} file not found: {tmp_path / 'missing'}")


def test_bad_cfg(weights: Path, images: list[Path], tmp_path: Path,
                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\nwidth=64\n[convolutional]\nfilters=banana\n")
    argv = _model_args(weights)
    argv[argv.index("--cfg") + 1] = str(bad)
    assert "bad.cfg" in _main_error(capsys, [*argv, str(images[0])])


def test_bad_device(weights: Path, images: list[Path],
                    capsys: pytest.CaptureFixture[str]) -> None:
    argv = _model_args(weights)
    argv[argv.index("--device") + 1] = "tpu"
    assert "unknown device" in _main_error(capsys, [*argv, str(images[0])])


@pytest.mark.parametrize("extra", [[], ["--conf-thres", "2"], ["--img-size", "0"],
                                   ["--tiles", "sometimes"]])
def test_usage_errors_exit_2(weights: Path, images: list[Path], extra: list[str],
                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*_model_args(weights), *extra] + ([str(images[0])] if extra else [])
    with pytest.raises(SystemExit) as exc_info:
        main(argv)
    assert exc_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_the_model_files_go_together_and_are_required(
        weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--cfg", str(CFG), "x.jpg"], ["x.jpg"]):
        with pytest.raises(SystemExit) as exc_info:
            main(argv)
        assert exc_info.value.code == 2
        assert "go together" in capsys.readouterr().err


def test_flags_default_to_the_services_defaults(weights: Path) -> None:
    """model/defaults.py: the numbers settings.py defaults to as well."""
    model = resolve_model(parse_args(["--cfg", str(CFG), "--weights", str(weights),
                                      "--names", str(NAMES), "x.jpg"]))
    assert (model.img_size, model.conf_thres, model.iou_thres, model.agnostic_nms,
            model.max_det) == (defaults.IMG_SIZE, defaults.CONF_THRES, defaults.IOU_THRES,
                               defaults.AGNOSTIC_NMS, defaults.MAX_DET)


def test_same_file_names_do_not_overwrite(weights: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    img = np.full((40, 40, 3), 200, np.uint8)
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "same.png")
        assert cv2.imwrite(str(paths[-1]), img)
    out_dir = tmp_path / "out"
    assert main([*_model_args(weights), "--out", str(out_dir), *map(str, paths)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["same.png", "same_1.png"]
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_cli_tiles_equal_the_engines(weights: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--tiles`` decodes and tiles as the engine's detect_decoded_tiled does (the
    service's workers too): same detections, passes counted."""
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8), (0, 0), 3)
    image = tmp_path / "photo.jpg"
    assert cv2.imwrite(str(image), img)
    detector = Detector.load(CFG, weights, NAMES, img_size=64, device="cpu")
    for setting, passes in [("auto", 3), ("off", 1), ("200:0.25", 7)]:
        argv = [*_model_args(weights), "--conf-thres", "0.2", "--iou-thres", "0.6",
                "--tiles", setting, str(image)]
        assert main(argv) == 0
        record = json.loads(capsys.readouterr().out)
        decoded = decode_for_network(image.read_bytes(), None, 64, parse_tiles(setting))
        expected = detector.detect_decoded_tiled([decoded], setting, conf_thres=0.2,
                                                 iou_thres=0.6)[0]
        assert record["passes"] == expected.passes == passes
        assert record["detections"] == [d.to_json() for d in expected.detections]
