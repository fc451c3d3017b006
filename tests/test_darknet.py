"""The engine against an independent implementation: OpenCV's Darknet importer (4.x).

Every cfg in ../shared/darknet plus our own cfgs that exercise the remaining layer types
and options get random weights written in Darknet format; both implementations read the
same files and the outputs must agree: boxes and objectness within 1e-3 relative, class
probabilities within 1e-3 absolute.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from model.darknet import Darknet
from model.errors import CfgError
from model.weights import load_weights, save_weights
from tests.engine_utils import DARKNET_DIR, DATA_DIR, opencv_forward, randomize

# OpenCV normalises BatchNorm with eps 1e-6 (Darknet: 1e-5); match the reference.
OPENCV_BN_EPS = 1e-6

CASES = [
    (DARKNET_DIR / "yolov3-spp-6cls.cfg", 512),  # the users' network at full size
    (DARKNET_DIR / "yolov3-spp.cfg", 160),
    (DARKNET_DIR / "yolov3.cfg", 160),
    (DARKNET_DIR / "yolov3-tiny.cfg", 160),
    (DARKNET_DIR / "yolov4-tiny.cfg", 160),
    (DATA_DIR / "engine-all-layers.cfg", 64),
    (DATA_DIR / "engine-new-coords.cfg", 64),
]


def _opencv_cfg(cfg: Path, out: Path) -> Path:
    """OpenCV zeroes class scores below its yolo 'thresh' (default 0.2): set it to 0."""
    out.write_text(re.sub(r"^\[yolo\]", "[yolo]\nthresh=0", cfg.read_text(), flags=re.M))
    return out


def _opencv_rows(outputs: list[np.ndarray], net: Darknet, hw: tuple[int, int]) -> np.ndarray:
    """OpenCV rows (grid y, grid x, anchor order; relative units) in our order and units."""
    rows = []
    for raw, layer, head in zip(outputs, net.yolo_layers, _head_shapes(net)):
        ny, nx = head
        per = 5 + layer.num_classes
        rows.append(raw.reshape(ny, nx, layer.num_anchors, per).transpose(2, 0, 1, 3)
                    .reshape(-1, per))
    ref = np.concatenate(rows).astype(np.float64)
    ref[:, [0, 2]] *= hw[1]
    ref[:, [1, 3]] *= hw[0]
    return ref


def _head_shapes(net: Darknet) -> list[tuple[int, int]]:
    return [(net.shapes[i].h, net.shapes[i].w) for i, m in enumerate(net.module_list)
            if m in net.yolo_layers]


@pytest.mark.parametrize("cfg,size", CASES, ids=lambda v: v.stem if isinstance(v, Path) else str(v))
def test_matches_opencv(cfg: Path, size: int, tmp_path: Path) -> None:
    weights = tmp_path / "random.weights"
    save_weights(randomize(Darknet(cfg, size), seed=size), weights)

    net = Darknet(cfg, size)
    load_weights(net, weights)
    net.set_bn_eps(OPENCV_BN_EPS)
    net.eval().fuse()
    image = np.random.default_rng(1).random((size, size, 3), dtype=np.float32)
    with torch.inference_mode():
        ours = net(torch.from_numpy(image.transpose(2, 0, 1).copy())[None])[0][0]
    ours = ours.double().numpy()

    ref = _opencv_rows(opencv_forward(_opencv_cfg(cfg, tmp_path / "ref.cfg"), weights, image),
                       net, (size, size))
    assert ours.shape == ref.shape
    # The network is not degenerate: objectness and box sizes really vary.
    assert ours[:, 4].max() - ours[:, 4].min() > 0.5
    np.testing.assert_allclose(ours[:, :5], ref[:, :5], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(ours[:, 5:] * ours[:, 4:5], ref[:, 5:], rtol=0, atol=1e-3)


def test_output_contract_and_strides_from_shapes() -> None:
    net = Darknet(DARKNET_DIR / "yolov3-spp-6cls.cfg", img_size=(256, 320)).eval()
    assert net.strides == [32, 16, 8] and net.max_stride == 32
    assert net.num_classes == 6
    with torch.inference_mode():
        out, raw = net(torch.rand(2, 3, 256, 320))
    rows = 3 * (8 * 10 + 16 * 20 + 32 * 40)
    assert out.shape == (2, rows, 11)
    assert [r.shape[-2:] for r in raw] == [(8, 10), (16, 20), (32, 40)]
    # Probabilities are in 0..1 and not multiplied by objectness.
    assert 0 <= out[..., 4:].min() and out[..., 4:].max() <= 1
    # The first rows are the first head, anchor 0, grid (0, 0): centre within one cell.
    assert 0 <= out[0, 0, 0] <= 32 and 0 <= out[0, 0, 1] <= 32
    # Strides are read off the shapes, not the file name: a tiny net named like a big one.
    tiny = Darknet(DARKNET_DIR / "yolov3-tiny.cfg", img_size=320)
    assert tiny.strides == [32, 16]


def test_training_mode_returns_raw_maps() -> None:
    net = Darknet(DARKNET_DIR / "yolov4-tiny.cfg", img_size=128).train()
    raw = net(torch.rand(1, 3, 128, 128))
    assert [tuple(r.shape) for r in raw] == [(1, 3, 4, 4, 85), (1, 3, 8, 8, 85)]


def test_fuse_keeps_outputs() -> None:
    net = randomize(Darknet(DARKNET_DIR / "yolov3-tiny.cfg", img_size=128)).eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.inference_mode():
        before = net(x)[0]
        after = net.fuse()(x)[0]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_batch_of_one_equals_batch_of_many() -> None:
    net = randomize(Darknet(DATA_DIR / "engine-all-layers.cfg", img_size=64)).eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        batched = net(x)[0]
        single = torch.cat([net(x[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def _cfg(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bad.cfg"
    path.write_text("[net]\nwidth=32\nheight=32\nchannels=3\n" + body)
    return path


CONV = "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n"
YOLO = "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\n"


@pytest.mark.parametrize("body,needle", [
    ("[route]\nlayers=-3\n" + CONV + YOLO, "layer reference -3 resolves to -3"),
    ("[route]\nlayers=0\n" + CONV + YOLO, "layer reference 0 resolves to 0"),
    (CONV + "[shortcut]\nfrom=5\n" + YOLO, "key 'from'"),
    (CONV + "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5\nclasses=1\nnum=3\n", "key 'anchors'"),
    (CONV + "[yolo]\nmask=0,1,7\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\n", "key 'mask'"),
    (CONV + "[yolo]\nmask=0,1\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\n", "need 12"),
    ("[convolutional]\nfilters=18\nsize=1\nactivation=leeky\n" + YOLO, "key 'activation'"),
    ("[convolutional]\nfilters=18\nsize=1\nxnor=1\n" + YOLO, "key 'xnor'"),
    ("[convolutional]\nfilters=18\nsize=3\ngroups=4\n" + YOLO, "key 'groups'"),
    ("[maxpool]\nsize=2\nstride=2\n" + CONV, "no [yolo] layer"),
    ("[upsample]\nstride=-2\n" + CONV + YOLO, "key 'stride'"),
])
def test_bad_networks_are_refused_with_location(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(CfgError) as err:
        Darknet(_cfg(tmp_path, body))
    assert needle in str(err.value)
    assert str(tmp_path / "bad.cfg") in str(err.value)
