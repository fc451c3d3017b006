"""The 6-class networks initialised from COCO: YOLOv3-tiny (cfg rewrite, slimming,
class-9 heads) and YOLOv4-tiny with a stride-8 head (cfg, OpenCV, transfer)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.darknet import BN_EPS_DARKNET, Darknet
from model.train.pretrained import (
    COCO_TRAFFIC_LIGHT,
    SMALL_ANCHORS,
    build,
    head_rows,
    six_class_cfg,
    stride8_cfg,
    transfer,
)
from model.weights import load_weights, save_weights

ROOT = Path(__file__).resolve().parents[3]
COCO_CFG = ROOT.parent / "shared" / "models" / "yolov3-tiny-coco" / "yolov3-tiny.cfg"
SHIPPED_CFG = ROOT / "model" / "data" / "traffic-lights-yolov3-tiny.cfg"


def _coco_text() -> str:
    # The shipped cfg is six_class_cfg(COCO cfg); turned back into an 80-class cfg it stands
    # in for the COCO cfg when ../shared is missing.
    if COCO_CFG.is_file():
        return COCO_CFG.read_text()
    text = SHIPPED_CFG.read_text().replace("classes=6", "classes=80")
    return text.replace("filters=33", "filters=255").replace("filters=512\nsize=3\nstride=1\n"
                                                             "pad=1\nactivation=leaky\n\n"
                                                             "[convolutional]\nbatch_normalize=1\n"
                                                             "filters=256\nsize=1",
                                                             "filters=1024\nsize=3\nstride=1\n"
                                                             "pad=1\nactivation=leaky\n\n"
                                                             "[convolutional]\nbatch_normalize=1\n"
                                                             "filters=256\nsize=1", 1)


def test_six_class_cfg_rewrites_classes_heads_and_slims() -> None:
    text = six_class_cfg(_coco_text(), slim=512)
    assert "classes=80" not in text and text.count("classes=6") == 2
    assert "filters=255" not in text and text.count("filters=33") == 2
    assert "filters=1024" not in text
    assert six_class_cfg(_coco_text(), slim=1024).count("filters=1024") == 1


def test_shipped_cfg_is_what_the_builder_writes() -> None:
    if not COCO_CFG.is_file():
        pytest.skip(f"{COCO_CFG} missing (../shared is not in a clone)")
    assert SHIPPED_CFG.read_text() == six_class_cfg(COCO_CFG.read_text(), 512)


def test_head_rows_copy_box_objectness_and_class_nine() -> None:
    rows = head_rows(3, 80, 9, 6)
    assert len(rows) == 33
    assert rows[:11] == [0, 1, 2, 3, 4] + [14] * 6
    assert rows[11:16] == [85, 86, 87, 88, 89] and rows[16] == 85 + 14


def _nets(tmp_path: Path, slim: int) -> tuple[Darknet, Darknet]:
    coco_cfg, six_cfg = tmp_path / "coco.cfg", tmp_path / "six.cfg"
    coco_cfg.write_text(_coco_text())
    six_cfg.write_text(six_class_cfg(_coco_text(), slim))
    torch.manual_seed(0)
    coco = Darknet(coco_cfg, img_size=96)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as in trained weights
        for m in coco.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    coco.set_bn_eps(BN_EPS_DARKNET)  # as when read from a Darknet .weights file
    net = Darknet(six_cfg, img_size=96)
    transfer(coco, net)
    return coco.eval(), net.eval()


def test_transfer_reproduces_coco_traffic_light_outputs(tmp_path: Path) -> None:
    coco, net = _nets(tmp_path, slim=1024)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        a, b = coco(x)[0], net(x)[0]
    assert b.shape[-1] == 11
    torch.testing.assert_close(b[..., :5], a[..., :5], rtol=1e-4, atol=1e-4)
    for c in range(6):
        torch.testing.assert_close(b[..., 5 + c], a[..., 5 + COCO_TRAFFIC_LIGHT],
                                   rtol=1e-4, atol=1e-4)


def test_transfer_slims_by_batchnorm_scale_and_saves(tmp_path: Path) -> None:
    coco, net = _nets(tmp_path, slim=512)
    src, dst = coco.module_list[12], net.module_list[12]
    gamma = src.BatchNorm2d.weight.abs()
    kept = torch.sort(torch.argsort(gamma, descending=True)[:512]).values
    torch.testing.assert_close(dst.BatchNorm2d.weight, src.BatchNorm2d.weight[kept])
    torch.testing.assert_close(net.module_list[13].Conv2d.weight,
                               coco.module_list[13].Conv2d.weight[:, kept])
    save_weights(net, tmp_path / "init.pt")
    again = Darknet(tmp_path / "six.cfg", img_size=96)
    load_weights(again, tmp_path / "init.pt")  # the engine reads what the builder writes
    assert again.num_classes == 6


# -- the default model since issue 21: YOLOv4-tiny with a stride-8 head ----------------------

V4_COCO_CFG = ROOT.parent / "shared" / "models" / "yolov4-tiny-coco" / "yolov4-tiny.cfg"
V4_COCO_WEIGHTS = V4_COCO_CFG.with_suffix(".weights")
V4_SHIPPED_CFG = ROOT / "model" / "data" / "traffic-lights-yolov4-tiny-3l.cfg"


def _v4_text() -> str:
    """YOLOv4-tiny's COCO cfg (shipped in tests/data/darknet when ../shared is missing)."""
    for path in (V4_COCO_CFG, ROOT / "tests" / "data" / "darknet" / "yolov4-tiny.cfg"):
        if path.is_file():
            return path.read_text()
    pytest.skip("needs yolov4-tiny.cfg (../shared/models/yolov4-tiny-coco)")


