"""Anchor fitting: k-means recovers known clusters, and the cfg is rewritten correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.darknet import Darknet
from model.train.anchors import kmeans_anchors, mean_best_iou, wh_iou, write_anchors

CFG = Path("model/data/traffic-lights-tiny-spp.cfg")


def test_wh_iou_by_hand() -> None:
    iou = wh_iou(np.array([[2.0, 4.0]]), np.array([[2.0, 4.0], [4.0, 2.0], [1.0, 1.0]]))
    assert np.allclose(iou, [[1.0, 4 / 12, 1 / 8]])


def test_kmeans_recovers_three_shape_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[6.0, 18.0], [30.0, 10.0], [40.0, 110.0]])
    wh = np.concatenate([c * rng.uniform(0.93, 1.07, (200, 2)) for c in centres])
    anchors = kmeans_anchors(wh, 3, seed=1)
    assert np.allclose(anchors, centres, rtol=0.06)
    assert mean_best_iou(wh, anchors) > 0.85
    assert np.all(np.diff(anchors.prod(axis=1)) > 0)  # sorted by area


def test_kmeans_needs_enough_boxes() -> None:
    with pytest.raises(ValueError):
        kmeans_anchors(np.ones((2, 2)), 3, seed=0)


def test_write_anchors_rewrites_every_yolo_section(tmp_path: Path) -> None:
    anchors = np.array([[3.2, 9.0], [5, 14], [7, 20], [9, 27], [12, 35], [16, 45], [22, 60],
                        [30, 80], [44, 110]])
    text = write_anchors(CFG.read_text(), anchors)
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("anchors")]
    assert len(lines) == 3
    assert all(ln.split("=")[1].split(",")[:2] == [" 3", "9"] for ln in lines)
    out = tmp_path / "net.cfg"
    out.write_text(text)
    net = Darknet(out, img_size=128)
    big = net.yolo_layers[0].anchors.tolist()  # mask 6,7,8 on the stride-32 head
    assert big == [[22.0, 60.0], [30.0, 80.0], [44.0, 110.0]]
    assert net.strides == [32, 16, 8]


def test_write_anchors_refuses_a_cfg_without_anchors() -> None:
    with pytest.raises(ValueError):
        write_anchors("[net]\nwidth=32\n", np.ones((9, 2)))
