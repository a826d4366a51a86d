"""The training set: every source brought into model space by the serving preprocessing.

Sources, each with what it can honestly teach:
- **CT-ICH** (77 patients, slice and subtype labels, 22 radiologist pixel masks on 13 patients): slice labels for
  the detection and subtype heads; the real masks where they exist (flagged ``real_mask``, and
  oversampled in training), weak pixel targets (:mod:`training.weak_labels`) on the other
  hemorrhage slices; empty masks on normal slices. Each patient is read as one scan, exactly as a
  user's folder is, so every slice gets its real neighbours (2.5-D input). Split by patient; the
  demo patient 051 is always in test.
- **MBH-Seg mini** (36 real slices with pixel masks, 25 scans): exact masks; split by scan, half of
  the scans held out for testing Dice on real masks.
- **Synthetic head CT** (:mod:`training.synthetic`): exact masks for every subtype; teaches shape.

Targets are cleared outside the intracranial region that serving uses (``InputSpec.intracranial_only``).
Build once (``python -m training.training_set``), then train from the ``.npz`` it writes.
Evaluation does NOT read this file: it runs the full pipeline on the original slices.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ichseg.preprocess import InputSpec, model_input_spec, place_mask, prepare_batch
from ichseg.readers import read_scan
from ichseg.windowing import CT_ICH_BRAIN, apply_window
from training.datasets import (
    CT_ICH_SPLIT_FILE,
    SHARED_DATA,
    CtIchSlice,
    list_ct_ich_slices,
    load_ct_ich_mask,
    load_mbhseg,
    pinned_ct_ich_split,
    split_by_patient,
)
from training.self_training import pseudo_target
from training.synthetic import SUBTYPES, synthetic_slice
from training.weak_labels import weak_target

if TYPE_CHECKING:  # ONNX Runtime only for a self-training build, never at a training run's start
    from ichseg.inference import OnnxSegmenter

log = logging.getLogger("ichseg.training_set")

REPO = Path(__file__).resolve().parents[1]
SPLIT_SEED = 2026
MBH_FRACTIONS = (0.3, 0.2, 0.5)
"""MBH-Seg holds the only real masks: half its scans are kept for testing Dice."""
WEAK_POSITIVE_WEIGHT = 0.5
"""Pixel weight of weak targets on CT-ICH hemorrhage slices, relative to exact masks."""
SYNTHETIC_LABEL_WEIGHT = 0.3
"""Synthetic slices teach masks; their slice labels weigh less than real ones."""


def mbh_to_ct_ich_orientation(image: np.ndarray) -> np.ndarray:
    """MBH-Seg slices are stored upside down relative to CT-ICH (table at the top): flip rows."""
    return np.ascontiguousarray(image[::-1])


@dataclass
class TrainingSet:
    """Rows of model-space inputs and targets with their provenance."""

    images: np.ndarray  # (N, S, S, C) uint8: the slice (and its neighbours) as the model sees them
    masks: np.ndarray  # (N, S, S) uint8, 0..255
    mask_weights: np.ndarray  # (N, S, S) uint8, 0..255
    labels: np.ndarray  # (N,) float32 slice label
    label_weights: np.ndarray  # (N,) float32
    subtypes: np.ndarray  # (N, 5) uint8, SUBTYPES order
    split: np.ndarray  # (N,) str: train / val / test
    source: np.ndarray  # (N,) str: ct-ich / mbh / synthetic
    patient: np.ndarray  # (N,) str
    slice_id: np.ndarray  # (N,) str
    real_mask: np.ndarray  # (N,) bool: the mask is a radiologist's (CT-ICH *_HGE_Seg, MBH-Seg)

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, **{k: getattr(self, k) for k in self.__dataclass_fields__})


def load_training_set(path: str | Path) -> TrainingSet:
    """Load a saved set; ``path`` may be a folder holding one ``.npz`` (a SageMaker channel)."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.npz"))
        if not candidates:
            raise FileNotFoundError(f"{path}: no .npz training set inside")
        path = candidates[0]
    with np.load(path, allow_pickle=False) as data:
        return TrainingSet(**{k: data[k] for k in TrainingSet.__dataclass_fields__})


