"""The synthetic head-CT generator: exact, anatomically placed masks over plausible HU images."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np
import pytest

from ichseg.windowing import CT_ICH_BRAIN, apply_window
from training.synthetic import SUBTYPES, SyntheticSlice, random_subtypes, synthetic_batch, synthetic_slice

SIZE = 256


def _slices(subtypes: tuple[str, ...], count: int, seed: int, size: int = SIZE) -> list[SyntheticSlice]:
    rng = np.random.default_rng(seed)
    return [synthetic_slice(rng, size, subtypes) for _ in range(count)]


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def _angular_span_deg(mask: np.ndarray, centre: np.ndarray) -> float:
    """Angle (degrees) the mask subtends around ``centre``: 360 minus the largest empty gap."""
    ys, xs = np.nonzero(mask)
    angles = np.sort(np.arctan2(ys - centre[0], xs - centre[1]))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * math.pi]))
    return math.degrees(2 * math.pi - gaps.max())


def test_same_seed_same_slice_and_different_seed_differs() -> None:
    a = synthetic_slice(np.random.default_rng(7), SIZE, ("subdural", "intraparenchymal"))
    b = synthetic_slice(np.random.default_rng(7), SIZE, ("subdural", "intraparenchymal"))
    c = synthetic_slice(np.random.default_rng(8), SIZE, ("subdural", "intraparenchymal"))
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.mask, b.mask)
    assert all(np.array_equal(a.subtype_masks[k], b.subtype_masks[k]) for k in SUBTYPES)
    assert not np.array_equal(a.hu, c.hu)
    assert not np.array_equal(a.mask, c.mask)


def test_types_shapes_and_mask_bookkeeping() -> None:
    item = synthetic_slice(np.random.default_rng(1), 192, ("epidural", "subarachnoid"))
    assert item.hu.shape == (192, 192) and item.hu.dtype == np.float32
    assert item.mask.shape == (192, 192) and item.mask.dtype == bool
    assert tuple(item.subtype_masks) == SUBTYPES
    assert item.subtypes == ("epidural", "subarachnoid")
    stacked = np.stack([item.subtype_masks[k] for k in SUBTYPES]).astype(int)
    assert stacked.sum(axis=0).max() == 1  # subtype masks are disjoint ...
    assert np.array_equal(stacked.any(axis=0), item.mask)  # ... and their union is the mask
    assert np.isfinite(item.hu).all()
    # Air around the head, bone in the skull, soft tissue inside.
    assert np.median(item.hu[~item.anatomy["head"]]) < -900
    assert np.median(item.hu[item.anatomy["skull"]]) > 500
    brain = item.anatomy["intracranial"] & ~item.mask
    assert 10 < np.median(item.hu[brain]) < 50


def test_negatives_have_empty_masks_but_keep_bright_mimics() -> None:
    items = _slices((), 24, seed=3)
    assert all(not s.mask.any() and s.subtypes == () for s in items)
    assert all(not any(m.any() for m in s.subtype_masks.values()) for s in items)
    # Calcifications (pineal, choroid plexus) are bright but are NOT hemorrhage: some negatives have them.
    with_calcification = [s for s in items if s.anatomy["calcification"].any()]
    assert with_calcification
    assert any(s.hu[s.anatomy["calcification"]].max() > 90 for s in with_calcification)


@pytest.mark.parametrize("size", [64, 128, SIZE])
def test_every_requested_subtype_is_drawn_inside_the_skull(size: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(3):
        for subtype in SUBTYPES:
            item = synthetic_slice(rng, size, (subtype,))
            assert item.subtypes == (subtype,), f"{subtype} missing at size {size}"
            assert item.subtype_masks[subtype].any()
            # Blood only where it is visible: inside the inner table, never in bone or outside the head.
            assert not (item.mask & ~item.anatomy["intracranial"]).any()
            assert not (item.mask & item.anatomy["skull"]).any()


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_bleed_hu_is_blood(subtype: str) -> None:
    contrasts = []
    for item in _slices((subtype,), 8, seed=11):
        nominal = item.densities[subtype]
        assert 15 <= nominal <= 90  # chronic subdural (hypodense) ... acute clot
        if subtype != "subdural":
            assert nominal >= 38
        # Away from bone and calcium, whose partial volume legitimately brightens neighbours.
        clean = item.subtype_masks[subtype] & ~_dilate(item.anatomy["skull"] | item.anatomy["calcification"], 2)
        values = item.hu[clean]
        assert values.size > 0
        assert abs(np.median(values) - nominal) <= 15, f"{subtype}: median {np.median(values):.1f}, painted {nominal}"
        assert np.percentile(values, 95) <= 120
        if nominal >= 55:  # acute blood is denser than the brain around it
            contrasts.append(np.median(values) - np.median(item.hu[item.anatomy["intracranial"] & ~item.mask]))
    assert contrasts and min(contrasts) > 10


@pytest.mark.parametrize("subtype", ["epidural", "subdural"])
def test_extra_axial_bleeds_lie_against_the_inner_table(subtype: str) -> None:
    for item in _slices((subtype,), 6, seed=21):
        mask = item.subtype_masks[subtype]
        skull = item.anatomy["skull"]
        touching = mask & _dilate(skull, 1)
        assert touching.any(), f"{subtype} does not touch the skull"
        # Most of it hugs the table: everything lies within 25 mm of the bone.
        far = cv2.distanceTransform((~skull).astype(np.uint8), cv2.DIST_L2, 3) * item.mm_per_pixel
        assert far[mask].max() < 25.0


def test_epidurals_are_short_arcs_and_subdurals_long_crescents() -> None:
    def spans(subtype: str) -> list[float]:
        out = []
        for item in _slices((subtype,), 8, seed=31):
            ys, xs = np.nonzero(item.anatomy["intracranial"])
            out.append(_angular_span_deg(item.subtype_masks[subtype], np.array([ys.mean(), xs.mean()])))
        return out

    epidural, subdural = spans("epidural"), spans("subdural")
    assert max(epidural) < 75  # sutures bound an epidural
    assert min(subdural) > 45  # a subdural spreads along the convexity
    assert np.mean(subdural) > np.mean(epidural) + 20


def test_intraventricular_blood_is_clipped_to_the_ventricles() -> None:
    for item in _slices(("intraventricular",), 6, seed=41):
        mask = item.subtype_masks["intraventricular"]
        assert mask.any()
        assert not (mask & ~item.anatomy["ventricles"]).any()


def test_intraparenchymal_clot_is_inside_brain_tissue() -> None:
    for item in _slices(("intraparenchymal",), 6, seed=51):
        mask = item.subtype_masks["intraparenchymal"]
        assert not (mask & item.anatomy["ventricles"]).any()
        assert not (mask & _dilate(item.anatomy["skull"], 1)).any()


def test_subarachnoid_blood_is_thin() -> None:
    for item in _slices(("subarachnoid",), 6, seed=61):
        mask = item.subtype_masks["subarachnoid"].astype(np.uint8)
        # Lines in sulci, cisterns and the thin CSF layer: no thick mass anywhere.
        assert cv2.distanceTransform(mask, cv2.DIST_L2, 3).max() * item.mm_per_pixel <= 5.0


def test_random_subtypes_are_valid_and_varied() -> None:
    rng = np.random.default_rng(0)
    drawn = [random_subtypes(rng) for _ in range(200)]
    assert all(1 <= len(d) <= 3 and len(set(d)) == len(d) and set(d) <= set(SUBTYPES) for d in drawn)
    assert {s for d in drawn for s in d} == set(SUBTYPES)


def test_batch_is_windowed_uint8_with_the_requested_positive_fraction() -> None:
    images, masks = synthetic_batch(np.random.default_rng(5), 8, size=96, positive_fraction=0.25)
    assert images.shape == (8, 96, 96) and images.dtype == np.uint8
    assert masks.shape == (8, 96, 96) and masks.dtype == bool
    assert sum(m.any() for m in masks) == 2
    again, _ = synthetic_batch(np.random.default_rng(5), 8, size=96, positive_fraction=0.25)
    assert np.array_equal(images, again)
    # The brain window: air is black, bone white, brain mid-grey; blood brighter than brain.
    assert images.min() == 0 and images.max() == 255
    positive = masks.any(axis=(1, 2))
    blood = np.concatenate([im[m] for im, m in zip(images[positive], masks[positive], strict=True)])
    assert np.median(blood) > apply_window(np.float32(50), CT_ICH_BRAIN)


def test_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="size"):
        synthetic_slice(rng, 32)
    with pytest.raises(ValueError, match="unknown subtype"):
        synthetic_slice(rng, 64, ("subdurall",))
    with pytest.raises(ValueError, match="positive_fraction"):
        synthetic_batch(rng, 2, 64, positive_fraction=1.5)


def test_generation_is_fast() -> None:
    rng = np.random.default_rng(0)
    synthetic_slice(rng, SIZE)  # warm caches
    start = time.perf_counter()
    for _ in range(20):
        synthetic_slice(rng, SIZE)
    # ~100 slices/s on one core here; a generous bound catches only gross regressions on slow CI.
    assert (time.perf_counter() - start) / 20 < 0.1
