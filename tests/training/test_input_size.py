"""The Dice ceiling an input size puts on outlines (training.input_size)."""

from __future__ import annotations

import numpy as np

from tests.onnx_fixtures import head_phantom
from training.input_size import Outline, round_trip_dice


def test_a_small_bleed_loses_more_at_a_small_input_than_a_large_one() -> None:
    slice_u8 = head_phantom(count=1, height=512, width=512, skull=True)[0]
    large = np.zeros((512, 512), bool)
    large[200:300, 200:300] = True
    small = np.zeros((512, 512), bool)
    small[250:256, 250:256] = True
    assert round_trip_dice(Outline("test", "large", slice_u8, large), 160) > 0.95
    coarse = round_trip_dice(Outline("test", "small", slice_u8, small), 64)
    fine = round_trip_dice(Outline("test", "small", slice_u8, small), 256)
    assert coarse < 0.8 < fine