class _Rows:
    def __init__(self) -> None:
        self.rows: dict[str, list] = {k: [] for k in TrainingSet.__dataclass_fields__}

    def add(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        weight: np.ndarray,
        label: float,
        label_weight: float,
        subtypes: list[int],
        split: str,
        source: str,
        patient: str,
        slice_id: str,
        real_mask: bool,
    ) -> None:
        values = (image, mask, weight, label, label_weight, subtypes, split, source, patient, slice_id, real_mask)
        for key, value in zip(self.rows, values, strict=True):
            self.rows[key].append(value)

    def build(self) -> TrainingSet:
        r = self.rows
        return TrainingSet(
            images=np.stack(r["images"]).astype(np.uint8),
            masks=np.stack(r["masks"]).astype(np.uint8),
            mask_weights=np.stack(r["mask_weights"]).astype(np.uint8),
            labels=np.array(r["labels"], np.float32),
            label_weights=np.array(r["label_weights"], np.float32),
            subtypes=np.array(r["subtypes"], np.uint8).reshape(-1, len(SUBTYPES)),
            split=np.array(r["split"]),
            source=np.array(r["source"]),
            patient=np.array(r["patient"]),
            slice_id=np.array(r["slice_id"]),
            real_mask=np.array(r["real_mask"], bool),
        )


