"""Self-training: a trained model's confident outlines as pixel targets on CT-ICH bleeding slices.

CT-ICH has radiologist masks on 22 slices. Its other bleeding slices get intensity weak targets
(:mod:`training.weak_labels`): every dense region inside the skull, which takes in partial-volume
cortex and venous sinus beside the bleed. A model trained on those, on the real masks and on
synthetic shapes outlines bleeds better than the heuristic it learnt from, so its confident pixels
become the next round's targets (a teacher), with three rules that keep its mistakes from becoming
labels:

- only slices labelled hemorrhage and without a radiologist mask change; normal slices keep their
  empty target, so a teacher's false alarm never becomes a label;
- only inside the intracranial region (the teacher's maps are zero outside it, as in serving);
- pixels the teacher is unsure of (between :data:`BACKGROUND` and :data:`CONFIDENT`) and specks
  smaller than a bleed get no weight; a bleeding slice the teacher paints nothing confident on
  keeps its weak target.

Rounds: build the set with ``python -m training.training_set --teacher MODEL.onnx``, train, export,
evaluate Dice on validation patients; repeat with the new model while validation Dice improves.
``python -m training.self_training --teacher MODEL.onnx`` compares the two kinds of target with the
radiologist's outlines on held-out patients, before any training.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from training.datasets import SHARED_DATA
from training.metrics import dice
from training.weak_labels import MIN_AREA_AT_650, WeakTarget, weak_target

log = logging.getLogger("ichseg.self_training")

CONFIDENT = 0.7
"""A teacher's pixel probability from which the pixel is a bleed target."""
BACKGROUND = 0.2
"""A teacher's pixel probability up to which the pixel is a no-bleed target."""
MIN_AREA_FRACTION = 0.25
"""Confident regions smaller than this share of the weak targets' smallest bleed are specks."""


def pseudo_target(probabilities: np.ndarray, fallback: WeakTarget) -> WeakTarget:
    """The target of a slice labelled hemorrhage from a teacher's ``(H, W)`` probabilities (zero
    outside the intracranial region), or ``fallback`` where the teacher is confident of nothing."""
    confident = probabilities >= CONFIDENT
    labels, count = ndimage.label(confident)
    sizes = ndimage.sum(confident, labels, range(1, count + 1)) if count else np.zeros(0)
    min_area = MIN_AREA_AT_650 * MIN_AREA_FRACTION * (max(probabilities.shape) / 650) ** 2
    kept = np.isin(labels, 1 + np.flatnonzero(sizes >= min_area))
    if not kept.any():
        return fallback
    weight = np.ones(probabilities.shape, np.float32)
    weight[(probabilities > BACKGROUND) & ~kept] = 0.0  # unsure pixels and specks teach nothing
    return WeakTarget(kept.astype(np.float32), weight)


@dataclass(frozen=True)
class TargetAgreement:
    """How well one kind of target matches the radiologist's outline on one slice."""

    patient: str
    slice_id: str
    weak_dice: float
    teacher_dice: float
    teacher_used: bool
    """False: the teacher was confident of nothing and the weak target stands."""


def compare_targets(teacher_path: Path, data: Path, split: str) -> list[TargetAgreement]:
    """Weak and teacher targets against the radiologist's masks on ``split``'s masked slices."""
    from ichseg.inference import OnnxSegmenter
    from ichseg.readers import read_scan
    from training.datasets import list_ct_ich_slices, load_ct_ich_mask, pinned_ct_ich_split

    teacher = OnnxSegmenter(teacher_path)
    slices = list_ct_ich_slices(data)
    patients = pinned_ct_ich_split(slices)[split]
    masked = [s for s in slices if s.patient in patients and s.mask_path is not None]
    results = []
    for patient in sorted({s.patient for s in masked}):
        scan = read_scan(data / "Patients_CT" / patient)
        stack = np.asarray(scan.slices, np.uint8)
        probabilities = teacher.predict(stack).probabilities
        index_of = {slice_id: i for i, slice_id in enumerate(scan.slice_ids)}
        for item in (s for s in masked if s.patient == patient):
            truth = load_ct_ich_mask(item)
            if truth is None:
                continue
            index = index_of[str(item.slice_number)]
            weak = weak_target(stack[index], True)
            target = pseudo_target(probabilities[index], weak)
            results.append(
                TargetAgreement(
                    patient,
                    str(item.slice_number),
                    dice(weak.mask > 0, truth > 0),
                    dice(target.mask > 0, truth > 0),
                    target is not weak,
                )
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare weak and teacher targets with radiologist masks.")
    parser.add_argument("--teacher", type=Path, required=True, help="an exported ichseg model (.onnx)")
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "ct-ich")
    parser.add_argument("--split", choices=("train", "val"), default="val", help="never test: targets are chosen here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    rows = compare_targets(args.teacher, args.data, args.split)
    print("| patient | slice | weak target Dice | teacher target Dice | teacher used |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.patient} | {row.slice_id} | {row.weak_dice:.3f} | {row.teacher_dice:.3f} | {row.teacher_used} |")
    if rows:
        weak_mean = float(np.mean([r.weak_dice for r in rows]))
        teacher_mean = float(np.mean([r.teacher_dice for r in rows]))
        print(f"| mean of {len(rows)} | | {weak_mean:.3f} | {teacher_mean:.3f} | |")


if __name__ == "__main__":
    main()
