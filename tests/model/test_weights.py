"""Weights: Darknet binary and ultralytics-style checkpoints, round trips and refusals."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.darknet import BN_EPS_DARKNET, BN_EPS_PYTORCH, Darknet
from model.errors import WeightsError
from model.weights import load_weights, read_checkpoint, save_weights
from tests.engine_utils import DARKNET_DIR, DATA_DIR, randomize

CFG = DATA_DIR / "engine-all-layers.cfg"


def _equal_state(a: Darknet, b: Darknet) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("suffix", [".weights", ".pt"])
def test_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    net = randomize(Darknet(CFG, 64), seed=3)
    save_weights(net, tmp_path / f"w{suffix}")
    other = Darknet(CFG, 64)
    load_weights(other, tmp_path / f"w{suffix}")
    if suffix == ".weights":  # Darknet files carry no num_batches_tracked
        for module in other.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.num_batches_tracked.zero_()
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.num_batches_tracked.zero_()
    _equal_state(net, other)
    bn = next(m for m in other.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.eps == (BN_EPS_DARKNET if suffix == ".weights" else BN_EPS_PYTORCH)


def test_darknet_layout_by_hand(tmp_path: Path) -> None:
    """Write a file by hand in Darknet's order and check every tensor lands in place."""
    cfg = tmp_path / "two.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=2\n"
                   "[convolutional]\nbatch_normalize=1\nfilters=2\nsize=1\nactivation=leaky\n"
                   "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
                   "[yolo]\nmask=0\nanchors=1,1\nclasses=1\nnum=1\n")
    values = np.arange(2 + 2 + 2 + 2 + 4 + 6 + 12, dtype="<f4")
    path = tmp_path / "hand.weights"
    with path.open("wb") as f:
        np.array([0, 1, 0], dtype="<i4").tofile(f)   # version 0.1: seen is int32
        np.array([7], dtype="<i4").tofile(f)
        values.tofile(f)
    net = Darknet(cfg)
    load_weights(net, path)
    block0, block1 = net.module_list[0], net.module_list[1]
    assert block0.BatchNorm2d.bias.tolist() == [0, 1]
    assert block0.BatchNorm2d.weight.tolist() == [2, 3]
    assert block0.BatchNorm2d.running_mean.tolist() == [4, 5]
    assert block0.BatchNorm2d.running_var.tolist() == [6, 7]
    assert block0.Conv2d.weight.flatten().tolist() == [8, 9, 10, 11]
    assert block1.Conv2d.bias.tolist() == list(range(12, 18))
    assert block1.Conv2d.weight.flatten().tolist() == list(range(18, 30))


@pytest.mark.parametrize("version,seen_dtype", [((0, 2, 0), "<i8"), ((1, 0, 0), "<i8"),
                                                ((0, 1, 0), "<i4"), ((1000, 2, 0), "<i4")])
def test_header_versions(tmp_path: Path, version: tuple[int, int, int], seen_dtype: str) -> None:
    net = randomize(Darknet(DARKNET_DIR / "yolov3-tiny.cfg", 64))
    body = tmp_path / "body.weights"
    save_weights(net, body)
    floats = body.read_bytes()[20:]
    path = tmp_path / "v.weights"
    path.write_bytes(np.array(version, "<i4").tobytes() + np.array([5], seen_dtype).tobytes()
                     + floats)
    other = Darknet(DARKNET_DIR / "yolov3-tiny.cfg", 64)
    load_weights(other, path)
    assert torch.equal(other.module_list[0].Conv2d.weight, net.module_list[0].Conv2d.weight)


@pytest.mark.parametrize("delta,word", [(-4, "too short"), (8, "too long")])
def test_wrong_length_says_expected_and_found(tmp_path: Path, delta: int, word: str) -> None:
    net = Darknet(CFG, 64)
    path = tmp_path / "w.weights"
    save_weights(net, path)
    data = path.read_bytes()
    path.write_bytes(data[:delta] if delta < 0 else data + b"\0" * delta)
    expected = (len(data) - 20) // 4
    found = expected + delta // 4
    with pytest.raises(WeightsError) as err:
        load_weights(Darknet(CFG, 64), path)
    assert f"needs {expected} floats" in str(err.value)
    assert f"the file has {found}" in str(err.value) and word in str(err.value)


def test_ultralytics_checkpoint_with_numpy_fitness(tmp_path: Path) -> None:
    net = randomize(Darknet(DARKNET_DIR / "yolov3-spp-6cls.cfg", 64))
    path = tmp_path / "best_model_12.pt"
    # Exactly the structure ultralytics/yolov3's train.py saves.
    torch.save({"epoch": 12, "best_fitness": np.array([0.61, 0.7]), "training_results": "x",
                "model": net.state_dict(), "optimizer": None}, path)
    assert "module_list.0.Conv2d.weight" in net.state_dict()
    assert "module_list.0.BatchNorm2d.running_mean" in net.state_dict()
    other = Darknet(DARKNET_DIR / "yolov3-spp-6cls.cfg", 64)
    load_weights(other, path)
    _equal_state(net, other)
    checkpoint = read_checkpoint(path)
    assert checkpoint["epoch"] == 12 and checkpoint["best_fitness"].tolist() == [0.61, 0.7]
    # A plain state dict loads too.
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    load_weights(Darknet(DARKNET_DIR / "yolov3-spp-6cls.cfg", 64), tmp_path / "plain.pt")


class _Payload:
    def __reduce__(self):  # noqa: D105 - runs only if unpickled unsafely
        return (os.mkdir, (os.environ["PAYLOAD_DIR"],))


def test_pickled_code_is_refused_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PAYLOAD_DIR", str(marker))
    net = Darknet(CFG, 64)
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 0, "model": net.state_dict(), "hook": _Payload()}, path)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="refused: the checkpoint pickles 'posix.mkdir'"):
        load_weights(Darknet(CFG, 64), path)
    assert not marker.exists()


def test_shape_mismatch_names_the_layer(tmp_path: Path) -> None:
    coco = Darknet(DARKNET_DIR / "yolov3-spp.cfg", 64)
    torch.save({"model": coco.state_dict()}, tmp_path / "coco.pt")
    with pytest.raises(WeightsError) as err:
        load_weights(Darknet(DARKNET_DIR / "yolov3-spp-6cls.cfg", 64), tmp_path / "coco.pt")
    message = str(err.value)
    assert "module_list.88.Conv2d.weight" in message and "(255, 1024, 1, 1)" in message
    assert "layer 88 [convolutional]" in message and "(33, 1024, 1, 1)" in message


def test_missing_keys_and_formats(tmp_path: Path) -> None:
    net = Darknet(CFG, 64)
    state = net.state_dict()
    state.pop("module_list.0.Conv2d.weight")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="missing 1 .first: module_list.0.Conv2d.weight"):
        load_weights(Darknet(CFG, 64), tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_weights(net, tmp_path / "absent.weights")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights format"):
        load_weights(net, tmp_path / "w.onnx")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_weights(net, tmp_path / "junk.pt")


def test_fused_network_is_not_loadable(tmp_path: Path) -> None:
    net = Darknet(CFG, 64)
    save_weights(net, tmp_path / "w.weights")
    with pytest.raises(WeightsError, match="fused"):
        load_weights(net.eval().fuse(), tmp_path / "w.weights")


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_a_clear_error(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(WeightsError, match="garbage.pt: (not a readable|refused)"):
        load_weights(Darknet(CFG, 64), path)
