"""The synthetic head-CT generator: exact, anatomically placed masks over plausible HU images."""

from __future__ import annotations

import hashlib
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


# --------------------------------------------------------------------------------------------
# Fixed-seed regression guard: the generator's output is pinned bit for bit, so a refactor (or an
# innocent-looking reordering of random draws) that changes any slice fails here. The digests come
# from the code as it stood when they were written; change them only for a deliberate change of the
# generated data. They assume the pinned numpy / opencv-python builds: a different build may round
# a blur differently and then every digest moves at once.

_VARIANTS: dict[str, tuple[str, ...] | None] = {
    "random": None,
    "negative": (),
    **{name: (name,) for name in SUBTYPES},
    "all": SUBTYPES,
}


def _digest(item: SyntheticSlice, rng: np.random.Generator) -> str:
    """sha256 over every field of ``item`` and the generator's next draw (so draws are pinned too)."""
    h = hashlib.sha256()

    def add(array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(array.tobytes())

    add(item.hu)
    add(item.mask)
    for name in SUBTYPES:
        add(item.subtype_masks[name])
    for name in sorted(item.anatomy):
        h.update(name.encode())
        add(item.anatomy[name])
    h.update(repr((item.subtypes, sorted(item.densities.items()), item.mm_per_pixel, item.level)).encode())
    h.update(repr(rng.random()).encode())
    return h.hexdigest()


# "size-seed-variant" -> digest. Seeds 0-2 at 128 px give every variant; the rest were picked to
# reach branches those miss (upper-ventricle and low-ventricle levels, the falx plaque, fissure
# SAH, a shrinking clot, a chronic subdural) and the smallest and default sizes.
_GOLDEN = {
    "128-0-random": "5a8fb773f7db1b2dc8295700b84b127cf0b5408df6a91b5f866908b60db85963",
    "128-0-negative": "6cec25a5e621e5de0b33e9f6306ea5c96f3bde3aaf655f5496a05e9d7d48b6c3",
    "128-0-epidural": "86372b59c8b6e566c77ced4f9e1ce32b923c6f8123511dbd86d1bfe49f6cb120",
    "128-0-subdural": "5752124e6918852b22bfd8ae0f09878ed8061db4d582796585686ce659ad1e46",
    "128-0-intraparenchymal": "65d740348232d821f0c2eeac0e3cadb1ea8988911ffc816aa56cf90230853fea",
    "128-0-intraventricular": "f063da895898c15ab4a07b00e1998d25e9765f36c218671c23b7526374f7f682",
    "128-0-subarachnoid": "768c1e3b384a4f63d37878f7972775e368b254ccd56a61c5af474f17230820b2",
    "128-0-all": "92afcfa04764fcdf8d3cfd42897f76cf5ee11530ad734bf88691a31b87c6dff5",
    "128-1-random": "af6c7c04ef9fb1a37243ab5b1c60ab84877bc5b2ef87c02b617470138c0a3418",
    "128-1-negative": "df4cdbc83232a5155d6363d6781c0b857705df9c0bee3c264e7ae665e6d22ae7",
    "128-1-epidural": "b0350bb8a01cb80f244c2066cbadcd2a4760e636e87cc77174f5c84a0a6fa28a",
    "128-1-subdural": "478aff1f0de9faf69dadfe2661df534e1575a5fa43a6ca46c0de3f5957347516",
    "128-1-intraparenchymal": "3f18663bf322e2f561a53afc120201f0c7caaa457ded4dc9b09d9e9bb2dcea40",
    "128-1-intraventricular": "4cb776d425405b46633e8fd82a04213f7986c8a40afa057117428f2759085bbd",
    "128-1-subarachnoid": "01571ec022c64f8130361d18b361a4436b2b07f2ce7c58b05531f5384686e3c6",
    "128-1-all": "9a3827bbe8e1dcd32ea2d06a80f6efcba6fcc227cf81ced39460f66ce04f7be9",
    "128-2-random": "8f0b25e001fc8c036567a1b10f5d42f07f87fd446a0e322b3d06a3e36485c0cf",
    "128-2-negative": "79dc010388441aca20d41864f39bea73b57d5f375178c9ffde461cc6fc192135",
    "128-2-epidural": "a1e00c81e3815b0ea94594a49197e70c27c484c0b1bcbfcd8bd80dfc0831f647",
    "128-2-subdural": "b15d515f9525927e7da2a63093baf17284fdc0a09b374e33cb6f369847ca8a2e",
    "128-2-intraparenchymal": "3195efdefc9240b0ea09ac63f72a8e756087bf11af0a812a9c22f905e8f14fc8",
    "128-2-intraventricular": "b363da30b410a7eca90ae8b1cfc7c048317ea816240775676f4994145a6c802c",
    "128-2-subarachnoid": "c213613a85e0df3c403807b9f42218e6910e22681dd3be7bd940a86a9439b2fe",
    "128-2-all": "8bf2e56aa214075c23a805e8e64aca420e53c0c474577643b634872b1e818c7d",
    "128-6-subarachnoid": "5598e635eb7f7bbbaee33b722938ac8d852ca51b5a278aa32a3e04bd1a3eb38c",
    "128-9-random": "e37c38973e1671b7a36ced258b29e4f3e89d81c04ad7633d64ac9984963801e8",
    "128-50-subdural": "e69b6d3a92cd386ffddd66df5665cb44eba3992ed8df6a7bbf8242add05183ca",
    "128-10-intraparenchymal": "91d038548dd42e077bd903d6470ffc199b2ad28d2c6d18ef92e38143ccc816e7",
    "64-11-negative": "48f8eabebd4eef612beb776bad53ffe956b5665e37b63c5aa51edcf5536675b6",
    "64-0-all": "f45de51b385a35e82f99db287cdcb15bb41c457eaf525f726420521559904321",
    "256-0-all": "a49628d351d94fb81c791cdd2883fb73e8d7f3afb902d71e393a0b203cde3b9f",
    "256-1-random": "c15eef97b20f1fe0c55c795c140c7f2f7eff436114c7cb352829b30b2b8089e5",
}
_GOLDEN_BATCH = "e167ae40ba56fb6ca52810f2fdadd258e12d88aa448887d376b9c764b0fbea00"


@pytest.mark.parametrize("case", sorted(_GOLDEN))
def test_fixed_seed_output_is_unchanged(case: str) -> None:
    size, seed, variant = case.split("-")
    rng = np.random.default_rng(int(seed))
    item = synthetic_slice(rng, int(size), _VARIANTS[variant])
    assert _digest(item, rng) == _GOLDEN[case], f"{case}: generated slice changed"


def test_fixed_seed_batch_is_unchanged() -> None:
    rng = np.random.default_rng(5)
    images, masks = synthetic_batch(rng, 6, size=96, positive_fraction=0.5)
    digest = hashlib.sha256(images.tobytes() + masks.tobytes() + repr(rng.random()).encode()).hexdigest()
    assert digest == _GOLDEN_BATCH
