"""Probabilities that mean what they say: Platt scaling and its check.

A network trained with oversampled positives is both over-confident and shifted towards "bleed"
(it saw hemorrhage slices twice as often as they occur). Temperature scaling (Guo et al. 2017)
divides the logit by one number and fixes only the first; Platt scaling, ``sigmoid(a * logit(p)
+ b)``, fitted on validation patients, fixes both, still without moving any ranking (ROC AUC is
unchanged). The expected calibration error (ECE) says how far shown probabilities are from the
observed frequencies. Pure numpy: serving applies the calibration, training fits it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-6


def logit(probabilities: np.ndarray) -> np.ndarray:
    """Inverse of the sigmoid, clipped away from 0 and 1."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Platt:
    """``sigmoid(scale * logit(p) + bias)``; the identity is ``Platt(1, 0)``."""

    scale: float = 1.0
    bias: float = 0.0

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities as float32 (``p`` itself for the identity)."""
        p = np.asarray(probabilities, dtype=np.float32)
        if self.scale == 1.0 and self.bias == 0.0:
            return p
        return (1.0 / (1.0 + np.exp(-(self.scale * logit(p) + self.bias)))).astype(np.float32)

    def invert(self, probabilities: np.ndarray) -> np.ndarray:
        """The raw probabilities that :meth:`apply` maps to ``probabilities``."""
        z = (logit(probabilities) - self.bias) / self.scale
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def fit_platt(probabilities: np.ndarray, labels: np.ndarray, ridge: float = 1e-3) -> Platt:
    """Logistic regression of ``labels`` on ``logit(probabilities)`` (Newton's method, a small ridge
    towards the identity so that a few slices cannot produce a wild fit)."""
    z, y = logit(probabilities).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if z.size == 0 or y.min() == y.max():
        return Platt()
    features = np.stack([z, np.ones_like(z)], axis=1)
    weights = np.array([1.0, 0.0])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(features @ weights)))
        gradient = features.T @ (p - y) / z.size + ridge * (weights - [1.0, 0.0])
        hessian = (features * (p * (1 - p))[:, None]).T @ features / z.size + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return Platt(round(float(weights[0]), 5), round(float(weights[1]), 5))


@dataclass(frozen=True)
class Reliability:
    """Binned predicted probability against observed frequency (the reliability diagram)."""

    bin_edges: np.ndarray
    mean_predicted: np.ndarray
    """Per bin; NaN where the bin is empty."""
    observed: np.ndarray
    counts: np.ndarray
    ece: float
    """Expected calibration error: the count-weighted mean gap between the two."""


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> Reliability:
    """Equal-width bins over [0, 1]."""
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=p, minlength=bins) / counts
        observed = np.bincount(index, weights=y, minlength=bins) / counts
    gaps = np.where(counts > 0, np.abs(mean_predicted - observed), 0.0)
    ece = float(np.sum(gaps * counts) / max(1, counts.sum()))
    return Reliability(edges, mean_predicted, observed, counts, round(ece, 4))
