"""Evaluation metrics: Dice and IoU with the empty-mask convention, detection, AUC, volume."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import detection_stats, dice, iou, roc_auc, volume_ml


def test_dice_iou_and_empty_convention() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0 and iou(a, b) == 1.0  # both empty: a correct "nothing"
    b[0, 0] = True
    assert dice(a, b) == 0.0 and iou(a, b) == 0.0
    a[0, :2] = True
    assert dice(a, b) == pytest.approx(2 / 3) and iou(a, b) == pytest.approx(1 / 2)


def test_detection_and_auc() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(scores, np.ones(4)))
    stats = detection_stats(scores, labels, threshold=0.35)
    assert (stats.true_positives, stats.false_positives, stats.true_negatives, stats.false_negatives) == (2, 1, 1, 0)
    assert stats.sensitivity == 1.0 and stats.specificity == 0.5


def test_volume_in_millilitres() -> None:
    masks = np.zeros((3, 10, 10), bool)
    masks[:, :5, :4] = True  # 60 voxels of 0.5 x 0.5 x 5 mm = 75 mm³
    assert volume_ml(masks, (0.5, 0.5), 5.0) == pytest.approx(0.075)
