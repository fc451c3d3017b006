"""Real-photo evaluation: class-agnostic matching, size bands, colour accuracy, the tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.train.evaluate import format_real, main, real_summary
from model.train.metrics import (
    agnostic_stats,
    colour_accuracy,
    long_side,
    match_agnostic,
)
from model.train.real import CLASS_COLOUR

NAMES = ["go", "stop", "stopLeft", "goLeft", "warning", "warningLeft"]
ROOT = Path(__file__).resolve().parents[3]
CINTA = ROOT.parent / "shared" / "datasets" / "cinta-train"


def _det(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array(rows, np.float64).reshape(-1, 6)


def test_match_agnostic_ignores_class_and_uses_each_label_once() -> None:
    gt = np.array([[0, 0, 10, 20], [50, 50, 60, 70]], np.float64)
    det = _det((0, 0, 10, 20, 0.9, 3), (1, 0, 10, 20, 0.8, 0), (50, 50, 60, 69, 0.7, 1))
    assert match_agnostic(det, gt).tolist() == [0, -1, 1]
    assert match_agnostic(_det(), gt).tolist() == []
    assert long_side(gt).tolist() == [20, 20]


def test_agnostic_stats_per_band() -> None:
    small = [2, 2, 10, 12]  # long side 10
    large = [100, 100, 140, 200]  # long side 100
    images = [(_det((*small, 0.9, 1), (*large, 0.8, 4), (300, 300, 340, 400, 0.7, 0)),
               np.array([1, 0]), np.array([small, large], np.float64))]
    every = agnostic_stats(images).results(0.3)[0]
    assert every.labels == 2 and every.recall == 1.0 and every.precision == pytest.approx(2 / 3)
    tiny = agnostic_stats(images, band=(0, 16)).results(0.3)[0]
    assert tiny.labels == 1 and tiny.recall == 1.0 and tiny.precision == 1.0
    big = agnostic_stats(images, band=(96, np.inf)).results(0.3)[0]
    assert big.labels == 1 and big.precision == 0.5  # the unmatched large box counts here
    middle = agnostic_stats(images, band=(16, 32)).results(0.3)[0]
    assert middle.labels == 0


def test_colour_accuracy_counts_arrows_by_colour() -> None:
    gt_boxes = np.array([[0, 0, 10, 20], [20, 0, 30, 20], [40, 0, 50, 20]], np.float64)
    gt_cls = np.array([0, 1, 4])  # go, stop, warning
    det = _det((0, 0, 10, 20, 0.9, 3),  # goLeft on a go: colour right, class wrong
               (20, 0, 30, 20, 0.9, 1),  # stop: right
               (40, 0, 50, 20, 0.2, 4))  # below the confidence: not found
    found, colour, exact = colour_accuracy([(det, gt_cls, gt_boxes)], CLASS_COLOUR, 0.3)
    assert (found, colour, exact) == (2, 2, 1)
    assert CLASS_COLOUR == (0, 1, 1, 0, 2, 2)


def test_real_tables_and_summary() -> None:
    gt_boxes = np.array([[0, 0, 10, 20], [100, 100, 140, 240]], np.float64)
    results = [(_det((0, 0, 10, 20, 0.9, 0), (100, 100, 140, 240, 0.6, 4)),
                np.array([0, 1]), gt_boxes)]
    summary = real_summary(results)
    assert summary["recall"] == 1.0 and summary["ap50"] == pytest.approx(1.0)
    assert summary["colour"] == 0.5 and summary["found"] == 2
    text = format_real(results, NAMES, 0.3)
    for word in ("per class", "<8", "8-16", "16-32", "32-96", ">96", "colour right on 1/2"):
        assert word in text


@pytest.mark.skipif(not CINTA.is_dir(), reason=f"{CINTA} missing (../shared is not in a clone)")
def test_command_line_real_mode(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A few held-out photos through the command (random weights: only the plumbing).
    import shutil

    from model.train.real import list_real

    photos = list_real(CINTA, "val")[:3]
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for p in photos:
        shutil.copy(p.path, tmp_path / "images")
        shutil.copy(CINTA / "labels" / f"{p.path.stem}.txt", tmp_path / "labels")
    from model.darknet import Darknet
    from model.weights import save_weights

    cfg = ROOT / "model" / "data" / "traffic-lights-yolov4-tiny-3l.cfg"
    save_weights(Darknet(cfg, img_size=128), tmp_path / "random.pt")
    main(["--cfg", str(cfg), "--weights", str(tmp_path / "random.pt"), "--real", str(tmp_path),
          "--split", "all", "--count", "2", "--img-size", "128", "--threads", "1",
          "--proxy-count", "1"])
    out = capsys.readouterr().out
    assert "tiles off: real photos: 3 images" in out and "tiles auto: real photos" in out
    assert "class-agnostic" in out and "AP@0.5" in out
    for canvas in ("1280x960", "1920x1080", "4032x3024"):
        assert f"small-light proxy {canvas}" in out
    # at 128 px every proxy canvas is tiled by auto: 5, 3 and 5 passes
    assert "passes per photo 5.0" in out and "passes per photo 3.0" in out
