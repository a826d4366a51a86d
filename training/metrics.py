"""Segmentation and detection metrics, and hemorrhage volume, for evaluation and the benchmarks
(the product's report computes its own volume: :func:`ichseg.writers.report.report_from_areas`).

Convention for empty masks: when both prediction and ground truth are empty, Dice and IoU are
1.0 (the model correctly found nothing); when exactly one is empty they are 0.0. Report Dice on
slices *with* hemorrhage separately from slice-level detection, so empty slices cannot inflate it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union |A∩B| / |A∪B| (1.0 when both are empty)."""
    a, b = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


@dataclass(frozen=True)
class DetectionStats:
    """Slice-level detection at one threshold."""

    threshold: float
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int

    @property
    def sensitivity(self) -> float:
        positives = self.true_positives + self.false_negatives
        return self.true_positives / positives if positives else float("nan")

    @property
    def specificity(self) -> float:
        negatives = self.true_negatives + self.false_positives
        return self.true_negatives / negatives if negatives else float("nan")


def detection_stats(scores: np.ndarray, labels: np.ndarray, threshold: float) -> DetectionStats:
    """Confusion counts for ``score >= threshold`` against binary ``labels``."""
    predicted = np.asarray(scores) >= threshold
    actual = np.asarray(labels).astype(bool)
    return DetectionStats(
        threshold=threshold,
        true_positives=int(np.sum(predicted & actual)),
        false_positives=int(np.sum(predicted & ~actual)),
        true_negatives=int(np.sum(~predicted & ~actual)),
        false_negatives=int(np.sum(~predicted & actual)),
    )


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counted half); NaN for one class."""
    scores = np.asarray(scores, dtype=np.float64)
    actual = np.asarray(labels).astype(bool)
    positives, negatives = int(actual.sum()), int((~actual).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    if np.isnan(scores).any():  # as scipy.stats.rankdata's default nan_policy="propagate" answered
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[actual].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing their mean rank: ``scipy.stats.rankdata(values)``.

    The same arithmetic as scipy's "average" method (a stable sort, then each run of equal values
    gets the mean of its first and last rank), so the float64 ranks are identical to the last bit;
    the runtime images need no scipy for it.
    """
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    inverse = np.empty(order.size, dtype=np.intp)
    inverse[order] = np.arange(order.size, dtype=np.intp)
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = np.cumsum(starts)[inverse]
    bounds = np.r_[np.flatnonzero(starts), starts.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def volume_ml(masks: np.ndarray, pixel_spacing_mm: tuple[float, float], slice_thickness_mm: float) -> float:
    """Hemorrhage volume in millilitres: voxel count x voxel volume (mm³) / 1000."""
    voxel_mm3 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * float(slice_thickness_mm)
    return float(np.count_nonzero(masks)) * voxel_mm3 / 1000.0
