"""Probabilities that mean what they say: temperature scaling (Guo et al. 2017) and its check.

A network trained with oversampled positives and focal terms is over- or under-confident; dividing
its logit by one temperature, fitted on validation patients, fixes the scale without moving any
ranking (ROC AUC is unchanged). The expected calibration error (ECE) says how far the shown
probabilities are from the observed frequencies. Pure numpy: serving applies the temperature,
training fits it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-6


def logit(probabilities: np.ndarray) -> np.ndarray:
    """Inverse of the sigmoid, clipped away from 0 and 1."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / temperature)`` as float32; temperature 1 returns ``p`` unchanged."""
    p = np.asarray(probabilities, dtype=np.float32)
    if temperature == 1.0:
        return p
    return (1.0 / (1.0 + np.exp(-logit(p) / temperature))).astype(np.float32)


def _negative_log_likelihood(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = np.clip(1.0 / (1.0 + np.exp(-z / temperature)), _EPS, 1 - _EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``labels`` (a 1-D search over
    log-spaced values, refined once: the likelihood is unimodal in the temperature)."""
    z, y = logit(probabilities).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if z.size == 0 or y.min() == y.max():
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121))
    best = grid[int(np.argmin([_negative_log_likelihood(z, y, t) for t in grid]))]
    fine = np.linspace(best / 1.06, best * 1.06, 41)
    return round(float(fine[int(np.argmin([_negative_log_likelihood(z, y, t) for t in fine]))]), 4)


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
