"""The shipped default model really detects traffic lights on held-out generated scenes.

The full measurement (500+ images, mAP@0.5 >= 0.90, every class AP >= 0.80) is
``python -m model.train.evaluate``; this is the quick guard that a broken model, cfg or
pipeline cannot land.
"""

from __future__ import annotations


import pytest
import torch

from model.darknet import Darknet
from model.train.evaluate import evaluate
from model.weights import load_weights, read_checkpoint
from tests.paths import MODEL_DATA_DIR

DATA = MODEL_DATA_DIR
CFG = DATA / "traffic-lights-tiny-spp.cfg"
WEIGHTS = DATA / "traffic-lights-tiny-spp.pt"
IMG_SIZE = 512  # network input: the service's default
SCENE_SIZE = 256  # long side of the generated scenes, as in training
HELD_OUT_SEED = 4242  # not the training seed, not the validation seed, not evaluate's default


@pytest.fixture(scope="module")
def net() -> Darknet:
    torch.set_num_threads(2)
    model = Darknet(CFG, img_size=IMG_SIZE)
    load_weights(model, WEIGHTS)
    return model.eval()


def test_shipped_files_are_small_and_complete() -> None:
    assert WEIGHTS.stat().st_size < 8 * 2 ** 20
    assert (DATA / "traffic_light.names").read_text().split() == [
        "go", "stop", "stopLeft", "goLeft", "warning", "warningLeft"]
    checkpoint = read_checkpoint(WEIGHTS)
    assert {"epoch", "best_fitness", "training_results", "model", "optimizer"} <= set(checkpoint)


def test_held_out_map(net: Darknet) -> None:
    # measured when shipped: mAP 0.902, class APs 0.85 .. 0.94 (500 images, seed 2026: 0.927)
    stats = evaluate(net, HELD_OUT_SEED, 80, IMG_SIZE, SCENE_SIZE)
    results = stats.results(0.3)
    assert all(r.labels > 10 for r in results)
    assert stats.mean_ap() >= 0.85, [round(r.ap, 3) for r in results]
    assert min(r.ap for r in results) >= 0.75, [round(r.ap, 3) for r in results]


def test_empty_scene_gives_no_confident_detections(net: Darknet) -> None:
    sky = torch.zeros(1, 3, IMG_SIZE, IMG_SIZE)
    sky[:, 0], sky[:, 1], sky[:, 2] = 0.55, 0.7, 0.9
    with torch.no_grad():
        pred = net(sky)[0]
    confidence = pred[0, :, 4:5] * pred[0, :, 5:]
    assert float(confidence.max()) < 0.3
