"""The engine against an independent implementation: OpenCV's Darknet importer (4.x).

Every cfg in ../shared/darknet plus our own cfgs that exercise the remaining layer types
and options get random weights written in Darknet format; both implementations read the
same files and the outputs must agree: boxes and objectness within 1e-3 relative, class
probabilities within 1e-3 absolute.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from model.darknet import Darknet
from model.errors import CfgError
from tests.engine_utils import (DARKNET_DIR, DATA_DIR, PARITY_CASES, assert_matches_opencv,
                                randomize)
from tests.paths import MODEL_DATA_DIR


@pytest.mark.parametrize("cfg,size", PARITY_CASES,
                         ids=lambda v: v.stem if isinstance(v, Path) else str(v))
def test_matches_opencv(cfg: Path, size: int, tmp_path: Path) -> None:
    assert_matches_opencv(cfg, size, tmp_path, backend=lambda net: net)


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
    (CONV + "[yolo]\nmask=0,1,7\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\n", "key 'mask'"),
    (CONV + "[yolo]\nmask=0,1\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\n", "need 12"),
    (CONV + "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=1\nnum=3\nmap=x.map\n",
     "key 'map'"),
    ("[convolutional]\nfilters=18\nsize=1\nactivation=revleaky\n" + YOLO, "key 'activation'"),
    ("[convolutional]\nfilters=18\nsize=1\nxnor=1\n" + YOLO, "key 'xnor'"),
    ("[convolutional]\nfilters=18\nsize=1\nflipped=1\n" + YOLO, "key 'flipped'"),
    ("[convolutional]\nfilters=18\nsize=1\ndontloadscales=1\n" + YOLO, "key 'dontloadscales'"),
    ("[convolutional]\nfilters=18\nsize=3\ngroups=4\n" + YOLO, "key 'groups'"),
    ("[upsample]\nstride=-2\n" + CONV + YOLO, "key 'stride'"),
    ("[reorg3d]\nstride=2\nreverse=1\n" + CONV + YOLO, "channels by stride^4"),
    ("[convolutional]\nfilters=45\nsize=1\n[region]\nclasses=4\nnum=5\ntree=9k.tree\n",
     "tree=9k.tree: the hierarchical softmax of YOLO9000"),
    ("[convolutional]\nfilters=45\nsize=1\n[region]\nclasses=3\nnum=5\ncoords=5\n",
     "key 'coords'"),
    ("[crnn]\noutput=18\nhidden=4\n" + YOLO, "[crnn] is not supported by this engine: a "
     "recurrent layer"),
    (CONV + YOLO + "[contrastive]\nclasses=1\n[empty]\n", "only as the last layer"),
])
def test_bad_networks_are_refused_with_location(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(CfgError) as err:
        Darknet(_cfg(tmp_path, body))
    assert needle in str(err.value)
    assert str(tmp_path / "bad.cfg") in str(err.value)


@pytest.mark.parametrize("body,kind", [
    ("[maxpool]\nsize=2\nstride=2\n" + CONV, "not a detector"),
    ("[convolutional]\nfilters=4\nsize=1\n[avgpool]\n[softmax]\n[cost]\n",
     "a classifier ([softmax], [cost])"),
    ("[connected]\noutput=4\n[softmax]\n", "a classifier ([connected], [softmax])"),
])
def test_networks_without_a_detection_layer_are_refused(tmp_path: Path, body: str,
                                                        kind: str) -> None:
    with pytest.raises(CfgError) as err:
        Darknet(_cfg(tmp_path, body))
    assert f"the network is {kind}: it has no [yolo], [region] or [Gaussian_yolo] layer, " \
           "and this service serves detectors only" in str(err.value)


def test_what_darknet_tolerates_builds_with_warnings(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """An unknown activation is ReLU (get_activation), missing anchors are 0.5
    (make_yolo_layer), extra anchors beyond 2 * num are not read (parse_yolo)."""
    body = ("[convolutional]\nfilters=18\nsize=1\nactivation=leeky\n"
            "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5\nclasses=1\nnum=3\n"
            "[route]\nlayers=-2\n[convolutional]\nfilters=6\nsize=1\n"
            "[yolo]\nmask=0\nanchors=7,8,9,10,11\nclasses=1\nnum=1\n")
    with caplog.at_level(logging.WARNING):
        net = Darknet(_cfg(tmp_path, body))
    assert net.module_list[0].activation.name == "relu"
    torch.testing.assert_close(net.yolo_layers[0].anchors,
                               torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.5]]))
    torch.testing.assert_close(net.yolo_layers[1].anchors, torch.tensor([[7.0, 8.0]]))
    text = caplog.text
    assert "'leeky' is not a Darknet activation; Darknet uses relu" in text
    assert "has 5 numbers, num=3 needs 6; Darknet uses 0.5 for the others" in text
    assert "has 5 numbers; Darknet reads the first 2 (num=1)" in text


def test_shipped_users_network_matches_shared_copy() -> None:
    """model/data ships the users' network (for their best_model_12.pt) unchanged."""
    shipped = MODEL_DATA_DIR / "yolov3-spp-6cls.cfg"
    assert shipped.read_text() == (DARKNET_DIR / "yolov3-spp-6cls.cfg").read_text()
    net = Darknet(shipped, img_size=512)
    assert net.num_classes == 6 and net.strides == [32, 16, 8]
