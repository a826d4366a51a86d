"""Weak supervision: candidate hemorrhage masks from what the CT-ICH slices themselves show.

CT-ICH here has slice-level labels but no pixel masks. Acute blood is hyperdense (50-90 HU):
in the CT-ICH brain window (L40/W120) it is brighter than parenchyma (20-45 HU) and darker than
bone, which saturates. The seeds' masking technique: take the dense, not-bone regions inside the
skull, drop specks; on a slice labelled hemorrhage these are the candidate bleed. Pixels that are
dense but were dropped (specks, the rim along the inner table where bone blurs into brain) are
*ambiguous*: they get zero weight rather than a possibly wrong label. Slices labelled normal
teach the model that dense structures there (falx, calcifications, partial volume) are not blood.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

BONE_LEVEL = 250
"""Grey level of bone in the CT-ICH window (>= 100 HU saturates)."""
BLOOD_RANGE = (145, 245)
"""Grey levels of acute blood in L40/W120: about 48-95 HU."""
RIM_PIXELS_AT_650 = 8
"""Pixels next to bone dropped from candidates (bone partial volume), for a 650-pixel frame."""
MIN_AREA_AT_650 = 150
"""Smallest candidate component, in pixels of a 650-pixel frame (~3 mm across)."""


@dataclass(frozen=True)
class WeakTarget:
    """A training target with a per-pixel confidence."""

    mask: np.ndarray
    """(H, W) float32 in {0, 1}."""
    weight: np.ndarray
    """(H, W) float32: 1 where the target is trusted, 0 where it is ambiguous."""


def _scaled(value: int, slice_u8: np.ndarray) -> int:
    return max(1, round(value * max(slice_u8.shape) / 650))


def intracranial_mask(slice_u8: np.ndarray) -> np.ndarray:
    """Inside of the skull: holes of the bone ring, largest component, minus a rim along the bone."""
    bone = slice_u8 >= BONE_LEVEL
    bone = ndimage.binary_closing(bone, iterations=_scaled(3, slice_u8))
    inside = ndimage.binary_fill_holes(bone) & ~bone
    labels, count = ndimage.label(inside)
    if count == 0:
        return inside
    sizes = ndimage.sum(inside, labels, range(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_erosion(largest, iterations=_scaled(RIM_PIXELS_AT_650, slice_u8))


def dense_candidates(slice_u8: np.ndarray) -> np.ndarray:
    """Dense, non-bone, intracranial regions large enough to be a bleed."""
    smooth = cv2.medianBlur(np.ascontiguousarray(slice_u8, dtype=np.uint8), 5)
    inside = intracranial_mask(slice_u8)
    dense = inside & (smooth >= BLOOD_RANGE[0]) & (smooth <= BLOOD_RANGE[1])
    dense = ndimage.binary_opening(dense, iterations=1)
    labels, count = ndimage.label(dense)
    if count == 0:
        return dense
    sizes = ndimage.sum(dense, labels, range(1, count + 1))
    min_area = MIN_AREA_AT_650 * (max(slice_u8.shape) / 650) ** 2
    return np.isin(labels, 1 + np.flatnonzero(sizes >= min_area))


def weak_target(slice_u8: np.ndarray, has_hemorrhage: bool) -> WeakTarget:
    """The training target for a CT-ICH slice from its pixels and its slice label."""
    shape = slice_u8.shape
    if not has_hemorrhage:
        return WeakTarget(np.zeros(shape, np.float32), np.ones(shape, np.float32))
    candidates = dense_candidates(slice_u8)
    if not candidates.any():  # labelled bleed the heuristic cannot see: no pixel supervision
        return WeakTarget(np.zeros(shape, np.float32), np.zeros(shape, np.float32))
    smooth = cv2.medianBlur(np.ascontiguousarray(slice_u8, dtype=np.uint8), 5)
    dense_elsewhere = (smooth >= BLOOD_RANGE[0]) & (slice_u8 < BONE_LEVEL) & ~candidates
    near_bone = ndimage.binary_dilation(slice_u8 >= BONE_LEVEL, iterations=_scaled(RIM_PIXELS_AT_650 + 2, slice_u8))
    weight = np.ones(shape, np.float32)
    weight[dense_elsewhere | (near_bone & ~candidates)] = 0.0
    return WeakTarget(candidates.astype(np.float32), weight)
