"""Detection metrics against hand-computed precision / recall / AP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.train.metrics import DetectionStats, average_precision, iou_matrix, match_image

GT = np.array([[10, 10, 20, 40], [50, 50, 60, 80]], dtype=np.float64)


def test_iou_matrix_by_hand() -> None:
    iou = iou_matrix(np.array([[0.0, 0.0, 2.0, 2.0]]), np.array([[1.0, 0.0, 3.0, 2.0],
                                                                 [5.0, 5.0, 6.0, 6.0]]))
    assert np.allclose(iou, [[2 / 6, 0.0]])


def test_perfect_detections_score_one() -> None:
    stats = DetectionStats(num_classes=2)
    det = np.array([[10, 10, 20, 40, 0.9, 0], [50, 50, 60, 80, 0.8, 1]], dtype=np.float64)
    stats.add(det, np.array([0, 1]), GT)
    assert stats.mean_ap() == pytest.approx(1.0)
    r = stats.results(0.5)
    assert [x.precision for x in r] == [1.0, 1.0] and [x.recall for x in r] == [1.0, 1.0]


def test_wrong_class_is_a_false_positive_and_a_miss() -> None:
    stats = DetectionStats(num_classes=2)
    stats.add(np.array([[10, 10, 20, 40, 0.9, 1]], dtype=np.float64), np.array([0]), GT[:1])
    r = stats.results(0.5)
    assert r[0].ap == 0.0 and r[0].recall == 0.0
    assert math.isnan(r[1].ap)  # no labels of class 1
    assert r[1].precision == 0.0


def test_duplicate_detection_counts_once() -> None:
    det = np.array([[10, 10, 20, 40, 0.9, 0], [11, 10, 20, 40, 0.8, 0]], dtype=np.float64)
    assert match_image(det, np.array([0]), GT[:1]).tolist() == [True, False]


def test_ap_with_a_confident_false_positive_by_hand() -> None:
    # ranked: FP, TP, TP over 2 labels -> precision 0, 1/2, 2/3 at recall 0, .5, 1
    # interpolated: p(r<=.5) = 2/3, p(r<=1) = 2/3 -> AP = 2/3
    tp = np.array([False, True, True])
    conf = np.array([0.9, 0.8, 0.7])
    assert average_precision(tp, conf, 2) == pytest.approx(2 / 3)
    # a miss halves the reachable recall
    assert average_precision(np.array([True]), np.array([0.5]), 2) == pytest.approx(0.5)


def test_iou_threshold_is_respected() -> None:
    shifted = np.array([[10, 22, 20, 52, 0.9, 0]], dtype=np.float64)  # IoU 18/42 < .5
    assert match_image(shifted, np.array([0]), GT[:1]).tolist() == [False]
    close = np.array([[10, 13, 20, 43, 0.9, 0]], dtype=np.float64)  # IoU 27/33
    assert match_image(close, np.array([0]), GT[:1]).tolist() == [True]
