"""Honest evaluation of an exported model on patients it never saw.

    .venv/bin/python -m training.evaluate --model models/ichseg-unet.onnx --split test --out build/eval

Runs the shipped inference path (``ichseg.inference``: the same reader, windowing, cropping and
ONNX Runtime session as ``ichseg segment``) on the original slices of the chosen split:
- CT-ICH patients (``Patients_CT/<id>`` read as a user's folder): slice-level ROC AUC,
  sensitivity and specificity at the operating threshold, per subtype where labelled; Dice/IoU
  wherever pixel masks exist (the full release's ``*_HGE_Seg.jpg``; none in this copy).
- MBH-Seg scans (real radiologist masks): Dice/IoU per slice with hemorrhage, per subtype.
95 % confidence intervals come from a bootstrap over patients (scans), not slices.

With ``--choose-thresholds`` (only allowed on ``val``) it picks the slice threshold (Youden's J on
CT-ICH) and the pixel threshold (mean Dice on MBH) and writes them into the model's metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.inference import OnnxSegmenter
from ichseg.metrics import detection_stats, dice, iou, roc_auc
from ichseg.scan import read_scan
from ichseg.windowing import apply_window
from training.datasets import list_ct_ich_slices, load_ct_ich_mask, load_mbhseg, split_by_patient, split_ct_ich
from training.synthetic import SUBTYPES
from training.training_set import (
    CT_ICH_FRACTIONS,
    MBH_FRACTIONS,
    SHARED_DATA,
    SPLIT_SEED,
    mbh_to_ct_ich_orientation,
)

log = logging.getLogger("ichseg.evaluate")
BOOTSTRAP_ROUNDS = 1000


@dataclass
class SliceResult:
    patient: str
    slice_id: str
    label: bool
    subtypes: dict[str, bool]
    probability: float
    dice: float | None = None
    iou: float | None = None
    dice_ungated: float | None = None
    subtype_dice: dict[str, float] = field(default_factory=dict)


def evaluate_ct_ich(segmenter: OnnxSegmenter, root: Path, split: str) -> list[SliceResult]:
    """Run the model on every CT-ICH patient of ``split``, read exactly as a user's folder would be."""
    slices = list_ct_ich_slices(root)
    patients = sorted(split_ct_ich(slices, CT_ICH_FRACTIONS, seed=SPLIT_SEED)[split])
    by_patient: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in slices:
        by_patient[item.patient][str(item.slice_number)] = item
    results = []
    meta = segmenter.metadata
    for patient in patients:
        scan = read_scan(root / "Patients_CT" / patient)
        prediction = segmenter.predict(np.asarray(scan.slices, dtype=np.uint8))
        for index, slice_id in enumerate(scan.slice_ids):
            item = by_patient[patient].get(slice_id)
            if item is None:
                continue
            probability = float(prediction.slice_probabilities[index])
            result = SliceResult(patient, slice_id, item.any_hemorrhage, dict(item.subtypes), probability)
            truth = load_ct_ich_mask(item)
            if truth is not None and item.mask_path is not None:
                predicted = prediction.probabilities[index] >= meta.pixel_threshold
                result.dice_ungated = dice(predicted, truth)
                predicted &= probability >= meta.slice_threshold
                result.dice, result.iou = dice(predicted, truth), iou(predicted, truth)
            results.append(result)
        log.info("CT-ICH %s: %d slices", patient, scan.num_slices)
    return results