def test_stride8_cfg_is_the_shipped_cfg_with_three_heads() -> None:
    text = stride8_cfg(_v4_text())
    if V4_COCO_CFG.is_file():  # the copy in tests/data differs in [net] training keys
        assert V4_SHIPPED_CFG.read_text() == text
    assert text.count("[yolo]") == 3 and text.count("classes=6") == 3
    assert text.count("filters=33") == 3 and "filters=255" not in text
    net = Darknet(V4_SHIPPED_CFG, img_size=128)
    assert [layer.stride for layer in net.yolo_layers] == [32, 16, 8]
    assert net.yolo_layers[2].anchors.tolist() == [list(a) for a in SMALL_ANCHORS]
    # the COCO heads keep COCO's anchors: 81,82 135,169 344,319 and 23,27 37,58 81,82
    assert net.yolo_layers[0].anchors.tolist() == [[81, 82], [135, 169], [344, 319]]
    assert net.yolo_layers[1].anchors.tolist() == [[23, 27], [37, 58], [81, 82]]


def test_opencv_reads_the_shipped_cfg_and_computes_the_same(tmp_path: Path) -> None:
    """OpenCV DNN's own Darknet reader on the same random weights: the same boxes."""
    import cv2
    import numpy as np

    torch.manual_seed(1)
    net = Darknet(V4_SHIPPED_CFG, img_size=128).eval()
    save_weights(net, tmp_path / "random.weights")
    ref = cv2.dnn.readNetFromDarknet(str(V4_SHIPPED_CFG), str(tmp_path / "random.weights"))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    x = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    ref.setInput(x)
    outs = ref.forward(ref.getUnconnectedOutLayersNames())
    theirs = np.concatenate([o.reshape(-1, o.shape[-1]) for o in outs])
    ours = Darknet(V4_SHIPPED_CFG, img_size=128).eval()
    load_weights(ours, tmp_path / "random.weights")
    with torch.no_grad():
        mine = ours(torch.from_numpy(x))[0][0].numpy()
    # OpenCV: cx, cy, w, h relative to the input, objectness, class score x objectness
    assert theirs.shape[0] == mine.shape[0] == 3 * (4 * 4 + 8 * 8 + 16 * 16)
    mine_rel = mine[:, :4] / 128
    order = lambda a: np.lexsort((a[:, 3], a[:, 2], a[:, 1], a[:, 0]))
    np.testing.assert_allclose(theirs[order(theirs[:, :4])][:, :5],
                               np.column_stack((mine_rel, mine[:, 4]))[order(mine_rel)],
                               rtol=1e-3, atol=1e-4)


def test_transfer_from_yolov4_tiny_coco_keeps_its_traffic_lights(tmp_path: Path) -> None:
    if not V4_COCO_WEIGHTS.is_file():
        pytest.skip(f"{V4_COCO_WEIGHTS} missing (../shared is not in a clone)")
    torch.manual_seed(0)
    net = build(V4_COCO_CFG, V4_COCO_WEIGHTS, tmp_path / "v4-3l.cfg", stride8=True).eval()
    coco = Darknet(V4_COCO_CFG, img_size=128)
    load_weights(coco, V4_COCO_WEIGHTS)
    coco.eval()
    x = torch.rand(1, 3, 128, 128)
    net.img_size = 128
    with torch.no_grad():
        a = coco(x)[0][0]
        b = Darknet(tmp_path / "v4-3l.cfg", img_size=128)
        b.load_state_dict(net.state_dict())
        b = b.eval()(x)[0][0]
    n = a.shape[0]  # the two COCO heads' rows come first, in the same order
    torch.testing.assert_close(b[:n, :5], a[:, :5], rtol=1e-4, atol=1e-3)
    for c in range(6):
        torch.testing.assert_close(b[:n, 5 + c], a[:, 5 + COCO_TRAFFIC_LIGHT],
                                   rtol=1e-4, atol=1e-4)
    # the new stride-8 head starts at a low objectness prior
    assert float(b[n:, 4].max()) < 0.05
