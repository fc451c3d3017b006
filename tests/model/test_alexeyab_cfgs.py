"""Coverage: every cfg of AlexeyAB/darknet's ``cfg/`` folder (commit 59596d7, all 87 in
``../shared/darknet/alexeyab/``; the tests skip without it).

Each detection cfg (a ``[yolo]``, ``[region]`` or ``[Gaussian_yolo]`` layer) builds and
runs at a small input with random weights; where OpenCV DNN computes the same network,
the outputs are compared with OpenCV's (:func:`tests.engine_utils.compare_with_opencv`).
The few refused detection cfgs are refused with the reason given here; classifiers are
refused as such.  To keep CI short, OpenCV is compared for the networks under 20 M
parameters; ``ENGINE_FULL_SWEEP=1`` compares all of them (about 10 minutes on 2 cores;
the results are in docs/model.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from model.darknet import Darknet
from model.errors import CfgError
from tests.engine_utils import compare_with_opencv
from tests.paths import shared

OPENCV = "equals OpenCV"      # built, and compared with OpenCV DNN
NO_OPENCV = "no OpenCV"       # built; OpenCV cannot serve as the reference (reason given)
REFUSED = "refused"           # CfgError containing the reason given
CLASSIFIER = "classifier"     # refused: this service serves detectors

_OCV_IGNORES_XNOR = ("OpenCV reads it but ignores xnor=1 (it computes full-precision "
                     "convolutions); the XNOR layers are checked against NumPy")

COVERAGE: dict[str, tuple[str, str]] = {
    "Gaussian_yolov3_BDD.cfg": (NO_OPENCV, "OpenCV has no [Gaussian_yolo]; the layer is "
                                           "checked against NumPy"),
    "cd53paspp-gamma.cfg": (OPENCV, ""),
    "cspx-p7-mish.cfg": (REFUSED, "mask [16, 17, 18, 19] refers to anchors outside 0..15"),
    "cspx-p7-mish_hp.cfg": (NO_OPENCV, "OpenCV refuses it: 31 anchor numbers for num=16 "
                                       "(Darknet uses 0.5 for the missing one, as we do)"),
    "csresnext50-panet-spp-original-optimal.cfg": (OPENCV, ""),
    "csresnext50-panet-spp.cfg": (OPENCV, ""),
    "enet-coco.cfg": (OPENCV, ""),
    "resnet152_trident.cfg": (NO_OPENCV, "OpenCV reads it but ignores share_index and "
                                         "dilation; share_index is checked in test_layers"),
    "tiny-yolo-voc.cfg": (OPENCV, ""),
    "tiny-yolo.cfg": (OPENCV, ""),
    "tiny-yolo_xnor.cfg": (NO_OPENCV, _OCV_IGNORES_XNOR),
    "yolo-voc.2.0.cfg": (OPENCV, ""),
    "yolo-voc.cfg": (OPENCV, ""),
    "yolo.2.0.cfg": (OPENCV, ""),
    "yolo.cfg": (OPENCV, ""),
    "yolo9000.cfg": (REFUSED, "tree=data/9k.tree: the hierarchical softmax of YOLO9000"),
    "yolov2-tiny-voc.cfg": (OPENCV, ""),
    "yolov2-tiny.cfg": (OPENCV, ""),
    "yolov2-voc.cfg": (OPENCV, ""),
    "yolov2.cfg": (OPENCV, ""),
    "yolov3-openimages.cfg": (OPENCV, ""),
    "yolov3-spp.cfg": (OPENCV, ""),
    "yolov3-tiny-prn.cfg": (OPENCV, ""),
    "yolov3-tiny.cfg": (OPENCV, ""),
    "yolov3-tiny_3l.cfg": (OPENCV, ""),
    "yolov3-tiny_obj.cfg": (OPENCV, ""),
    "yolov3-tiny_occlusion_track.cfg": (REFUSED, "[crnn] is not supported by this engine: a "
                                                 "recurrent layer"),
    "yolov3-tiny_xnor.cfg": (NO_OPENCV, _OCV_IGNORES_XNOR),
    "yolov3-voc.cfg": (OPENCV, ""),
    "yolov3-voc.yolov3-giou-40.cfg": (OPENCV, ""),
    "yolov3.cfg": (OPENCV, ""),
    "yolov3.coco-giou-12.cfg": (OPENCV, ""),
    "yolov3_5l.cfg": (OPENCV, ""),
    "yolov4-csp-s-mish.cfg": (OPENCV, ""),
    "yolov4-csp-swish.cfg": (OPENCV, ""),
    "yolov4-csp-x-mish.cfg": (OPENCV, ""),
    "yolov4-csp-x-swish-frozen.cfg": (OPENCV, ""),
    "yolov4-csp-x-swish.cfg": (OPENCV, ""),
    "yolov4-csp.cfg": (OPENCV, ""),
    "yolov4-custom.cfg": (OPENCV, ""),
    "yolov4-p5-frozen.cfg": (OPENCV, ""),
    "yolov4-p5.cfg": (OPENCV, ""),
    "yolov4-p6.cfg": (OPENCV, ""),
    "yolov4-sam-mish-csp-reorg-bfm.cfg": (NO_OPENCV, "OpenCV has no [reorg3d]; the layer is "
                                                     "checked against NumPy"),
    "yolov4-tiny-3l.cfg": (OPENCV, ""),
    "yolov4-tiny-custom.cfg": (OPENCV, ""),
    "yolov4-tiny.cfg": (OPENCV, ""),
    "yolov4-tiny_contrastive.cfg": (NO_OPENCV, "OpenCV has no [local_avgpool] (checked "
                                               "against NumPy) nor [contrastive]"),
    "yolov4.cfg": (OPENCV, ""),
    "yolov4_new.cfg": (OPENCV, ""),
    "yolov4x-mish.cfg": (OPENCV, ""),
    "yolov7-tiny.cfg": (OPENCV, ""),
    "yolov7.cfg": (OPENCV, ""),
    "yolov7x.cfg": (OPENCV, ""),
}
CLASSIFIERS = [
    "alexnet.cfg", "cifar.cfg", "cifar.test.cfg", "crnn.train.cfg", "csdarknet53-omega.cfg",
    "cspx-p7-mish-omega.cfg", "darknet.cfg", "darknet19.cfg", "darknet19_448.cfg",
    "darknet53.cfg", "darknet53_448_xnor.cfg", "densenet201.cfg", "efficientnet-lite3.cfg",
    "efficientnet_b0.cfg", "extraction.cfg", "extraction.conv.cfg", "extraction22k.cfg",
    "go.test.cfg", "gru.cfg", "jnet-conv.cfg", "lstm.train.cfg", "resnet101.cfg",
    "resnet152.cfg", "resnet50.cfg", "resnext152-32x4d.cfg", "rnn.cfg", "rnn.train.cfg",
    "strided.cfg", "t1.test.cfg", "tiny.cfg", "vgg-16.cfg", "vgg-conv.cfg", "writing.cfg",
]
COVERAGE.update({name: (CLASSIFIER, "") for name in CLASSIFIERS})

# Networks whose deepest maps need more than 64 px (strides 64/128, [reorg3d] pairs), or
# whose random weights are better conditioned at 128 (more pixels per channel in the
# deepest batch-norm calibration).
_SIZE_128 = ("p6", "p7", "sam-mish", "enet", "csresnext", "cd53", "yolov4.cfg",
             "yolov4-custom", "csp-swish", "csp-x-swish")
# CI compares OpenCV for these, the networks under 20 M parameters (ENGINE_FULL_SWEEP=1:
# all of them).
_CI_OPENCV = frozenset({
    "enet-coco.cfg", "tiny-yolo-voc.cfg", "tiny-yolo.cfg", "yolov2-tiny-voc.cfg",
    "yolov2-tiny.cfg", "yolov3-tiny-prn.cfg", "yolov3-tiny.cfg", "yolov3-tiny_3l.cfg",
    "yolov3-tiny_obj.cfg", "yolov4-csp-s-mish.cfg", "yolov4-tiny-3l.cfg",
    "yolov4-tiny-custom.cfg", "yolov4-tiny.cfg", "yolov7-tiny.cfg",
})


def _size(name: str) -> int:
    return 128 if any(key in name for key in _SIZE_128) else 64


def _cfg(name: str) -> Path:
    return shared("darknet", "alexeyab", name)


def test_the_table_covers_the_whole_folder() -> None:
    folder = shared("darknet", "alexeyab")
    files = sorted(p.name for p in folder.glob("*.cfg"))
    assert len(files) == 87
    assert files == sorted(COVERAGE)
    detection = [name for name in files
                 if any(f"[{kind}]" in (folder / name).read_text()
                        for kind in ("yolo", "region", "Gaussian_yolo"))]
    assert sorted(detection) == sorted(n for n, (s, _) in COVERAGE.items() if s != CLASSIFIER)
    assert len(detection) == 54


@pytest.mark.parametrize("name", sorted(n for n, (s, _) in COVERAGE.items() if s != CLASSIFIER))
def test_detection_cfg_builds_and_runs_or_is_refused_with_its_reason(name: str) -> None:
    status, reason = COVERAGE[name]
    logging.getLogger("model.cfg").setLevel(logging.ERROR)  # what Darknet tolerates
    try:
        if status == REFUSED:
            with pytest.raises(CfgError) as err:
                Darknet(_cfg(name), _size(name))
            assert reason in str(err.value)
            return
        size = _size(name)
        net = Darknet(_cfg(name), size).eval()
        with torch.inference_mode():
            out, raw = net(torch.rand(1, 3, size, size))
    finally:
        logging.getLogger("model.cfg").setLevel(logging.NOTSET)
    rows = sum(layer.num_anchors * r.shape[-2] * r.shape[-1]
               for layer, r in zip(net.yolo_layers, raw, strict=True))
    assert out.shape == (1, rows, 5 + net.num_classes)
    assert torch.isfinite(out[..., 4:]).all()


@pytest.mark.parametrize("name", sorted(n for n, (s, _) in COVERAGE.items() if s == OPENCV))
def test_detection_cfg_equals_opencv(name: str, tmp_path: Path) -> None:
    if name not in _CI_OPENCV and not os.environ.get("ENGINE_FULL_SWEEP"):
        pytest.skip("over 20 M parameters: compared with ENGINE_FULL_SWEEP=1 only (results "
                    "in docs/model.md)")
    cfg = _cfg(name)
    logging.getLogger("model.cfg").setLevel(logging.ERROR)
    try:
        stats = compare_with_opencv(cfg, _size(name), tmp_path)
    finally:
        logging.getLogger("model.cfg").setLevel(logging.NOTSET)
    print(f"{name}: {stats}")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_are_refused_as_such(name: str) -> None:
    with pytest.raises(CfgError, match="this service serves detectors only"):
        Darknet(_cfg(name), 64)
