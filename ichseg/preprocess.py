"""Model input preparation, identical for training and serving (no train/serve skew).

Each windowed uint8 slice is cropped to a square around the head (the largest bright component,
so air, the CT table and the frame's border do not waste model resolution), resized to the
model's input size and scaled to [0, 1]. :func:`restore_probabilities` undoes exactly that
geometry, so outputs come back at each slice's original size. With ``crop_to_head`` off, the whole
frame is letterboxed to a square instead.

Two options of :class:`InputSpec` (models from 0.2 on use both):

- **2.5-D context** (``channels`` = 3): the slice and its neighbours above and below, cropped with
  the centre slice's square, as channels. Radiologists tell blood from partial-volume bone and
  venous sinus by scrolling; the neighbours give the model the same cue. At the ends of a scan (and
  for a single image) the missing neighbour repeats the slice itself.
- **Intracranial region** (``intracranial_only``): everything outside the skull's inner table is
  zeroed in the input, and :func:`intracranial_region` is returned with the batch so that callers
  clear predictions there. Scalp swellings, bone edges and the table can then never be painted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

HEAD_THRESHOLD = 20
"""Grey level above which a pixel is tissue (in any brain-type window, air and fat are ~0)."""
HEAD_MARGIN = 0.06
"""Fraction of the head's extent added on every side of the crop."""
_DETECT_SIDE = 128
"""Head detection runs on a downscaled copy: the box only needs to be a few pixels accurate."""
BONE_LEVEL = 240
"""Grey level from which a pixel is bone in a brain-type window (~93 HU in L40/W120: above acute
blood, which stays below ~90 HU; bone saturates at 255). A little below 255 for video compression."""
_REGION_REFERENCE_SIDE = 160
"""Morphology sizes below are in pixels of a 160-pixel model input and scale with the input."""
_MIN_CAVITY_FRACTION = 0.004
"""Enclosed cavities smaller than this fraction of the input (vessels' foramina, specks) are not
brain. Several cavities are kept: at the skull base the temporal fossae and the posterior fossa
are separated by the petrous bones."""
_MIN_REGION_FRACTION = 0.02
"""Below this the skull ring was not closed (vertex, craniectomy, unusual window): fall back."""


@dataclass(frozen=True)
class InputSpec:
    """What a model expects; stored in every model artifact's metadata."""

    size: int = 192
    """Square input side in pixels."""
    channels: int = 1
    """1: the slice alone. 3: the slice between its neighbours below and above (2.5-D context)."""
    crop_to_head: bool = True
    intracranial_only: bool = False
    """Zero the input outside the skull and report the region (see :func:`intracranial_region`)."""

    @property
    def context(self) -> int:
        """Neighbouring slices on each side that the model sees."""
        return (self.channels - 1) // 2

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def model_input_spec(size: int = 160) -> InputSpec:
    """What models from 0.2 on see: 2.5-D context (slice and both neighbours), intracranial only."""
    return InputSpec(size=size, channels=3, crop_to_head=True, intracranial_only=True)


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
    regions: np.ndarray
    """``(N, size, size)`` bool: where predictions may be made (all True without ``intracranial_only``)."""


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
    tissue = binary_dilation(binary_erosion(small > HEAD_THRESHOLD, 1), 1)  # an opening: specks go
    count, labels, stats, _ = cv2.connectedComponentsWithStats(tissue.view(np.uint8), connectivity=4)
    if count == 1:  # label 0 is the background
        return full
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.max() < 0.01 * tissue.size:  # nothing head-sized: keep the whole frame
        return full
    largest = _first_in_raster_order(labels, stats, 1 + np.flatnonzero(areas == areas.max()))
    row, col = int(stats[largest, cv2.CC_STAT_TOP]), int(stats[largest, cv2.CC_STAT_LEFT])
    top, bottom = row / scale, (row + int(stats[largest, cv2.CC_STAT_HEIGHT])) / scale
    left, right = col / scale, (col + int(stats[largest, cv2.CC_STAT_WIDTH])) / scale
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


def intracranial_region(image_u8: np.ndarray) -> np.ndarray:
    """Inside of the skull's inner table for one model-space slice (uint8, brain-type window).

    Bone (>= :data:`BONE_LEVEL`) closed into a ring, its enclosed cavities of a useful size, grown
    by one pixel so that blood against the inner table (epidural, subdural) stays inside. When no
    ring closes, the head's tissue without bone and without a scalp-thick outer band stands in.
    """
    side = image_u8.shape[0]
    scale = side / _REGION_REFERENCE_SIDE
    bone = image_u8 >= BONE_LEVEL
    region = np.zeros(image_u8.shape, dtype=bool)
    # A light closing first; at the skull base (foramina, thin bone) a stronger one closes the ring.
    for closing in (2, 5):
        iterations = max(1, round(closing * scale))
        ring = binary_erosion(binary_dilation(bone, iterations), iterations)  # a closing
        cavities = binary_fill_holes(ring) & ~ring
        count, labels, stats, _ = cv2.connectedComponentsWithStats(cavities.view(np.uint8), connectivity=4)
        if count > 1:  # label 0 is the background
            sizes = stats[1:, cv2.CC_STAT_AREA]
            region = np.isin(labels, 1 + np.flatnonzero(sizes >= _MIN_CAVITY_FRACTION * image_u8.size))
        if region.sum() >= _MIN_REGION_FRACTION * image_u8.size:
            break
    else:
        tissue = binary_fill_holes(image_u8 > HEAD_THRESHOLD)
        region = binary_erosion(tissue, max(1, round(6 * scale))) & ~bone
    return binary_dilation(region, max(1, round(scale)))


