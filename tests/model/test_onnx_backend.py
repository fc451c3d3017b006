"""The ONNX Runtime backend: OpenCV parity for every engine case, the export cache, and
``Detector`` with ``backend="onnxruntime"`` against ``backend="torch"``."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch

from model.darknet import Darknet
from model.inference import Detector, select_backend
from model.onnx_backend import OnnxRunner, export_onnx
from model.weights import save_weights
from tests.engine_utils import (DARKNET_DIR, DATA_DIR, IMAGES_DIR, PARITY_CASES,
                                assert_matches_opencv, randomize)


@pytest.mark.parametrize("cfg,size", PARITY_CASES,
                         ids=lambda v: v.stem if isinstance(v, Path) else str(v))
def test_onnxruntime_matches_opencv(cfg: Path, size: int, tmp_path: Path) -> None:
    assert_matches_opencv(cfg, size, tmp_path,
                          backend=lambda net: OnnxRunner.from_darknet(net, (size, size), threads=2))


def test_dynamic_batch_and_unfused_source(tmp_path: Path) -> None:
    """An unfused network is exported fused (and left as it was); the batch axis is free."""
    net = randomize(Darknet(DATA_DIR / "engine-all-layers.cfg", 64)).eval()
    path = export_onnx(net, tmp_path / "net.onnx", (64, 64))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    runner = OnnxRunner(path, threads=1)
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        expected = net(x)[0]
    for batch in (x[:1], x):
        out = runner(batch)
        assert isinstance(out, tuple) and out[0].shape == (len(batch), 2816, 9)
        torch.testing.assert_close(out[0], expected[:len(batch)], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="64"):
        runner(torch.rand(1, 3, 32, 32))


def test_export_cache_is_reused_and_keyed_by_weights(tmp_path: Path) -> None:
    cfg = DATA_DIR / "engine-new-coords.cfg"
    net = randomize(Darknet(cfg, 64), seed=1).eval().fuse()
    first = OnnxRunner.from_darknet(net, (64, 64), tmp_path)
    assert first.exported and first.path.parent == tmp_path
    mtime = first.path.stat().st_mtime_ns

    again = OnnxRunner.from_darknet(net, (64, 64), tmp_path)
    assert not again.exported and again.path == first.path
    assert first.path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.path.name,
                                                          first.path.name + ".lock"]

    other = OnnxRunner.from_darknet(randomize(Darknet(cfg, 64), seed=2).eval().fuse(),
                                    (64, 64), tmp_path)
    assert other.exported and other.path != first.path
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(other(x)[0], first(x)[0])


def test_backend_selection() -> None:
    cpu = torch.device("cpu")
    assert select_backend("auto", cpu) == "onnxruntime"
    assert select_backend("auto", torch.device("cuda:0")) == "torch"
    assert select_backend(" Torch ", cpu) == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        select_backend("onnxruntime", torch.device("cuda:0"))
    with pytest.raises(ValueError, match="unknown backend"):
        select_backend("tensorrt", cpu)


def test_detector_onnxruntime_matches_torch(tmp_path: Path) -> None:
    cfg, size = DARKNET_DIR / "yolov3-tiny.cfg", 320
    weights = tmp_path / "random.weights"
    save_weights(randomize(Darknet(cfg, size), seed=3), weights)
    names = DARKNET_DIR / "coco.names"
    torch_det = Detector.load(cfg, weights, names, img_size=size, device="cpu")
    ort_det = Detector.load(cfg, weights, names, img_size=size, device="cpu",
                            backend="onnxruntime", onnx_cache_dir=tmp_path / "cache", threads=2)
    assert (torch_det.backend, ort_det.backend) == ("torch", "onnxruntime")
    assert isinstance(ort_det.runner, OnnxRunner) and ort_det.runner.threads == 2

    image = cv2.imread(str(IMAGES_DIR / "portrait.jpg"))
    assert image is not None
    expected, got = (d.detect([image], conf_thres=0.5)[0] for d in (torch_det, ort_det))
    assert 3 <= len(expected) <= 300
    assert [d.class_id for d in got] == [d.class_id for d in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-3)
        for key in ("x1", "y1", "x2", "y2"):
            assert getattr(a, key) == pytest.approx(getattr(b, key), abs=0.05)


def test_auto_falls_back_to_torch_when_onnxruntime_cannot_run_the_network(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg, names = DATA_DIR / "service-6cls.cfg", DATA_DIR / "service-6cls.names"
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the export cannot create its cache directory under a file
    detector = Detector.load(cfg, None, names, img_size=64, device="cpu", backend="auto",
                             onnx_cache_dir=blocked / "cache")
    assert detector.backend == "torch" and not isinstance(detector.runner, OnnxRunner)
    assert "ONNX Runtime cannot run service-6cls.cfg" in caplog.text
    assert len(detector.detect([cv2.imread(str(IMAGES_DIR / "portrait.jpg"))])) == 1
    with pytest.raises(OSError):  # asked for by name: no silent fallback
        Detector.load(cfg, None, names, img_size=64, device="cpu", backend="onnxruntime",
                      onnx_cache_dir=blocked / "cache")


def test_layers_opencv_cannot_check_export_to_onnx(tmp_path: Path) -> None:
    """XNOR convolutions, [local_avgpool], [reorg3d] (both ways), [activation], [empty],
    [Gaussian_yolo] and a share_index convolution run the same in ONNX Runtime."""
    shared = tmp_path / "share.cfg"
    shared.write_text(
        "[net]\nwidth=32\nheight=32\nchannels=3\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
        "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\npad=1\nactivation=leaky\n"
        "[convolutional]\nshare_index=1\nfilters=8\nsize=3\npad=1\ndilation=2\n"
        "activation=mish\n"
        "[convolutional]\nfilters=18\nsize=1\nstride=4\nactivation=linear\n"
        "[region]\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\nsoftmax=1\n")
    for cfg, size in [(DATA_DIR / "engine-new-layers.cfg", 64), (shared, 32)]:
        net = randomize(Darknet(cfg, size)).eval().fuse()
        runner = OnnxRunner.from_darknet(net, (size, size), threads=2)
        x = torch.rand(2, 3, size, size)
        with torch.inference_mode():
            expected = net(x)[0]
        torch.testing.assert_close(runner(x)[0], expected, rtol=1e-4, atol=1e-4)
