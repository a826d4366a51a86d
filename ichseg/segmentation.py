"""From the model's outputs to masks: the slice gate and the pixel threshold.

What people read is written from these by :mod:`ichseg.writers` (the report, the rendered files,
DICOM SEG and SR). Pure numpy (no onnxruntime): the CLI and the pipeline share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segmentation:
    """The outcome for one scan."""

    masks: np.ndarray
    """(N, H, W) bool."""
    slice_probabilities: np.ndarray
    """(N,) float32."""
    subtype_probabilities: np.ndarray | None = None
    """(N, S) float32, columns in the model's ``subtypes`` order; None for a model without them."""
    outlined: np.ndarray | None = None
    """(N,) share of each slice's pixels at the pixel threshold before the slice gate (the scan
    head's input, :func:`ichseg.scan_context.map_features`); None where not measured."""
    peaks: np.ndarray | None = None
    """(N,) each slice's highest pixel probability."""


def masks_from_probabilities(
    probabilities: np.ndarray,
    slice_probabilities: np.ndarray,
    pixel_threshold: float,
    slice_threshold: float,
    subtype_probabilities: np.ndarray | None = None,
) -> Segmentation:
    """Threshold pixel maps, keeping masks only on slices the detection head calls hemorrhage."""
    masks = np.asarray(probabilities) >= pixel_threshold
    gate = np.asarray(slice_probabilities) >= slice_threshold
    masks &= gate[:, None, None]
    subtypes = None
    if subtype_probabilities is not None and np.asarray(subtype_probabilities).size:
        subtypes = np.asarray(subtype_probabilities, dtype=np.float32)
    return Segmentation(masks, np.asarray(slice_probabilities, dtype=np.float32), subtypes)


def masks_from_u8_probabilities(
    probabilities_u8: np.ndarray, slice_probabilities: np.ndarray, pixel_threshold: float, slice_threshold: float
) -> np.ndarray:
    """:func:`masks_from_probabilities` for probability x 255 maps as the endpoint sends them.

    Bit for bit what thresholding ``probabilities_u8 / 255`` in float32 gives, by one integer
    comparison instead of a float copy of every map: the smallest grey level whose float32
    probability reaches the threshold is found once, over the 256 possible levels.
    """
    levels = (np.arange(256, dtype=np.float32) / 255.0) >= pixel_threshold
    first = int(np.argmax(levels)) if levels.any() else 256
    masks = np.asarray(probabilities_u8) >= first if first < 256 else np.zeros(np.shape(probabilities_u8), bool)
    gate = np.asarray(slice_probabilities) >= slice_threshold
    masks &= gate[:, None, None]
    return masks
