"""The preprocessing's OpenCV morphology is scipy.ndimage's, bit for bit, on every real slice we have.

Models up to 0.2 were trained with the head crop and the intracranial region computed by
scipy.ndimage (binary opening/closing/erosion/dilation, fill holes, labelling); the runtime and
Lambda images no longer install scipy, so :mod:`ichseg.preprocess` computes them with OpenCV. Any
pixel of difference would be train/serve skew. This environment (``.venv-train``) keeps scipy
(training/weak_labels.py uses it), so the scipy originals live here as the reference: the
primitives on random masks (every border and tie case), then the head placement and the
intracranial region on every slice of ``../shared/data`` (CT-ICH brain and bone windows, MBH-Seg in
the model's window) at three model input sizes.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections import Counter
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from scipy import ndimage

from ichseg import preprocess
from ichseg.preprocess import (
    _DETECT_SIDE,
    _MIN_CAVITY_FRACTION,
    _MIN_REGION_FRACTION,
    _REGION_REFERENCE_SIDE,
    BONE_LEVEL,
    HEAD_MARGIN,
    HEAD_THRESHOLD,
    Placement,
    _extract,
    head_placement,
    intracranial_region,
)
from ichseg.windowing import DEFAULT_WINDOW, apply_window
from tests.conftest import REPO, SAMPLE, SHARED_DATA
from training.metrics import average_ranks

CT_ICH = SHARED_DATA / "ct-ich" / "Patients_CT"
MBH = SHARED_DATA / "mbhseg25-mini" / "images"
MODEL_SIDES = (128, 160, 192)
"""Model input sizes: the morphology's iteration counts scale with the side (0.8x, 1x, 1.2x)."""


# ------------------------------------------------------------------ the scipy originals (ichseg 0.2)
def scipy_head_placement(slice_u8: np.ndarray) -> Placement:
    """``head_placement`` as it was with scipy.ndimage (crop to head on)."""
    height, width = slice_u8.shape
    full = Placement(
        height, width, (height - max(height, width)) // 2, (width - max(height, width)) // 2, max(height, width)
    )
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
    if sizes.max() < 0.01 * tissue.size:
        return full
    rows, cols = np.nonzero(largest)
    top, bottom = rows.min() / scale, (rows.max() + 1) / scale
    left, right = cols.min() / scale, (cols.max() + 1) / scale
    side = max(bottom - top, right - left) * (1 + 2 * HEAD_MARGIN)
    side = int(min(max(side, 32), max(height, width) * 1.5))
    centre_y, centre_x = (top + bottom) / 2, (left + right) / 2
    return Placement(height, width, round(float(centre_y - side / 2)), round(float(centre_x - side / 2)), side)


def scipy_intracranial_region(image_u8: np.ndarray) -> tuple[np.ndarray, str]:
    """``intracranial_region`` as it was with scipy.ndimage, and which branch produced it."""
    side = image_u8.shape[0]
    scale = side / _REGION_REFERENCE_SIDE
    bone = image_u8 >= BONE_LEVEL
    region = np.zeros(image_u8.shape, dtype=bool)
    for closing in (2, 5):
        ring = ndimage.binary_closing(bone, iterations=max(1, round(closing * scale)), border_value=0)
        cavities = ndimage.binary_fill_holes(ring) & ~ring
        labels, count = ndimage.label(cavities)
        if count:
            sizes = ndimage.sum(cavities, labels, range(1, count + 1))
            region = np.isin(labels, 1 + np.flatnonzero(sizes >= _MIN_CAVITY_FRACTION * image_u8.size))
        if region.sum() >= _MIN_REGION_FRACTION * image_u8.size:
            branch = f"ring closed by {closing}"
            break
    else:
        tissue = ndimage.binary_fill_holes(image_u8 > HEAD_THRESHOLD)
        region = ndimage.binary_erosion(tissue, iterations=max(1, round(6 * scale))) & ~bone
        branch = "fallback"
    return ndimage.binary_dilation(region, iterations=max(1, round(scale))), branch


# ------------------------------------------------------------------ the real slices
def real_slices() -> Iterator[tuple[str, np.ndarray]]:
    """Every CT-ICH slice (brain and bone window) and every MBH-Seg slice in the model's window."""
    for path in sorted(CT_ICH.glob("*/*/*.jpg")):
        if not path.stem.endswith("_HGE_Seg"):  # masks are not inputs
            yield str(path.relative_to(SHARED_DATA)), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    for path in sorted(MBH.glob("*.png")):
        hu = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32)  # HU clipped to [0, 255]
        yield str(path.relative_to(SHARED_DATA)), apply_window(hu, DEFAULT_WINDOW)


def _model_square(image: np.ndarray, placement: Placement, side: int) -> np.ndarray:
    """What ``prepare_batch`` hands to ``intracranial_region``: the crop, resized to the model input."""
    return cv2.resize(_extract(image, placement), (side, side), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------ primitives on random masks
def _random_masks(seed: int) -> Iterator[np.ndarray]:
    """Masks of many sizes and densities: blobs, rings touching the border, single pixels, empty, full."""
    rng = np.random.default_rng(seed)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 60, size=2))
        noise = rng.random((height, width))
        blurred = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(0.5, 3.0)))
        yield blurred > np.quantile(blurred, float(rng.uniform(0.0, 1.0)))
    yield np.zeros((7, 9), dtype=bool)
    yield np.ones((7, 9), dtype=bool)


