"""Windowing and model preprocessing: the single definition training and serving share."""

from __future__ import annotations

import numpy as np
import pytest

from ichseg.preprocess import InputSpec, from_model_output, to_model_input
from ichseg.scan import Scan
from ichseg.windowing import BONE, BRAIN, CT_ICH_BRAIN, apply_window, window_by_name, windowed_slices


def test_brain_window_maps_level_and_edges() -> None:
    hu = np.array([-1000, 0, 40, 80, 3000], dtype=np.float32)
    assert apply_window(hu, BRAIN).tolist() == [0, 0, 128, 255, 255]
    assert apply_window(np.array([-20.0, 100.0]), CT_ICH_BRAIN).tolist() == [0, 255]
    assert apply_window(np.array([600.0]), BONE).tolist() == [128]


def test_window_lookup_names_the_choices() -> None:
    assert window_by_name("subdural").level == 75
    with pytest.raises(ValueError, match="brain"):
        window_by_name("lung")


def test_windowed_slices_passes_8bit_through_and_windows_hu() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    assert windowed_slices(Scan(grey, ("a",), "png", hu=False)) is not None
    assert np.array_equal(windowed_slices(Scan(grey, ("a",), "png", hu=False)), grey)
    hu = np.full((1, 2, 2), 40.0, dtype=np.float32)
    assert windowed_slices(Scan(hu, ("0000",), "dicom", hu=True), BRAIN).tolist() == [[[128, 128], [128, 128]]]


def test_model_input_shape_range_and_round_trip_geometry() -> None:
    slices = np.zeros((2, 300, 200), dtype=np.uint8)
    slices[:, 100:200, 50:150] = 255  # a square in a non-square slice
    x = to_model_input(slices, InputSpec(size=64))
    assert x.shape == (2, 64, 64, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # Letterboxing keeps the aspect ratio: the square stays square in model space.
    rows, cols = np.nonzero(x[0, ..., 0] > 0.5)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1
    back = from_model_output(x, 300, 200)
    assert back.shape == (2, 300, 200)
    assert np.mean((back[0] > 0.5) == (slices[0] > 127)) > 0.98


def test_model_input_rejects_hu() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(np.zeros((1, 8, 8), np.float32), InputSpec(size=8))
