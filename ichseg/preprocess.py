"""Model input preparation, identical for training and serving (no train/serve skew).

Windowed uint8 slices of any size are letterboxed to a square (so anatomy keeps its aspect ratio),
resized to the model's input size and scaled to [0, 1]. :func:`from_model_output` undoes exactly
that geometry, bringing probabilities back to each slice's original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """What a model expects; stored in every model artifact's metadata."""

    size: int = 256
    """Square input side in pixels."""
    channels: int = 1


@dataclass(frozen=True)
class Letterbox:
    """How a slice was placed in its square canvas, so outputs can be mapped back."""

    height: int
    width: int
    side: int
    top: int
    left: int

    @classmethod
    def for_size(cls, height: int, width: int) -> Letterbox:
        side = max(height, width)
        return cls(height, width, side, (side - height) // 2, (side - width) // 2)


def to_model_input(slices: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``(N, H, W)`` uint8 -> ``(N, size, size, channels)`` float32 in [0, 1]."""
    slices = np.asarray(slices)
    if slices.ndim != 3 or slices.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 windowed slices, got {slices.dtype} {slices.shape}")
    box = Letterbox.for_size(slices.shape[1], slices.shape[2])
    out = np.empty((slices.shape[0], spec.size, spec.size), dtype=np.float32)
    for i, image in enumerate(slices):
        square = np.zeros((box.side, box.side), dtype=np.uint8)
        square[box.top : box.top + box.height, box.left : box.left + box.width] = image
        out[i] = cv2.resize(square, (spec.size, spec.size), interpolation=cv2.INTER_AREA) / np.float32(255.0)
    return np.repeat(out[..., None], spec.channels, axis=-1)


def from_model_output(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(N, size, size[, 1])`` probabilities -> ``(N, height, width)`` float32 at the original size."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim == 4:
        probabilities = probabilities[..., 0]
    box = Letterbox.for_size(height, width)
    out = np.empty((probabilities.shape[0], height, width), dtype=np.float32)
    for i, prob in enumerate(probabilities):
        square = cv2.resize(prob, (box.side, box.side), interpolation=cv2.INTER_LINEAR)
        out[i] = square[box.top : box.top + height, box.left : box.left + width]
    return out
