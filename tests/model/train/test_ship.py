"""model.train.ship: the shipped checkpoint is float16 on disk and loads into the engine."""

from __future__ import annotations

from pathlib import Path

import torch

from model.darknet import Darknet
from model.train.ship import ship
from model.weights import load_weights, read_checkpoint, save_weights

CFG = Path(__file__).resolve().parents[3] / "model" / "data" / "traffic-lights-yolov3-tiny.cfg"


def test_ship_halves_and_the_engine_loads_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Darknet(CFG, img_size=64)
    save_weights(net, tmp_path / "best.pt", epoch=3, training_results="epoch 3 ...")
    ship(tmp_path / "best.pt", tmp_path / "shipped.pt")
    checkpoint = read_checkpoint(tmp_path / "shipped.pt")
    assert checkpoint["epoch"] == 3 and checkpoint["training_results"] == "epoch 3 ..."
    weights = checkpoint["model"]["module_list.0.Conv2d.weight"]
    assert weights.dtype == torch.float16
    assert (tmp_path / "shipped.pt").stat().st_size < 0.6 * (tmp_path / "best.pt").stat().st_size
    loaded = Darknet(CFG, img_size=64)
    load_weights(loaded, tmp_path / "shipped.pt")
    assert loaded.module_list[0].Conv2d.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.module_list[0].Conv2d.weight,
                               net.module_list[0].Conv2d.weight, rtol=1e-3, atol=1e-3)
