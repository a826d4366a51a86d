"""What an input size can show at most: radiologist outlines through the serving geometry and back.

A model reading 160 px squares cannot draw a finer outline than 160 px allow, whatever it learns.
Each radiologist mask is taken where serving takes its slice (the head crop, the intracranial
region), brought to ``size`` px as a training target is, and back to the slice's own size as the
model's map is; the Dice of that round trip against the mask itself is the ceiling the input size
puts on Dice, and small bleeds are where it bites. Training and validation masks only: the size is
a design choice, and choices are not made on test patients.

``python -m training.input_size --sizes 160 224 256``
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichseg.preprocess import model_input_spec, place_mask, prepare_batch, restore_probabilities
from training.datasets import SHARED_DATA
from training.metrics import dice

SIZE_CLASSES = ((0, 500, "small (< 500 px)"), (500, 2000, "medium"), (2000, 10**9, "large (>= 2000 px)"))
"""Bleed area in the slice's own pixels (CT-ICH 650 px, MBH-Seg 512 px across)."""


@dataclass(frozen=True)
class Outline:
    """One radiologist outline on its (windowed, 8-bit) slice."""

    source: str
    name: str
    slice_u8: np.ndarray
    mask: np.ndarray


def round_trip_dice(outline: Outline, size: int) -> float:
    """Dice of the outline against itself after a trip through ``size`` px model space."""
    spec = model_input_spec(size)
    batch = prepare_batch(outline.slice_u8[None], spec)
    target = place_mask(outline.mask.astype(bool), batch.placements[0], size) * batch.regions[0]
    restored = restore_probabilities(target[None], batch.placements)[0]
    return dice(restored >= 0.5, outline.mask.astype(bool))


def held_in_outlines(data: Path) -> Iterator[Outline]:
    """The radiologist outlines of training and validation patients (CT-ICH and MBH-Seg)."""
    from ichseg.windowing import CT_ICH_BRAIN, apply_window
    from training.datasets import (
        list_ct_ich_slices,
        load_ct_ich_image,
        load_ct_ich_mask,
        load_mbhseg,
        pinned_ct_ich_split,
        split_by_patient,
    )
    from training.training_set import MBH_FRACTIONS, SPLIT_SEED, mbh_to_ct_ich_orientation

    slices = list_ct_ich_slices(data / "ct-ich")
    split = pinned_ct_ich_split(slices)
    held_in = split["train"] | split["val"]
    for item in slices:
        mask = load_ct_ich_mask(item) if item.patient in held_in and item.mask_path is not None else None
        if mask is not None and mask.any():
            yield Outline("ct-ich", f"{item.patient}/{item.slice_number}", load_ct_ich_image(item), mask)
    mbh = load_mbhseg(data / "mbhseg25-mini", outside_air_hu=-1000.0)
    splits = split_by_patient([s.case_id for s in mbh], MBH_FRACTIONS, seed=SPLIT_SEED)
    for item in mbh:
        if item.case_id not in splits["test"] and item.mask.any():
            image = mbh_to_ct_ich_orientation(apply_window(item.hu, CT_ICH_BRAIN))
            yield Outline("mbh", item.slice_id, image, mbh_to_ct_ich_orientation(item.mask))


def main() -> None:
    parser = argparse.ArgumentParser(description="The Dice ceiling each input size puts on outlines.")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 224, 256])
    args = parser.parse_args()
    outlines = list(held_in_outlines(args.data))
    areas = np.array([int(o.mask.astype(bool).sum()) for o in outlines])
    ceilings = {size: np.array([round_trip_dice(o, size) for o in outlines]) for size in args.sizes}
    print("| outlines | count | " + " | ".join(f"{s} px mean (min)" for s in args.sizes) + " |")
    print("|---|---|" + "---|" * len(args.sizes))
    for low, high, label in SIZE_CLASSES:
        chosen = (areas >= low) & (areas < high)
        if chosen.any():
            cells = [f"{ceilings[s][chosen].mean():.3f} ({ceilings[s][chosen].min():.3f})" for s in args.sizes]
            print(f"| {label} | {int(chosen.sum())} | " + " | ".join(cells) + " |")
    cells = [f"{ceilings[s].mean():.3f} ({ceilings[s].min():.3f})" for s in args.sizes]
    print(f"| all ({', '.join(sorted({o.source for o in outlines}))}) | {len(outlines)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
