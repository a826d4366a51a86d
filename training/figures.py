"""Pictures next to the model card: ROC curves (slices and scans), reliability diagrams, predicted
against radiologist outlines, training curves (PNG).

Numbers in a table hide the shape of a model's errors; these show where on the ROC curve the
operating point sits, whether a shown probability of 0.8 means 80 %, and whether training had
converged. Written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ichseg.calibration import reliability
from ichseg.model_metadata import ModelMetadata
from training.metrics import roc_auc


class ScoredSlice(Protocol):
    """What a figure needs of one evaluated slice (``training.evaluate.SliceResult`` has it)."""

    @property
    def patient(self) -> str: ...
    @property
    def slice_id(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def probability(self) -> float: ...
    @property
    def label(self) -> bool: ...
    @property
    def subtypes(self) -> Mapping[str, bool]: ...
    @property
    def subtype_probabilities(self) -> Mapping[str, float]: ...
    @property
    def image(self) -> np.ndarray | None: ...
    @property
    def truth(self) -> np.ndarray | None: ...

    def prediction(self, slice_threshold: float, pixel_threshold: float, gated: bool = True) -> np.ndarray: ...


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    ranked_scores, ranked = np.asarray(scores, dtype=float)[order], np.asarray(labels, dtype=bool)[order]
    distinct = np.r_[np.flatnonzero(np.diff(ranked_scores)), ranked.size - 1]
    tps, fps = np.cumsum(ranked)[distinct], np.cumsum(~ranked)[distinct]
    positives, negatives = max(1, ranked.sum()), max(1, (~ranked).sum())
    return np.r_[0.0, fps / negatives], np.r_[0.0, tps / positives]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_split_figures(results: Sequence[ScoredSlice], meta: ModelMetadata, split: str, folder: Path) -> list[Path]:
    """``roc-<split>.png`` and ``calibration-<split>.png`` for CT-ICH slices of one split."""
    folder.mkdir(parents=True, exist_ok=True)
    ct_ich = [r for r in results if r.source == "ct-ich"]
    scores = np.array([r.probability for r in ct_ich])
    labels = np.array([r.label for r in ct_ich])
    written = []

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    fpr, tpr = roc_points(scores, labels)
    ax.plot(fpr, tpr, label=f"slices, AUC {roc_auc(scores, labels):.3f}")
    for name in meta.subtypes:
        truth = np.array([bool(r.subtypes.get(name)) for r in ct_ich])
        if 0 < truth.sum() < truth.size:
            head = np.array([r.subtype_probabilities.get(name, 0.0) for r in ct_ich])
            x, y = roc_points(head, truth)
            ax.plot(x, y, lw=0.8, alpha=0.7, label=f"{name} head ({truth.sum()}), AUC {roc_auc(head, truth):.2f}")
    negatives, positives = ~labels, labels
    operating = (np.mean(scores[negatives] >= meta.slice_threshold), np.mean(scores[positives] >= meta.slice_threshold))
    ax.plot(*operating, "o", color="black", label=f"operating point ({meta.slice_threshold})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{meta.name} {meta.version}: CT-ICH {split}")
    ax.legend(fontsize=6, loc="lower right")
    written.append(_save(fig, folder / f"roc-{split}.png"))

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    raw = meta.slice_platt.invert(scores)
    scale, bias = meta.slice_calibration
    for values, name in ((raw, "raw"), (scores, f"calibrated (Platt {scale:.2f}, {bias:+.2f})")):
        curve = reliability(values, labels)
        filled = curve.counts > 0
        ax.plot(curve.mean_predicted[filled], curve.observed[filled], "o-", label=f"{name}, ECE {curve.ece:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect")
    ax.set(xlabel="shown probability", ylabel="observed frequency", title=f"Reliability: CT-ICH {split} slices")
    ax.legend(fontsize=7, loc="upper left")
    written.append(_save(fig, folder / f"calibration-{split}.png"))
    written.append(write_scan_roc(ct_ich, meta, split, folder / f"roc-scan-{split}.png"))
    outlined = write_outlines(ct_ich, meta, split, folder / f"outlines-{split}.png")
    return written + ([outlined] if outlined is not None else [])


def write_scan_roc(results: Sequence[ScoredSlice], meta: ModelMetadata, split: str, destination: Path) -> Path:
    """The scan-level ROC: each patient scored by their most confident slice, with the scan threshold."""
    patients: dict[str, list[ScoredSlice]] = {}
    for r in results:
        patients.setdefault(r.patient, []).append(r)
    scores = np.array([max(r.probability for r in group) for group in patients.values()])
    labels = np.array([any(r.label for r in group) for group in patients.values()])
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    if 0 < labels.sum() < labels.size:
        fpr, tpr = roc_points(scores, labels)
        ax.plot(fpr, tpr, drawstyle="steps-post", label=f"scans, AUC {roc_auc(scores, labels):.3f}")
        threshold = meta.finding_threshold
        point = (np.mean(scores[~labels] >= threshold), np.mean(scores[labels] >= threshold))
        ax.plot(*point, "o", color="black", label=f"scan threshold ({threshold:.3g})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(
        xlabel="1 - specificity (normal heads called hemorrhage)",
        ylabel="sensitivity (bleeding patients found)",
        title=f"{meta.name} {meta.version}: CT-ICH {split}, {labels.size} patients ({labels.sum()} bleeding)",
    )
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, destination)


OUTLINE_CASES = 6
"""Slices in the outline figure: the best and the worst by Dice, half each."""


def write_outlines(results: Sequence[ScoredSlice], meta: ModelMetadata, split: str, destination: Path) -> Path | None:
    """Predicted (red) against radiologist (green) outlines on the split's masked slices, best and
    worst by Dice; None when the split has no masked slice with its image."""
    from training.metrics import dice

    masked = [r for r in results if r.truth is not None and r.image is not None]
    if not masked:
        return None
    scored = sorted(
        ((float(dice(r.prediction(meta.slice_threshold, meta.pixel_threshold), r.truth)), r) for r in masked),
        key=lambda pair: pair[0],
        reverse=True,
    )
    half = OUTLINE_CASES // 2
    chosen = scored if len(scored) <= OUTLINE_CASES else scored[:half] + scored[-half:]
    fig, axes = plt.subplots(1, len(chosen), figsize=(2.4 * len(chosen), 2.8), dpi=120, squeeze=False)
    for ax, (score, r) in zip(axes[0], chosen, strict=True):
        ax.imshow(r.image, cmap="gray", vmin=0, vmax=255)
        ax.contour(r.truth, levels=[0.5], colors="lime", linewidths=0.8)
        predicted = r.prediction(meta.slice_threshold, meta.pixel_threshold)
        if predicted.any():
            ax.contour(predicted, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{r.patient}/{r.slice_id} Dice {score:.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{meta.name} {meta.version}, CT-ICH {split}: radiologist (green) vs model (red)", fontsize=8)
    return _save(fig, destination)


def write_training_curves(history_csv: Path, destination: Path) -> Path:
    """Losses, validation AUC and Dice per epoch from Keras's CSV log."""
    with history_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(r["epoch"]) + 1 for r in rows]

    def column(name: str) -> list[float]:
        return [float(r[name]) for r in rows] if rows and name in rows[0] else []

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120)
    for name in ("loss", "val_loss", "mask_loss", "val_mask_loss"):
        if column(name):
            left.plot(epochs, column(name), label=name, ls="--" if name.startswith("val_") else "-")
    left.set(xlabel="epoch", title="losses")
    left.legend(fontsize=7)
    for name in ("val_hemorrhage_auc", "hemorrhage_auc", "val_mask_dice", "mask_dice"):
        if column(name):
            right.plot(epochs, column(name), label=name, ls="--" if name.startswith("val_") else "-")
    right.set(xlabel="epoch", ylim=(0, 1), title="slice AUC and batch Dice (training-set rows)")
    right.legend(fontsize=7)
    destination.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, destination)
