"""Honest evaluation of an exported model on patients it never saw.

    .venv-train/bin/python -m training.evaluate --model models/ichseg-unet.onnx --split val --choose-thresholds
    .venv-train/bin/python -m training.evaluate --model models/ichseg-unet.onnx --split test

Runs the shipped inference path (``ichseg.inference``: the same reader, windowing, cropping,
2.5-D context, intracranial region, calibration and ONNX Runtime session as ``ichseg segment``) on
the original slices of the chosen split:

- **CT-ICH** patients (``Patients_CT/<id>`` read as a user's folder): slice-level ROC AUC,
  sensitivity and specificity at the operating threshold, detection per subtype, the subtype
  head's own AUC per subtype, scan-level AUC; the share of normal slices on which any pixel is
  painted; Dice on the radiologist masks (``*_HGE_Seg.jpg``), per slice and pooled per patient
  over every slice whose truth is known (masked and normal slices), so that false positives count.
- **MBH-Seg** scans (radiologist masks of another scanner population): Dice/IoU per slice with
  hemorrhage, per subtype, reported separately.

95 % confidence intervals come from a bootstrap over patients (scans), not slices.

With ``--choose-thresholds`` (only allowed on ``val``) it fits the calibration temperatures of the
slice and subtype heads, picks the pixel threshold (best mean Dice on validation real masks) and
the slice threshold (the highest one that finds 85 % of hemorrhage slices and paints at most 15 %
of normal slices),
writes them into the model's metadata, and re-evaluates with the stamped model.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.calibration import Platt, fit_platt, reliability
from ichseg.inference import OnnxSegmenter
from ichseg.readers import read_scan
from ichseg.windowing import apply_window
from training.datasets import (
    CT_ICH_SPLIT_FILE,
    list_ct_ich_slices,
    load_ct_ich_mask,
    load_mbhseg,
    pinned_ct_ich_split,
    split_by_patient,
)
from training.metrics import detection_stats, dice, iou, roc_auc
from training.synthetic import SUBTYPES
from training.training_set import (
    MBH_FRACTIONS,
    SHARED_DATA,
    SPLIT_SEED,
    mbh_to_ct_ich_orientation,
)

log = logging.getLogger("ichseg.evaluate")
BOOTSTRAP_ROUNDS = 1000
PIXEL_GRID = tuple(float(t) for t in np.round(np.arange(0.1, 0.91, 0.05), 2))
"""Pixel thresholds considered on validation (every slice records its painted area at each)."""
MAX_NORMAL_SLICES_PAINTED = 0.15
"""Operating-point constraint: at most this share of normal slices may show any predicted pixel."""
TARGET_SENSITIVITY = 0.85
"""Operating-point goal: the share of validation hemorrhage slices the slice threshold must find."""


@dataclass
class SliceResult:
    """One slice's answers, and what is needed to score it at any pair of thresholds."""

    patient: str
    slice_id: str
    source: str
    """``ct-ich`` or ``mbh``."""
    label: bool
    subtypes: dict[str, bool]
    probability: float
    subtype_probabilities: dict[str, float] = field(default_factory=dict)
    painted_at: tuple[int, ...] = ()
    """Pixels at or above each :data:`PIXEL_GRID` threshold (mask head, before the slice gate)."""
    probability_map: np.ndarray | None = field(default=None, repr=False)
    """Kept where the truth is a real mask (``truth``), to score Dice at any pixel threshold."""
    truth: np.ndarray | None = field(default=None, repr=False)
    subtype_truths: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    """The windowed slice, kept beside a real mask for the card's outline figure."""

    @property
    def truth_known(self) -> bool:
        """A radiologist's mask, or a normal CT-ICH slice (its truth is empty)."""
        return self.truth is not None or (self.source == "ct-ich" and not self.label)

    def painted(self, pixel_threshold: float) -> int:
        return self.painted_at[PIXEL_GRID.index(round(pixel_threshold, 2))]

    def prediction(self, slice_threshold: float, pixel_threshold: float, gated: bool = True) -> np.ndarray:
        assert self.probability_map is not None
        predicted = self.probability_map >= pixel_threshold
        return predicted & (self.probability >= slice_threshold) if gated else predicted


def _record(result: SliceResult, probability_map: np.ndarray, truth: np.ndarray | None, keep_map: bool) -> SliceResult:
    result.painted_at = tuple(int(np.count_nonzero(probability_map >= t)) for t in PIXEL_GRID)
    if keep_map:
        result.probability_map, result.truth = probability_map.astype(np.float16), truth
    return result