def evaluate_mbh(
    segmenter: OnnxSegmenter, root: Path, split: str, pixel_threshold: float | None = None
) -> list[SliceResult]:
    """Dice/IoU against real radiologist masks on the MBH-Seg scans of ``split``."""
    items = load_mbhseg(root, outside_air_hu=-1000.0)
    cases = split_by_patient([s.case_id for s in items], MBH_FRACTIONS, seed=SPLIT_SEED)[split]
    meta = segmenter.metadata
    threshold = meta.pixel_threshold if pixel_threshold is None else pixel_threshold
    results = []
    for item in (s for s in items if s.case_id in cases):
        image = mbh_to_ct_ich_orientation(apply_window(item.hu, meta.window_preset))
        truth = mbh_to_ct_ich_orientation(item.mask)
        prediction = segmenter.predict(image[None])
        probability = float(prediction.slice_probabilities[0])
        predicted = prediction.probabilities[0] >= threshold
        gated = predicted & (probability >= meta.slice_threshold)
        subtype_dice = {
            name: dice(gated, mbh_to_ct_ich_orientation(item.subtype_masks[name]) & truth)
            for name in SUBTYPES
            if item.subtype_masks[name].any()
        }
        results.append(
            SliceResult(
                f"mbh-{item.case_id}",
                item.slice_id,
                True,
                {n: bool(item.subtype_masks[n].any()) for n in SUBTYPES},
                probability,
                dice(gated, truth),
                iou(gated, truth),
                dice(predicted, truth),
                subtype_dice,
            )
        )
    return results


def bootstrap_ci(values_by_patient: dict[str, list[float]], statistic, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0):  # type: ignore[no-untyped-def]
    """95 % percentile interval of ``statistic`` over resampled patients."""
    patients = sorted(values_by_patient)
    if len(patients) < 2:
        return None
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(rounds):
        chosen = rng.choice(len(patients), len(patients), replace=True)
        sample = [values_by_patient[patients[i]] for i in chosen]
        value = statistic(sample)
        if value is not None and np.isfinite(value):
            estimates.append(value)
    if not estimates:
        return None
    return [round(float(np.percentile(estimates, 2.5)), 4), round(float(np.percentile(estimates, 97.5)), 4)]


def _auc_of(groups: list[list[SliceResult]]) -> float:
    flat = [r for g in groups for r in g]
    return roc_auc(np.array([r.probability for r in flat]), np.array([r.label for r in flat]))


def detection_summary(results: list[SliceResult], threshold: float) -> dict[str, Any]:
    """Slice-level detection on CT-ICH: AUC (with CI), sensitivity/specificity at ``threshold``, per subtype."""
    if not results:
        return {}
    scores = np.array([r.probability for r in results])
    labels = np.array([r.label for r in results])
    stats = detection_stats(scores, labels, threshold)
    by_patient: dict[str, list[SliceResult]] = defaultdict(list)
    for r in results:
        by_patient[r.patient].append(r)
    summary: dict[str, Any] = {
        "patients": len(by_patient),
        "slices": len(results),
        "positive_slices": int(labels.sum()),
        "roc_auc": round(roc_auc(scores, labels), 4),
        "roc_auc_ci95": bootstrap_ci(by_patient, _auc_of),  # type: ignore[arg-type]
        "threshold": threshold,
        "sensitivity": round(stats.sensitivity, 4),
        "specificity": round(stats.specificity, 4),
        "per_subtype_roc_auc": {},
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
                "sensitivity": round(float(np.mean([r.probability >= threshold for r in positives])), 4),
            }
    return summary


def _mean_dice(groups: list[list[SliceResult]], attribute: str = "dice") -> float | None:
    values = [getattr(r, attribute) for g in groups for r in g if getattr(r, attribute) is not None]
    return float(np.mean(values)) if values else None


def segmentation_summary(results: list[SliceResult]) -> dict[str, Any]:
    """Dice/IoU on slices with hemorrhage (real masks), gated as shipped and mask-head only."""
    scored = [r for r in results if r.dice is not None and r.label]
    if not scored:
        return {}
    by_patient: dict[str, list[SliceResult]] = defaultdict(list)
    for r in scored:
        by_patient[r.patient].append(r)
    per_subtype = defaultdict(list)
    for r in scored:
        for name, value in r.subtype_dice.items():
            per_subtype[name].append(value)
    return {
        "scans": len(by_patient),
        "slices_with_hemorrhage": len(scored),
        "dice": round(float(np.mean([r.dice for r in scored])), 4),
        "dice_ci95": bootstrap_ci(by_patient, _mean_dice),  # type: ignore[arg-type]
        "dice_median": round(float(np.median([r.dice for r in scored])), 4),
        "iou": round(float(np.mean([r.iou for r in scored])), 4),
        "dice_mask_head_only": round(float(np.mean([r.dice_ungated for r in scored])), 4),
        "per_subtype_dice": {
            k: {"dice": round(float(np.mean(v)), 4), "slices": len(v)} for k, v in per_subtype.items()
        },
    }