def _to_model_space(
    slices_u8: np.ndarray, masks: np.ndarray, weights: np.ndarray, spec: InputSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive slices of one scan (or one slice) and their targets, through the serving
    preprocessing: ``(N, S, S, C)`` inputs, ``(N, S, S)`` targets and trust, all uint8."""
    batch = prepare_batch(np.asarray(slices_u8, np.uint8), spec)
    images = np.rint(batch.inputs * 255).astype(np.uint8)
    targets, trusts = [], []
    for mask, weight, placement, region in zip(masks, weights, batch.placements, batch.regions, strict=True):
        target = place_mask(mask.astype(np.float32) * 255, placement, spec.size) * region
        # Outside the slice (zero padding) nothing is known: weight stays as placed (0 there).
        trust = place_mask(weight.astype(np.float32) * 255, placement, spec.size)
        targets.append(np.rint(target * 255).astype(np.uint8))
        trusts.append(np.rint(trust * 255).astype(np.uint8))
    return images, np.stack(targets), np.stack(trusts)


def add_ct_ich(
    rows: _Rows,
    root: Path,
    spec: InputSpec,
    limit: int | None = None,
    split_file: Path = CT_ICH_SPLIT_FILE,
    teacher: OnnxSegmenter | None = None,
) -> None:
    """CT-ICH rows, patient by patient; with a ``teacher``, training patients' bleeding slices
    without a radiologist mask take its confident outline (:mod:`training.self_training`).
    Validation and test rows keep the weak targets, so that validation loss stays comparable
    between rounds."""
    slices = list_ct_ich_slices(root)[:limit]
    splits = pinned_ct_ich_split(slices, split_file)
    split_of = {p: name for name, patients in splits.items() for p in patients}
    by_patient: dict[str, dict[str, CtIchSlice]] = {}
    for item in slices:
        by_patient.setdefault(item.patient, {})[str(item.slice_number)] = item
    taught_count = candidates = 0
    for patient, items in by_patient.items():
        # The patient's folder read as a user's upload: serving order, real neighbours.
        scan = read_scan(root / "Patients_CT" / patient)
        stack = np.asarray(scan.slices, np.uint8)
        taught = teacher is not None and split_of[patient] == "train"
        probabilities = teacher.predict(stack).probabilities if teacher is not None and taught else None
        masks, weights, real = [], [], []
        for index, (image, slice_id) in enumerate(zip(stack, scan.slice_ids, strict=True)):
            item = items.get(slice_id)
            real_mask = load_ct_ich_mask(item) if item is not None and item.mask_path is not None else None
            if real_mask is not None:  # the release's radiologist masks win over weak targets
                mask, weight = real_mask.astype(np.float32), np.ones(image.shape, np.float32)
            else:
                positive = item is not None and item.any_hemorrhage
                target = weak_target(image, positive)
                if positive and probabilities is not None:
                    weak, target = target, pseudo_target(probabilities[index], target)
                    candidates += 1
                    taught_count += target is not weak
                # Weak positives are guesses: they count half as much as exact masks.
                mask, weight = target.mask, target.weight * (WEAK_POSITIVE_WEIGHT if positive else 1.0)
            masks.append(mask)
            weights.append(weight)
            real.append(real_mask is not None)
        images, targets, trusts = _to_model_space(stack, np.stack(masks), np.stack(weights), spec)
        for index, slice_id in enumerate(scan.slice_ids):
            item = items.get(slice_id)
            if item is None:  # an image without a CSV row: context for its neighbours only
                continue
            rows.add(
                images[index],
                targets[index],
                trusts[index],
                float(item.any_hemorrhage),
                1.0,
                [int(item.subtypes[s]) for s in SUBTYPES],
                split_of[item.patient],
                "ct-ich",
                item.patient,
                slice_id,
                real[index],
            )
    if teacher is not None:
        log.info(
            "teacher outlined %d of %d training bleeding slices without a radiologist mask", taught_count, candidates
        )


def add_mbh(rows: _Rows, root: Path, spec: InputSpec) -> None:
    slices = load_mbhseg(root, outside_air_hu=-1000.0)
    splits = split_by_patient([s.case_id for s in slices], MBH_FRACTIONS, seed=SPLIT_SEED)
    split_of = {p: name for name, patients in splits.items() for p in patients}
    for item in slices:
        image = mbh_to_ct_ich_orientation(apply_window(item.hu, CT_ICH_BRAIN))
        mask = mbh_to_ct_ich_orientation(item.mask)
        images, targets, trusts = _to_model_space(image[None], mask[None], np.ones((1, *mask.shape), np.float32), spec)
        rows.add(
            images[0],
            targets[0],
            trusts[0],
            1.0,
            1.0,
            [int(item.subtype_masks[s].any()) for s in SUBTYPES],
            split_of[item.case_id],
            "mbh",
            f"mbh-{item.case_id}",
            item.slice_id,
            True,
        )


def add_synthetic(rows: _Rows, count: int, spec: InputSpec, seed: int, val_fraction: float = 0.1) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        item = synthetic_slice(rng, size=320)
        image = apply_window(item.hu, CT_ICH_BRAIN)
        images, targets, trusts = _to_model_space(
            image[None], item.mask[None], np.ones((1, *image.shape), np.float32), spec
        )
        split = "val" if i < count * val_fraction else "train"
        rows.add(
            images[0],
            targets[0],
            trusts[0],
            float(bool(item.subtypes)),
            SYNTHETIC_LABEL_WEIGHT,
            [int(s in item.subtypes) for s in SUBTYPES],
            split,
            "synthetic",
            f"synthetic-{i}",
            str(i),
            False,
        )


def build_training_set(
    shared_data: Path = SHARED_DATA,
    size: int = 160,
    synthetic_count: int = 1200,
    seed: int = 11,
    ct_ich_limit: int | None = None,
    split_file: Path = CT_ICH_SPLIT_FILE,
    teacher: Path | None = None,
) -> TrainingSet:
    """Assemble every source into model space with the serving preprocessing (CT-ICH patients
    split as the pinned ``split_file`` says; a ``teacher`` model for self-training)."""
    spec = model_input_spec(size)
    rows = _Rows()
    segmenter = None
    if teacher is not None:
        from ichseg.inference import OnnxSegmenter

        segmenter = OnnxSegmenter(teacher, providers=("CPUExecutionProvider",))
    add_ct_ich(rows, shared_data / "ct-ich", spec, limit=ct_ich_limit, split_file=split_file, teacher=segmenter)
    add_mbh(rows, shared_data / "mbhseg25-mini", spec)
    add_synthetic(rows, synthetic_count, spec, seed)
    return rows.build()


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the ichseg training set (.npz) from ../shared/data.")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--synthetic", type=int, default=1200)
    parser.add_argument("--out", type=Path, default=REPO / "build" / "training-set-160.npz")
    parser.add_argument(
        "--split-file",
        type=Path,
        default=CT_ICH_SPLIT_FILE,
        help="the pinned CT-ICH split (training/splits/ct-ich-0.2.json rebuilds 0.2.0's training set)",
    )
    parser.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="an exported model (.onnx) whose confident outlines replace the weak targets (self-training)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = build_training_set(args.data, args.size, args.synthetic, split_file=args.split_file, teacher=args.teacher)
    data.save(args.out)
    for split in ("train", "val", "test"):
        for source in ("ct-ich", "mbh", "synthetic"):
            sel = (data.split == split) & (data.source == source)
            log.info(
                "%s %s: %d rows, %d positive, %d real masks",
                split,
                source,
                sel.sum(),
                int(data.labels[sel].sum()),
                int(data.real_mask[sel].sum()),
            )
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