def evaluate_ct_ich(
    segmenter: OnnxSegmenter, root: Path, split: str, split_file: Path = CT_ICH_SPLIT_FILE
) -> list[SliceResult]:
    """Run the model on every CT-ICH patient of ``split`` (of the pinned ``split_file``), read exactly
    as a user's folder would be."""
    slices = list_ct_ich_slices(root)
    patients = sorted(pinned_ct_ich_split(slices, split_file)[split])
    by_patient: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in slices:
        by_patient[item.patient][str(item.slice_number)] = item
    names = segmenter.metadata.subtypes
    results = []
    for patient in patients:
        scan = read_scan(root / "Patients_CT" / patient)
        prediction = segmenter.predict(np.asarray(scan.slices, dtype=np.uint8))
        for index, slice_id in enumerate(scan.slice_ids):
            item = by_patient[patient].get(slice_id)
            if item is None:
                continue
            result = SliceResult(
                patient,
                slice_id,
                "ct-ich",
                item.any_hemorrhage,
                dict(item.subtypes),
                float(prediction.slice_probabilities[index]),
                {n: float(q) for n, q in zip(names, prediction.subtype_probabilities[index], strict=True)},
            )
            truth = load_ct_ich_mask(item) if item.mask_path is not None else None
            if truth is not None:
                result.image = np.asarray(scan.slices[index], dtype=np.uint8)
            results.append(_record(result, prediction.probabilities[index], truth, truth is not None))
        log.info("CT-ICH %s: %d slices", patient, scan.num_slices)
    return results


def evaluate_mbh(segmenter: OnnxSegmenter, root: Path, split: str) -> list[SliceResult]:
    """Every MBH-Seg slice of ``split`` with its radiologist mask (one slice at a time: no neighbours)."""
    items = load_mbhseg(root, outside_air_hu=-1000.0)
    cases = split_by_patient([s.case_id for s in items], MBH_FRACTIONS, seed=SPLIT_SEED)[split]
    meta = segmenter.metadata
    results = []
    for item in (s for s in items if s.case_id in cases):
        image = mbh_to_ct_ich_orientation(apply_window(item.hu, meta.window_preset))
        truth = mbh_to_ct_ich_orientation(item.mask)
        prediction = segmenter.predict(image[None])
        result = SliceResult(
            f"mbh-{item.case_id}",
            item.slice_id,
            "mbh",
            True,
            {n: bool(item.subtype_masks[n].any()) for n in SUBTYPES},
            float(prediction.slice_probabilities[0]),
            {n: float(q) for n, q in zip(meta.subtypes, prediction.subtype_probabilities[0], strict=True)},
            subtype_truths={
                n: mbh_to_ct_ich_orientation(item.subtype_masks[n]) for n in SUBTYPES if item.subtype_masks[n].any()
            },
        )
        results.append(_record(result, prediction.probabilities[0], truth, True))
    return results


