"""Model input preparation, identical for training and serving (no train/serve skew).

Each windowed uint8 slice is cropped to a square around the head (the largest bright component,
so air, the CT table and the frame's border do not waste model resolution), resized to the
model's input size and scaled to [0, 1]. :func:`restore_probabilities` undoes exactly that
geometry, so outputs come back at each slice's original size. With ``crop_to_head`` off, the whole
frame is letterboxed to a square instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage

HEAD_THRESHOLD = 20
"""Grey level above which a pixel is tissue (in any brain-type window, air and fat are ~0)."""
HEAD_MARGIN = 0.06
"""Fraction of the head's extent added on every side of the crop."""
_DETECT_SIDE = 128
"""Head detection runs on a downscaled copy: the box only needs to be a few pixels accurate."""


@dataclass(frozen=True)
class InputSpec:
    """What a model expects; stored in every model artifact's metadata."""

    size: int = 192
    """Square input side in pixels."""
    channels: int = 1
    crop_to_head: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Placement:
    """Where the model's square input sits in the original slice (may extend past its edges)."""

    height: int
    width: int
    top: int
    left: int
    side: int


@dataclass(frozen=True)
class ModelBatch:
    """Model-ready inputs plus what is needed to map outputs back."""

    inputs: np.ndarray
    """``(N, size, size, channels)`` float32 in [0, 1]."""
    placements: tuple[Placement, ...]


def head_placement(slice_u8: np.ndarray, crop_to_head: bool = True) -> Placement:
    """The square region of ``slice_u8`` the model looks at: around the head, or the whole frame."""
    height, width = slice_u8.shape
    full = Placement(
        height, width, (height - max(height, width)) // 2, (width - max(height, width)) // 2, max(height, width)
    )
    if not crop_to_head:
        return full
    scale = _DETECT_SIDE / max(height, width)
    small = cv2.resize(
        slice_u8, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    tissue = ndimage.binary_opening(small > HEAD_THRESHOLD, iterations=1)
    labels, count = ndimage.label(tissue)
    if count == 0:
        return full
    sizes = ndimage.sum(tissue, labels, range(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    if sizes.max() < 0.01 * tissue.size:  # nothing head-sized: keep the whole frame
        return full
    rows, cols = np.nonzero(largest)
    top, bottom = rows.min() / scale, (rows.max() + 1) / scale
    left, right = cols.min() / scale, (cols.max() + 1) / scale
    side = max(bottom - top, right - left) * (1 + 2 * HEAD_MARGIN)
    side = int(min(max(side, 32), max(height, width) * 1.5))
    centre_y, centre_x = (top + bottom) / 2, (left + right) / 2
    return Placement(height, width, round(float(centre_y - side / 2)), round(float(centre_x - side / 2)), side)


def _extract(slice_u8: np.ndarray, p: Placement) -> np.ndarray:
    """The placement's square, zero-padded where it extends past the slice."""
    square = np.zeros((p.side, p.side), dtype=np.uint8)
    src_top, src_left = max(p.top, 0), max(p.left, 0)
    src_bottom, src_right = min(p.top + p.side, p.height), min(p.left + p.side, p.width)
    if src_bottom > src_top and src_right > src_left:
        square[src_top - p.top : src_bottom - p.top, src_left - p.left : src_right - p.left] = slice_u8[
            src_top:src_bottom, src_left:src_right
        ]
    return square


def prepare_batch(slices: np.ndarray, spec: InputSpec) -> ModelBatch:
    """``(N, H, W)`` uint8 windowed slices -> model inputs and their placements."""
    slices = np.asarray(slices)
    if slices.ndim != 3 or slices.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 windowed slices, got {slices.dtype} {slices.shape}")
    placements = tuple(head_placement(image, spec.crop_to_head) for image in slices)
    out = np.empty((slices.shape[0], spec.size, spec.size), dtype=np.float32)
    for i, (image, placement) in enumerate(zip(slices, placements, strict=True)):
        square = _extract(image, placement)
        out[i] = cv2.resize(square, (spec.size, spec.size), interpolation=cv2.INTER_AREA) / np.float32(255.0)
    return ModelBatch(np.repeat(out[..., None], spec.channels, axis=-1), placements)


def place_mask(mask: np.ndarray, placement: Placement, size: int) -> np.ndarray:
    """A full-size target mask (bool or float) brought into model space, like its slice (training)."""
    square = _extract(
        np.asarray(mask, dtype=np.uint8) * 255 if mask.dtype == bool else mask.astype(np.uint8), placement
    )
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def restore_probabilities(probabilities: np.ndarray, placements: tuple[Placement, ...]) -> np.ndarray:
    """``(N, size, size[, 1])`` model outputs -> a list-like ``(N, H, W)`` float32 at the original size.

    Every slice of one scan has the same original size, so the result stacks.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim == 4:
        probabilities = probabilities[..., 0]
    out = []
    for prob, p in zip(probabilities, placements, strict=True):
        square = cv2.resize(prob, (p.side, p.side), interpolation=cv2.INTER_LINEAR)
        canvas = np.zeros((p.height, p.width), dtype=np.float32)
        dst_top, dst_left = max(p.top, 0), max(p.left, 0)
        dst_bottom, dst_right = min(p.top + p.side, p.height), min(p.left + p.side, p.width)
        if dst_bottom > dst_top and dst_right > dst_left:
            canvas[dst_top:dst_bottom, dst_left:dst_right] = square[
                dst_top - p.top : dst_bottom - p.top, dst_left - p.left : dst_right - p.left
            ]
        out.append(canvas)
    return np.stack(out)