# Binary morphology with the 4-connected cross (3x3) and nothing but background outside the image,
# iterated one step at a time: exactly scipy.ndimage's defaults (binary_erosion/dilation/closing
# with border_value=0, binary_fill_holes, label), which the models up to 0.2 were trained with.
# OpenCV computes the same sets, so the Lambda and endpoint images need no scipy;
# tests/training/test_morphology_matches_scipy.py compares the two on every slice of the real data.
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def binary_erosion(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_erosion(mask, iterations=iterations)``: pixels outside count as background."""
    out: np.ndarray = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    for _ in range(iterations):
        # One step per call: OpenCV's own iteration count is not documented to re-apply the border.
        out = cv2.erode(out, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=(0,))
    return out.view(bool)


def binary_dilation(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, iterations=iterations)`` (the cross is symmetric)."""
    out: np.ndarray = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    for _ in range(iterations):
        out = cv2.dilate(out, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=(0,))
    return out.view(bool)


def binary_fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)``: background not 4-connected to the image's edge is filled."""
    # A one-pixel frame of background joins every edge pixel of the background into one component;
    # flooding it from a frame corner reaches exactly the background that is not a hole.
    outside = np.pad(~np.asarray(mask, dtype=bool), 1, constant_values=True).view(np.uint8)
    cv2.floodFill(outside, None, (0, 0), (2,), flags=4)
    return outside[1:-1, 1:-1] != 2


def _first_in_raster_order(labels: np.ndarray, stats: np.ndarray, candidates: np.ndarray) -> int:
    """Of several equally large components, the one whose first pixel comes first in raster order.

    scipy.ndimage.label numbers components in that order and the crop took the first of the
    largest; OpenCV's numbering is its own, so ties are broken explicitly to keep the same crop.
    """
    if len(candidates) == 1:
        return int(candidates[0])

    def first_pixel(label: int) -> tuple[int, int]:
        row = int(stats[label, cv2.CC_STAT_TOP])
        return row, int(np.argmax(labels[row] == label))

    return int(min(candidates, key=first_pixel))


def prepare_batch(slices: np.ndarray, spec: InputSpec, first: int = 0, stop: int | None = None) -> ModelBatch:
    """``(N, H, W)`` uint8 windowed slices, consecutive in the scan -> model inputs and placements.

    With 2.5-D context the slices must be the scan's own order (each slice's neighbours are the
    adjacent rows of ``slices``), which every reader of :func:`ichseg.readers.read_scan` guarantees.
    Only slices ``first`` to ``stop`` become inputs; the others serve as their neighbours (a
    request's context slices).
    """
    slices = np.asarray(slices)
    if slices.ndim != 3 or slices.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 windowed slices, got {slices.dtype} {slices.shape}")
    count = slices.shape[0]
    stop = count if stop is None else stop
    if not 0 <= first < stop <= count:
        raise ValueError(f"slices {first}..{stop} are not within the {count} given")
    placements = tuple(head_placement(slices[i], spec.crop_to_head) for i in range(first, stop))
    out = np.empty((stop - first, spec.size, spec.size, spec.channels), dtype=np.float32)
    regions = np.ones((stop - first, spec.size, spec.size), dtype=bool)
    if spec.channels % 2 != 1:
        raise ValueError(f"a model input has the slice plus as many neighbours below as above; got {spec.channels}")
    offsets = range(-spec.context, spec.context + 1)
    for row, (i, placement) in enumerate(zip(range(first, stop), placements, strict=True)):
        channels = []
        for offset in offsets:
            neighbour = slices[min(max(i + offset, 0), count - 1)]
            square = _extract(neighbour, placement)
            channels.append(cv2.resize(square, (spec.size, spec.size), interpolation=cv2.INTER_AREA))
        stack = np.stack(channels, axis=-1)
        if spec.intracranial_only:
            regions[row] = intracranial_region(channels[len(channels) // 2])
            stack[~regions[row]] = 0
        out[row] = stack / np.float32(255.0)
    return ModelBatch(out, placements, regions)


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