@pytest.mark.parametrize("iterations", [1, 2, 3, 7])
def test_erosion_and_dilation_match_scipy_with_background_outside(iterations: int) -> None:
    for mask in _random_masks(iterations):
        np.testing.assert_array_equal(
            preprocess.binary_erosion(mask, iterations), ndimage.binary_erosion(mask, iterations=iterations)
        )
        np.testing.assert_array_equal(
            preprocess.binary_dilation(mask, iterations), ndimage.binary_dilation(mask, iterations=iterations)
        )
        closed = preprocess.binary_erosion(preprocess.binary_dilation(mask, iterations), iterations)
        np.testing.assert_array_equal(closed, ndimage.binary_closing(mask, iterations=iterations, border_value=0))


def test_fill_holes_matches_scipy() -> None:
    filled_any = 0
    for mask in _random_masks(11):
        expected = ndimage.binary_fill_holes(mask)
        np.testing.assert_array_equal(preprocess.binary_fill_holes(mask), expected)
        filled_any += int((expected & ~mask).any())
    assert filled_any > 20  # the masks did have holes (and ones that touch the border, which stay open)


def test_tied_largest_components_keep_scipys_choice() -> None:
    """Two equal heads: scipy numbered components in raster order and the crop took the first."""
    lower_left = np.zeros((256, 256), dtype=np.uint8)
    lower_left[150:200, 20:70] = 200
    upper_right = np.zeros((256, 256), dtype=np.uint8)
    upper_right[40:90, 150:200] = 200
    both = lower_left | upper_right
    assert head_placement(lower_left) != head_placement(upper_right)  # the choice shows in the crop
    assert head_placement(both) == scipy_head_placement(both) == head_placement(upper_right)  # first row first
    mirrored = np.ascontiguousarray(both[:, ::-1])
    assert head_placement(mirrored) == scipy_head_placement(mirrored)
    same_row = np.zeros((256, 256), dtype=np.uint8)
    same_row[100:140, 150:190] = 200
    same_row[100:140, 30:70] = 200  # same top row: the one whose first pixel is further left
    assert head_placement(same_row) == scipy_head_placement(same_row)
    assert head_placement(same_row).left < 128


def test_average_ranks_match_scipy_rankdata() -> None:
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    for size in (1, 2, 3, 10, 257, 5000):
        for ties in (2, 50, 10_000):
            values = rng.integers(0, ties, size) / 7.0
            assert average_ranks(values).tobytes() == rankdata(values).tobytes()


# ------------------------------------------------------------------ every real slice
@pytest.mark.skipif(not CT_ICH.is_dir(), reason="../shared/data is beside every checkout and CI")
def test_head_crop_and_intracranial_region_match_scipy_on_every_real_slice() -> None:
    slices = 0
    branches: Counter[str] = Counter()
    for name, image in real_slices():
        placement = head_placement(image)
        assert placement == scipy_head_placement(image), name
        for side in MODEL_SIDES:
            square = _model_square(image, placement, side)
            expected, branch = scipy_intracranial_region(square)
            region = intracranial_region(square)
            assert region.dtype == bool and np.array_equal(region, expected), f"{name} at {side} px ({branch})"
            branches[branch] += 1
        slices += 1
    assert slices > 4000  # 77 CT-ICH patients x 2 windows, and MBH-Seg
    # Every branch of the region ran on real data, not only the common one.
    assert set(branches) == {"ring closed by 2", "ring closed by 5", "fallback"}, branches


_RUNTIME_DIGEST = """
import hashlib, sys
import numpy as np
from ichseg.preprocess import model_input_spec, prepare_batch
from ichseg.readers import read_scan
batch = prepare_batch(np.asarray(read_scan(sys.argv[1]).slices, dtype=np.uint8), model_input_spec())
print(hashlib.sha256(batch.inputs.tobytes() + batch.regions.tobytes() + repr(batch.placements).encode()).hexdigest())
"""


def test_sample_scan_preprocessing_is_scipys_here_and_in_the_runtime_environment() -> None:
    """The committed sample through ``prepare_batch`` (2.5-D, intracranial) equals the scipy path,
    here and in ``.venv``, which has no scipy at all: no train/serve skew from the change."""
    from ichseg.preprocess import model_input_spec, prepare_batch
    from ichseg.readers import read_scan

    slices = np.asarray(read_scan(SAMPLE / "brain.mp4").slices, dtype=np.uint8)
    batch = prepare_batch(slices, model_input_spec())
    for image, placement, region, inputs in zip(slices, batch.placements, batch.regions, batch.inputs, strict=True):
        assert placement == scipy_head_placement(image)
        square = _model_square(image, placement, inputs.shape[0])
        assert np.array_equal(region, scipy_intracranial_region(square)[0])
    assert not batch.regions.all()  # the region did clear something

    runtime_python = REPO / ".venv" / "bin" / "python"
    assert runtime_python.exists(), "make test builds .venv before the training tests run"
    runtime = subprocess.run(
        [str(runtime_python), "-c", _RUNTIME_DIGEST, str(SAMPLE / "brain.mp4")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.strip()
    here = hashlib.sha256(batch.inputs.tobytes() + batch.regions.tobytes() + repr(batch.placements).encode())
    assert runtime == here.hexdigest()
