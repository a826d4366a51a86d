"""Windowing and model preprocessing: the single definition training and serving share."""

from __future__ import annotations

import numpy as np
import pytest

from ichseg.preprocess import (
    InputSpec,
    head_placement,
    intracranial_region,
    place_mask,
    prepare_batch,
    restore_probabilities,
)
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
    batch = prepare_batch(slices, InputSpec(size=64, crop_to_head=False))
    x = batch.inputs
    assert x.shape == (2, 64, 64, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # Letterboxing keeps the aspect ratio: the square stays square in model space.
    rows, cols = np.nonzero(x[0, ..., 0] > 0.5)
    assert abs((rows.max() - rows.min()) - (cols.max() - cols.min())) <= 1
    back = restore_probabilities(x, batch.placements)
    assert back.shape == (2, 300, 200)
    assert np.mean((back[0] > 0.5) == (slices[0] > 127)) > 0.98


def _head(height: int, width: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width), dtype=np.uint8)
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = 120
    image[-5:, :] = 200  # a CT table strip along the bottom edge, not part of the head
    return image


def test_crop_to_head_zooms_on_the_head_and_maps_back_exactly() -> None:
    image = _head(400, 300, centre=(150, 170), radius=60)
    placement = head_placement(image)
    assert placement.side < 160 and abs(placement.top + placement.side / 2 - 150) < 8
    batch = prepare_batch(image[None], InputSpec(size=96))
    # The head fills most of the model's view instead of a small part of the frame.
    assert (batch.inputs[0, ..., 0] > 0.2).mean() > 0.6
    back = restore_probabilities(batch.inputs, batch.placements)[0]
    head = image == 120
    assert np.mean((back > 0.2) == head) > 0.99
    target = place_mask(head, batch.placements[0], 96)
    assert np.allclose(target, batch.inputs[0, ..., 0] / (120 / 255), atol=0.02)


def test_crop_handles_a_head_past_the_frame_edge_and_an_empty_slice() -> None:
    image = _head(200, 200, centre=(20, 100), radius=70)
    batch = prepare_batch(np.stack([image, np.zeros_like(image)]), InputSpec(size=64))
    assert batch.placements[0].top < 0  # zero-padded beyond the top edge
    assert batch.placements[1].side == 200  # nothing to crop to: the whole frame
    back = restore_probabilities(np.ones((2, 64, 64, 1), np.float32), batch.placements)
    assert back.shape == (2, 200, 200) and back[1].min() == 1.0


def test_model_input_rejects_hu() -> None:
    with pytest.raises(ValueError, match="uint8"):
        prepare_batch(np.zeros((1, 8, 8), np.float32), InputSpec(size=8))


def _skull_slice(size: int = 200, scalp_blob: bool = True, ring_open: bool = False) -> np.ndarray:
    """A brain-window slice: brain (grey 110) inside a bone ring (255), scalp (90) outside it and,
    optionally, a dense scalp swelling (200, blood-like) outside the skull."""
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    image = np.zeros((size, size), np.uint8)
    image[radius < 0.44 * size] = 90  # scalp
    image[radius < 0.40 * size] = 255  # skull
    image[radius < 0.36 * size] = 110  # brain
    if ring_open:
        image[
            (radius >= 0.36 * size) & (radius < 0.40 * size) & (xx > size * 0.35) & (xx < size * 0.65) & (yy < size / 2)
        ] = 110
    if scalp_blob:
        image[(np.hypot(yy - size * 0.5, xx - size * 0.92) < size * 0.05) & (radius >= 0.41 * size)] = 200
    return image


def test_intracranial_region_is_the_inside_of_the_skull_not_the_scalp() -> None:
    image = _skull_slice(160)
    region = intracranial_region(image)
    yy, xx = np.mgrid[:160, :160]
    radius = np.hypot(yy - 80, xx - 80)
    assert region[radius < 0.34 * 160].all()  # all of the brain
    assert not region[radius > 0.41 * 160].any()  # nothing of the scalp or the swelling on it
    assert region[(radius > 0.36 * 160) & (radius < 0.365 * 160)].mean() > 0.9  # blood on the inner table stays


def test_intracranial_region_falls_back_to_the_head_without_bone_when_the_ring_is_open() -> None:
    image = _skull_slice(160, scalp_blob=False, ring_open=True)
    region = intracranial_region(image)
    assert 0.2 < region.mean() < 0.6  # something head-sized, not nothing and not the frame
    assert region[80, 80] and region[image == 255].mean() < 0.35  # the brain, bone only along its edges
    assert not region[np.hypot(*np.mgrid[-80:80, -80:80]) > 0.43 * 160].any()  # no scalp


def test_inputs_are_zero_outside_the_skull_and_regions_come_with_the_batch() -> None:
    slices = np.stack([_skull_slice(200)] * 3)
    spec = InputSpec(size=96, channels=3, intracranial_only=True)
    batch = prepare_batch(slices, spec)
    assert batch.inputs.shape == (3, 96, 96, 3) and batch.regions.shape == (3, 96, 96)
    assert (batch.inputs[~batch.regions] == 0).all()
    assert batch.inputs[batch.regions].mean() > 0.3
    plain = prepare_batch(slices, InputSpec(size=96))
    assert plain.regions.all()  # without the option, predictions may go anywhere (models before 0.2)


def test_context_channels_are_the_neighbours_below_and_above_cropped_like_the_slice() -> None:
    slices = np.stack([_skull_slice(200, scalp_blob=False)] * 4)
    for index in range(4):
        slices[index][slices[index] == 110] = 60 + 20 * index  # each slice's brain a different grey
    batch = prepare_batch(slices, InputSpec(size=64, channels=3))
    centre = (32, 32)
    greys = np.rint(batch.inputs[:, centre[0], centre[1], :] * 255).astype(int)
    # slice i sees (i-1, i, i+1); the ends repeat themselves where the scan has no neighbour
    assert greys.tolist() == [[60, 60, 80], [60, 80, 100], [80, 100, 120], [100, 120, 120]]
    assert len({p.side for p in batch.placements}) == 1
    single = prepare_batch(slices[1:2], InputSpec(size=64, channels=3))
    assert np.rint(single.inputs[0, 32, 32] * 255).astype(int).tolist() == [80, 80, 80]


def test_one_channel_preprocessing_is_unchanged_for_models_before_0_2() -> None:
    slices = np.stack([_skull_slice(200)] * 2)
    old = prepare_batch(slices, InputSpec(size=64))
    new = prepare_batch(slices, InputSpec(size=64, channels=3))
    assert np.array_equal(old.inputs[..., 0], new.inputs[..., 1])
    with pytest.raises(ValueError, match="neighbours"):
        prepare_batch(slices, InputSpec(size=64, channels=2))
