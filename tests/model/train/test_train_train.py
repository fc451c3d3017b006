"""The training command: checkpoints the engine loads, resume, and reproducibility for a seed."""

from __future__ import annotations

from pathlib import Path

import torch

from model.darknet import Darknet
from model.train.train import learning_rate, main
from model.weights import load_weights, read_checkpoint

CFG = "model/data/traffic-lights-tiny-spp.cfg"


def _run(out: Path, epochs: int, resume: bool = False) -> None:
    argv = ["--cfg", CFG, "--out", str(out), "--epochs", str(epochs), "--epoch-size", "6",
            "--batch", "3", "--img-size", "96", "--val-count", "3", "--workers", "0",
            "--threads", "1", "--warmup", "2", "--seed", "5"]
    if resume:
        argv += ["--resume", str(out / "state.pt")]
    main(argv)


def test_checkpoints_load_resume_and_reproduce(tmp_path: Path) -> None:
    straight, resumed = tmp_path / "a", tmp_path / "b"
    _run(straight, epochs=2)
    _run(resumed, epochs=1)
    first = read_checkpoint(resumed / "last.pt")
    assert first["epoch"] == 0
    _run(resumed, epochs=2, resume=True)

    a, b = read_checkpoint(straight / "last.pt"), read_checkpoint(resumed / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    assert len(a["training_results"].splitlines()) == 2 == len(b["training_results"].splitlines())
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-6), key
    assert not torch.equal(first["model"]["module_list.0.Conv2d.weight"],
                           b["model"]["module_list.0.Conv2d.weight"])  # it did train on

    net = Darknet(CFG, img_size=96)
    load_weights(net, straight / "best.pt")  # the engine reads what training writes
    net.eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 96, 96))[0]
    assert out.shape[-1] == 11 and torch.isfinite(out).all()


def test_learning_rate_warms_up_then_decays() -> None:
    rates = [learning_rate(s, 100, 1e-3, 10) for s in range(101)]
    assert rates[0] == 1e-4 and max(rates) == rates[10] == 1e-3
    assert all(x >= y for x, y in zip(rates[10:], rates[11:]))
    assert abs(rates[100] - 5e-5) < 1e-12