def bootstrap_ci(
    values_by_patient: dict[str, list[Any]],
    statistic: Callable[[list[list[Any]]], float | None],
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> list[float] | None:
    """95 % percentile interval of ``statistic`` over resampled patients."""
    patients = sorted(values_by_patient)
    if len(patients) < 2:
        return None
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(rounds):
        chosen = rng.choice(len(patients), len(patients), replace=True)
        value = statistic([values_by_patient[patients[i]] for i in chosen])
        if value is not None and np.isfinite(value):
            estimates.append(value)
    if not estimates:
        return None
    return [round(float(np.percentile(estimates, 2.5)), 4), round(float(np.percentile(estimates, 97.5)), 4)]


def _by_patient(results: list[SliceResult]) -> dict[str, list[SliceResult]]:
    grouped: dict[str, list[SliceResult]] = defaultdict(list)
    for r in results:
        grouped[r.patient].append(r)
    return grouped


def _auc_of(groups: list[list[SliceResult]]) -> float:
    flat = [r for g in groups for r in g]
    return roc_auc(np.array([r.probability for r in flat]), np.array([r.label for r in flat]))


def normal_slices_painted(results: list[SliceResult], slice_threshold: float, pixel_threshold: float) -> float:
    """Share of normal CT-ICH slices on which the shipped output shows at least one pixel."""
    normal = [r for r in results if r.source == "ct-ich" and not r.label]
    if not normal:
        return float("nan")
    return float(np.mean([r.probability >= slice_threshold and r.painted(pixel_threshold) > 0 for r in normal]))


def detection_summary(
    results: list[SliceResult], slice_threshold: float, pixel_threshold: float, scan_threshold: float | None = None
) -> dict[str, Any]:
    """Slice- and scan-level detection on CT-ICH, per subtype, and the subtype head's AUCs."""
    results = [r for r in results if r.source == "ct-ich"]
    if not results:
        return {}
    scan_threshold = slice_threshold if scan_threshold is None else scan_threshold
    scores = np.array([r.probability for r in results])
    labels = np.array([r.label for r in results])
    stats = detection_stats(scores, labels, slice_threshold)
    by_patient = _by_patient(results)
    scan_scores = np.array([max(r.probability for r in group) for group in by_patient.values()])
    scan_labels = np.array([any(r.label for r in group) for group in by_patient.values()])
    both_kinds = 0 < scan_labels.sum() < len(scan_labels)
    summary: dict[str, Any] = {
        "patients": len(by_patient),
        "slices": len(results),
        "positive_slices": int(labels.sum()),
        "roc_auc": round(roc_auc(scores, labels), 4),
        "roc_auc_ci95": bootstrap_ci(by_patient, _auc_of),
        "threshold": slice_threshold,
        "sensitivity": round(stats.sensitivity, 4),
        "specificity": round(stats.specificity, 4),
        "normal_slices_painted": round(normal_slices_painted(results, slice_threshold, pixel_threshold), 4),
        "scan_roc_auc": round(roc_auc(scan_scores, scan_labels), 4) if both_kinds else None,
        "scan_roc_auc_ci95": bootstrap_ci(by_patient, _scan_auc_of) if both_kinds else None,
        "scan_positives": int(scan_labels.sum()),
        "scan_threshold": scan_threshold,
        "scan_sensitivity": round(float(np.mean(scan_scores[scan_labels] >= scan_threshold)), 4)
        if scan_labels.any()
        else None,
        "scan_specificity": round(float(np.mean(scan_scores[~scan_labels] < scan_threshold)), 4)
        if (~scan_labels).any()
        else None,
        "per_subtype_roc_auc": {},
        "subtype_head_roc_auc": {},
    }
    negatives = [r for r in results if not r.label]
    for name in SUBTYPES:
        positives = [r for r in results if r.subtypes.get(name)]
        if positives and negatives:
            subset = positives + negatives
            summary["per_subtype_roc_auc"][name] = {
                "roc_auc": round(
                    roc_auc(np.array([r.probability for r in subset]), np.array([r.label for r in subset])), 4
                ),
                "positive_slices": len(positives),
                "sensitivity": round(float(np.mean([r.probability >= slice_threshold for r in positives])), 4),
            }
        head = [r for r in results if name in r.subtype_probabilities]
        truth = np.array([bool(r.subtypes.get(name)) for r in head])
        if head and 0 < truth.sum() < len(truth):
            summary["subtype_head_roc_auc"][name] = {
                "roc_auc": round(roc_auc(np.array([r.subtype_probabilities[name] for r in head]), truth), 4),
                "positive_slices": int(truth.sum()),
            }
    return summary


def _scan_auc_of(groups: list[list[SliceResult]]) -> float:
    scores = np.array([max(r.probability for r in group) for group in groups])
    labels = np.array([any(r.label for r in group) for group in groups])
    return roc_auc(scores, labels) if 0 < labels.sum() < len(labels) else float("nan")


def predicted_top_subtype(group: list[SliceResult]) -> str | None:
    """The subtype the model names first for one patient: the highest of each subtype's scan-level
    probability (its most confident slice's, as the report gives it)."""
    names = sorted({name for r in group for name in r.subtype_probabilities})
    if not names:
        return None
    return max(names, key=lambda name: max(r.subtype_probabilities.get(name, 0.0) for r in group))


def scan_subtype_summary(results: list[SliceResult]) -> dict[str, Any]:
    """Per bleeding CT-ICH patient: is the subtype the model names first one the patient has?

    A patient's truth is every subtype on any of their slices; the confusion table's row is their
    dominant subtype (the one on most slices), its column the model's first subtype.
    """
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    patients = []
    for patient, group in sorted(_by_patient([r for r in results if r.source == "ct-ich"]).items()):
        counts = {name: sum(bool(r.subtypes.get(name)) for r in group) for name in SUBTYPES}
        present = [name for name in SUBTYPES if counts[name]]
        predicted = predicted_top_subtype(group)
        if not present or predicted is None:
            continue
        dominant = max(present, key=lambda name: counts[name])
        confusion[dominant][predicted] += 1
        patients.append({"patient": patient, "truth": present, "predicted": predicted, "right": predicted in present})
    right = sum(p["right"] for p in patients)
    return {
        "bleeding_patients": len(patients),
        "top_subtype_right": right,
        "top_subtype_accuracy": round(right / len(patients), 4) if patients else None,
        "confusion": {row: dict(columns) for row, columns in sorted(confusion.items())},
        "per_patient": patients,
    }


def _mean_dice_at(slice_threshold: float, pixel_threshold: float, gated: bool = True) -> Callable[..., float | None]:
    def statistic(groups: list[list[SliceResult]]) -> float | None:
        values = [
            dice(r.prediction(slice_threshold, pixel_threshold, gated), r.truth)
            for g in groups
            for r in g
            if r.truth is not None and r.label
        ]
        return float(np.mean(values)) if values else None

    return statistic


def pooled_patient_dice(group: list[SliceResult], slice_threshold: float, pixel_threshold: float) -> float | None:
    """Dice pooled over one patient's slices of known truth: masked slices, and normal slices whose
    painted pixels all count as false positives. None without a masked slice."""
    masked = [r for r in group if r.truth is not None and r.label]
    if not masked:
        return None
    intersection = truth_total = predicted_total = 0
    for r in masked:
        predicted = r.prediction(slice_threshold, pixel_threshold)
        assert r.truth is not None
        intersection += int(np.count_nonzero(predicted & r.truth))
        truth_total += int(np.count_nonzero(r.truth))
        predicted_total += int(np.count_nonzero(predicted))
    for r in group:
        if r.truth is None and r.truth_known and r.probability >= slice_threshold:
            predicted_total += r.painted(pixel_threshold)
    return 2.0 * intersection / max(1, truth_total + predicted_total)


def segmentation_summary(
    results: list[SliceResult], slice_threshold: float, pixel_threshold: float, source: str
) -> dict[str, Any]:
    """Dice/IoU on real masks of one ``source``: per slice (gated as shipped and mask head alone),
    per subtype (MBH-Seg), and (CT-ICH) pooled per patient with false positives counted."""
    scored = [r for r in results if r.source == source and r.truth is not None and r.label]
    if not scored:
        return {}
    by_patient = _by_patient(scored)
    gated = [dice(r.prediction(slice_threshold, pixel_threshold), r.truth) for r in scored]
    ungated = [dice(r.prediction(slice_threshold, pixel_threshold, gated=False), r.truth) for r in scored]
    per_subtype: dict[str, list[float]] = defaultdict(list)
    for r in scored:
        for name, truth in r.subtype_truths.items():
            per_subtype[name].append(dice(r.prediction(slice_threshold, pixel_threshold), truth & r.truth))
    summary: dict[str, Any] = {
        "scans": len(by_patient),
        "slices_with_hemorrhage": len(scored),
        "dice": round(float(np.mean(gated)), 4),
        "dice_ci95": bootstrap_ci(by_patient, _mean_dice_at(slice_threshold, pixel_threshold)),
        "dice_median": round(float(np.median(gated)), 4),
        "iou": round(float(np.mean([iou(r.prediction(slice_threshold, pixel_threshold), r.truth) for r in scored])), 4),
        "dice_mask_head_only": round(float(np.mean(ungated)), 4),
        "dice_mask_head_only_ci95": bootstrap_ci(by_patient, _mean_dice_at(slice_threshold, pixel_threshold, False)),
        "per_subtype_dice": {
            k: {"dice": round(float(np.mean(v)), 4), "slices": len(v)} for k, v in per_subtype.items()
        },
    }
    if source == "ct-ich":
        everyone = _by_patient([r for r in results if r.source == "ct-ich"])
        pooled = {
            p: pooled_patient_dice(g, slice_threshold, pixel_threshold) for p, g in everyone.items() if p in by_patient
        }
        summary["pooled_patient_dice"] = round(float(np.mean(list(pooled.values()))), 4)
        summary["pooled_patient_dice_by_patient"] = {p: round(float(v), 4) for p, v in pooled.items() if v is not None}
    return summary


def choose_pixel_threshold(results: list[SliceResult]) -> float:
    """The grid threshold with the best mean Dice of the mask head alone on validation real masks."""
    masked = [r for r in results if r.truth is not None and r.label]
    if not masked:
        return 0.5
    means = [np.mean([dice(r.prediction(0.0, t, gated=False), r.truth) for r in masked]) for t in PIXEL_GRID]
    return PIXEL_GRID[int(np.argmax(means))]


def choose_slice_threshold(results: list[SliceResult], pixel_threshold: float) -> float:
    """The highest threshold that finds :data:`TARGET_SENSITIVITY` of the CT-ICH validation
    hemorrhage slices while painting at most :data:`MAX_NORMAL_SLICES_PAINTED` of the normal ones;
    Youden's J among the allowed thresholds when none reaches the target.

    Sensitivity first, because ichseg triages: a missed small bleed costs more than a flagged
    normal slice. The threshold decides the slice flags and the scan's finding as well as the
    painting, so a rule on painting alone would open the gate wide when the mask head is cautious."""
    ct_ich = [r for r in results if r.source == "ct-ich"]
    scores = np.array([r.probability for r in ct_ich])
    labels = np.array([r.label for r in ct_ich])
    allowed = [
        float(t)
        for t in np.unique(np.round(scores, 4))
        if normal_slices_painted(ct_ich, float(t), pixel_threshold) <= MAX_NORMAL_SLICES_PAINTED
    ]
    if not allowed:
        return float(scores.max())
    stats = {t: detection_stats(scores, labels, t) for t in allowed}
    sensitive = [t for t in allowed if stats[t].sensitivity >= TARGET_SENSITIVITY]
    if sensitive:
        return max(sensitive)
    return max(allowed, key=lambda t: (stats[t].sensitivity + stats[t].specificity, -t))


def choose_scan_threshold(results: list[SliceResult]) -> float:
    """The highest threshold on a scan's most confident slice that still finds every validation
    patient with hemorrhage: at the scan level ichseg must not send a bleeding patient home."""
    by_patient = _by_patient([r for r in results if r.source == "ct-ich"])
    positive = [max(r.probability for r in g) for g in by_patient.values() if any(r.label for r in g)]
    return float(min(positive)) if positive else 0.5


def calibration_summary(results: list[SliceResult], platt: Platt) -> dict[str, Any]:
    """ECE of the shipped (calibrated) slice probabilities and of the raw ones they came from."""
    ct_ich = [r for r in results if r.source == "ct-ich"]
    calibrated = np.array([r.probability for r in ct_ich])
    labels = np.array([r.label for r in ct_ich], dtype=float)
    raw = platt.invert(calibrated)
    return {
        "platt_scale_bias": [platt.scale, platt.bias],
        "ece_raw": reliability(raw, labels).ece,
        "ece_calibrated": reliability(calibrated, labels).ece,
        "slices": len(ct_ich),
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The report as the model card's table."""
    det, cal = report.get("detection", {}), report.get("calibration", {})
    lines = [
        f"### {report['model']['name']} {report['model']['version']} on the {report['split']} split",
        "",
        "| measure | value | 95 % CI (bootstrap over patients) | on |",
        "|---|---|---|---|",
    ]
    if det:
        lines += [
            f"| slice ROC AUC | {det['roc_auc']} | {det['roc_auc_ci95']} | CT-ICH, {det['patients']} patients, "
            f"{det['slices']} slices ({det['positive_slices']} with hemorrhage) |",
            f"| sensitivity @ {det['threshold']} | {det['sensitivity']} | | CT-ICH slices |",
            f"| specificity @ {det['threshold']} | {det['specificity']} | | CT-ICH slices |",
            f"| normal slices with any painted pixel | {det['normal_slices_painted']} | | CT-ICH normal slices "
            f"(target <= {MAX_NORMAL_SLICES_PAINTED}) |",
            f"| scan ROC AUC (max over slices) | {det['scan_roc_auc']} | {det.get('scan_roc_auc_ci95')} | "
            f"{det['patients']} patients "
            f"({det['scan_positives']} with hemorrhage) |",
            f"| scan sensitivity / specificity @ {det.get('scan_threshold')} | {det['scan_sensitivity']} / "
            f"{det['scan_specificity']} | | same |",
        ]
        for name, sub in det["per_subtype_roc_auc"].items():
            lines.append(
                f"| detection ROC AUC, {name} | {sub['roc_auc']} | | {sub['positive_slices']} positive slices vs "
                "all normal |"
            )
        for name, sub in det.get("subtype_head_roc_auc", {}).items():
            lines.append(
                f"| subtype head ROC AUC, {name} | {sub['roc_auc']} | | {sub['positive_slices']} slices with it vs "
                "all others |"
            )
    scan_subtypes = report.get("scan_subtypes") or {}
    if scan_subtypes.get("bleeding_patients"):
        lines.append(
            f"| top subtype right, per bleeding patient | {scan_subtypes['top_subtype_right']} of "
            f"{scan_subtypes['bleeding_patients']} ({scan_subtypes['top_subtype_accuracy']}) | | CT-ICH patients with "
            "hemorrhage: the subtype named first is one the patient has |"
        )
    if cal:
        lines.append(
            f"| expected calibration error, raw -> calibrated | {cal['ece_raw']} -> {cal['ece_calibrated']} | | "
            f"{cal['slices']} CT-ICH slices, Platt scale/bias {cal['platt_scale_bias']} |"
        )
    for key, label in (("segmentation_ct_ich", "CT-ICH radiologist masks"), ("segmentation_mbh", "MBH-Seg masks")):
        seg = report.get(key, {})
        if not seg:
            lines.append(f"| Dice, {label} | n/a | | no masked slice in this split |")
            continue
        on = f"{label}, {seg['scans']} patients/scans, {seg['slices_with_hemorrhage']} slices"
        lines += [
            f"| Dice, {label} (as shipped) | {seg['dice']} | {seg['dice_ci95']} | {on} |",
            f"| Dice, {label}, mask head without the slice gate | {seg['dice_mask_head_only']} | "
            f"{seg['dice_mask_head_only_ci95']} | same |",
            f"| IoU, {label} | {seg['iou']} | | same |",
        ]
        if "pooled_patient_dice" in seg:
            lines.append(
                f"| Dice pooled per patient, false positives counted | {seg['pooled_patient_dice']} | | "
                "every masked and normal slice of those patients |"
            )
        for name, sub in seg["per_subtype_dice"].items():
            lines.append(f"| Dice, {label}, {name} | {sub['dice']} | | {sub['slices']} slices |")
    if scan_subtypes.get("confusion"):
        lines += ["", *subtype_confusion_table(scan_subtypes["confusion"])]
    return "\n".join(lines) + "\n"


def subtype_confusion_table(confusion: dict[str, dict[str, int]]) -> list[str]:
    """Markdown: bleeding patients by their dominant subtype (rows) and the model's first subtype (columns)."""
    columns = [name for name in SUBTYPES if any(name in row for row in confusion.values())]
    lines = [
        "Top subtype per bleeding patient (rows: the subtype on most of the patient's slices; columns: the "
        "subtype the model names first):",
        "",
        "| patient's subtype | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for row in SUBTYPES:
        if row in confusion:
            lines.append(f"| {row} | " + " | ".join(str(confusion[row].get(name, 0)) for name in columns) + " |")
    return lines


def run_split(
    segmenter: OnnxSegmenter, data: Path, split: str, split_file: Path = CT_ICH_SPLIT_FILE
) -> list[SliceResult]:
    """Every CT-ICH and MBH-Seg slice of one split through the model."""
    return evaluate_ct_ich(segmenter, data / "ct-ich", split, split_file) + evaluate_mbh(
        segmenter, data / "mbhseg25-mini", split
    )


def summarise(results: list[SliceResult], segmenter: OnnxSegmenter, split: str) -> dict[str, Any]:
    """The full report of one split at the model's own thresholds."""
    meta = segmenter.metadata
    slice_threshold, pixel_threshold = meta.slice_threshold, meta.pixel_threshold
    return {
        "model": {"name": meta.name, "version": meta.version},
        "split": split,
        "thresholds": {"slice": slice_threshold, "pixel": pixel_threshold},
        "detection": detection_summary(results, slice_threshold, pixel_threshold, meta.finding_threshold),
        "scan_subtypes": scan_subtype_summary(results),
        "calibration": calibration_summary(results, meta.slice_platt),
        "segmentation_ct_ich": segmentation_summary(results, slice_threshold, pixel_threshold, "ct-ich"),
        "segmentation_mbh": segmentation_summary(results, slice_threshold, pixel_threshold, "mbh"),
    }


def choose_operating_point(model: Path, results: list[SliceResult]) -> dict[str, Any]:
    """Calibrate and choose thresholds on validation results of the uncalibrated model; stamp them."""
    from ichseg.model_file import read_metadata, stamp_metadata

    meta = read_metadata(model)
    ct_ich = [r for r in results if r.source == "ct-ich"]
    platt = fit_platt(np.array([r.probability for r in ct_ich]), np.array([r.label for r in ct_ich]))
    subtype_calibration = tuple(
        astuple(
            fit_platt(
                np.array([r.subtype_probabilities[n] for r in ct_ich]),
                np.array([r.subtypes.get(n, False) for r in ct_ich]),
            )
        )
        for n in meta.subtypes
    )
    for r in results:  # thresholds live in calibrated space: move the results there first
        r.probability = float(platt.apply(np.array([r.probability]))[0])
    pixel_threshold = choose_pixel_threshold(results)
    slice_threshold = choose_slice_threshold(results, pixel_threshold)
    # Never below the slice threshold: a scan flagged must have a flagged slice to show.
    scan_threshold = max(slice_threshold, choose_scan_threshold(results))
    chosen: dict[str, Any] = {
        "slice_threshold": round(slice_threshold, 4),
        "scan_threshold": round(scan_threshold, 4),
        "pixel_threshold": round(pixel_threshold, 4),
        "slice_calibration": astuple(platt),
        "subtype_calibration": subtype_calibration,
    }
    stamp_metadata(model, meta.with_updates(**chosen))
    log.info("chose %s on validation", chosen)
    return chosen


def evaluate(
    model: Path,
    split: str,
    data: Path,
    out: Path,
    choose_thresholds: bool = False,
    figures: Path | None = None,
    split_file: Path = CT_ICH_SPLIT_FILE,
    test_time_flip: bool | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``split`` of the pinned CT-ICH ``split_file`` (choosing its operating
    point first, on val only). ``test_time_flip`` (with ``choose_thresholds``) turns the mirrored
    second reading on or off in the model's metadata before its operating point is chosen."""
    if choose_thresholds and split != "val":
        raise ValueError("thresholds and calibration are chosen on validation patients only, never on test")
    if test_time_flip is not None and not choose_thresholds:
        raise ValueError("the mirrored reading changes what the thresholds mean: choose them again with it")
    if choose_thresholds:
        from ichseg.model_file import read_metadata, stamp_metadata

        # Calibration is fitted to the raw heads: evaluate without any earlier calibration.
        raw = read_metadata(model).with_updates(slice_calibration=(1.0, 0.0), subtype_calibration=())
        if test_time_flip is not None:
            raw = raw.with_updates(test_time_flip=test_time_flip)
        stamp_metadata(model, raw)
        choose_operating_point(model, run_split(OnnxSegmenter(model), data, "val", split_file))
    segmenter = OnnxSegmenter(model)
    results = run_split(segmenter, data, split, split_file)
    report = summarise(results, segmenter, split)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{split}.json").write_text(json.dumps(report, indent=2))
    (out / f"{split}.md").write_text(markdown_table(report))
    if figures is not None:
        from training.figures import write_split_figures

        write_split_figures(results, segmenter.metadata, split, figures)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate an ichseg ONNX model on held-out patients.")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=Path("build/eval"))
    parser.add_argument("--figures", type=Path, default=None, help="write ROC and reliability PNGs here")
    parser.add_argument("--choose-thresholds", action="store_true", help="calibrate and pick thresholds on val")
    parser.add_argument(
        "--split-file",
        type=Path,
        default=CT_ICH_SPLIT_FILE,
        help="the pinned CT-ICH split (training/splits/ct-ich-0.2.json for ichseg-unet 0.2.0)",
    )
    parser.add_argument(
        "--test-time-flip",
        choices=("on", "off"),
        default=None,
        help="with --choose-thresholds: read each slice also mirrored left-right (kept in the model's metadata)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    flip = None if args.test_time_flip is None else args.test_time_flip == "on"
    report = evaluate(
        args.model, args.split, args.data, args.out, args.choose_thresholds, args.figures, args.split_file, flip
    )
    print(markdown_table(report))


if __name__ == "__main__":
    main()