def choose_slice_threshold(results: list[SliceResult]) -> float:
    """Youden's J (sensitivity + specificity - 1) on validation slices."""
    scores = np.array([r.probability for r in results])
    labels = np.array([r.label for r in results])
    best, best_j = 0.5, -1.0
    for threshold in np.unique(np.round(scores, 3)):
        stats = detection_stats(scores, labels, float(threshold))
        j = stats.sensitivity + stats.specificity - 1
        if j > best_j:
            best, best_j = float(threshold), j
    return best


def choose_pixel_threshold(segmenter: OnnxSegmenter, root: Path) -> float:
    """The pixel threshold with the best mean Dice (mask head only) on validation MBH slices."""
    candidates = np.round(np.arange(0.2, 0.81, 0.05), 2)
    means = [np.mean([r.dice_ungated for r in evaluate_mbh(segmenter, root, "val", float(t))]) for t in candidates]
    return float(candidates[int(np.argmax(means))])


def markdown_table(report: dict[str, Any]) -> str:
    det, seg = report.get("detection", {}), report.get("segmentation", {})
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
        ]
        for name, sub in det["per_subtype_roc_auc"].items():
            lines.append(
                f"| ROC AUC, {name} | {sub['roc_auc']} | | {sub['positive_slices']} positive slices vs all normal |"
            )
    if seg:
        lines += [
            f"| Dice, slices with hemorrhage | {seg['dice']} | {seg['dice_ci95']} | "
            f"MBH-Seg real masks, {seg['scans']} scans, {seg['slices_with_hemorrhage']} slices |",
            f"| IoU, slices with hemorrhage | {seg['iou']} | | same |",
            f"| Dice, mask head without the slice gate | {seg['dice_mask_head_only']} | | same |",
        ]
        for name, sub in seg["per_subtype_dice"].items():
            lines.append(f"| Dice, {name} | {sub['dice']} | | {sub['slices']} slices |")
    return "\n".join(lines) + "\n"


def evaluate(model: Path, split: str, data: Path, out: Path, choose_thresholds: bool = False) -> dict[str, Any]:
    if choose_thresholds and split != "val":
        raise ValueError("thresholds are chosen on validation patients only, never on test")
    segmenter = OnnxSegmenter(model)
    if choose_thresholds:
        from model_export.metadata_io import stamp_thresholds

        ct_ich_val = evaluate_ct_ich(segmenter, data / "ct-ich", "val")
        slice_threshold = choose_slice_threshold(ct_ich_val)
        pixel_threshold = choose_pixel_threshold(segmenter, data / "mbhseg25-mini")
        stamp_thresholds(model, slice_threshold=slice_threshold, pixel_threshold=pixel_threshold)
        segmenter = OnnxSegmenter(model)
        log.info("chose slice threshold %.3f, pixel threshold %.2f", slice_threshold, pixel_threshold)
    meta = segmenter.metadata
    ct_ich = evaluate_ct_ich(segmenter, data / "ct-ich", split)
    mbh = evaluate_mbh(segmenter, data / "mbhseg25-mini", split)
    report = {
        "model": {"name": meta.name, "version": meta.version},
        "split": split,
        "thresholds": {"slice": meta.slice_threshold, "pixel": meta.pixel_threshold},
        "detection": detection_summary(ct_ich, meta.slice_threshold),
        "segmentation": segmentation_summary(mbh + ct_ich),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{split}.json").write_text(json.dumps(report, indent=2))
    (out / f"{split}.md").write_text(markdown_table(report))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate an ichseg ONNX model on held-out patients.")
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=Path("build/eval"))
    parser.add_argument("--choose-thresholds", action="store_true", help="pick thresholds on val and store them")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    report = evaluate(args.model, args.split, args.data, args.out, args.choose_thresholds)
    print(markdown_table(report))


if __name__ == "__main__":
    main()
