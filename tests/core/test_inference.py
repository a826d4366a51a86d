"""Reading slices with the model in-process: the mirrored second reading (test-time flip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ichseg.inference import OnnxSegmenter
from tests.onnx_fixtures import build_tiny_model, head_phantom


def test_the_mirrored_reading_averages_with_the_mirror_s_answer_mirrored_back(tmp_path: Path) -> None:
    slices = head_phantom(count=3, height=64, width=64, skull=True)
    slices[:, 20:30, 12:22] = 230  # a bright patch on one side only
    # A model that leans to one side, so that its answer for the mirror is not the mirrored answer.
    model = {"size": 64, "crop_to_head": False, "channels": 3, "lean": 4.0}
    once = OnnxSegmenter(build_tiny_model(tmp_path / "once.onnx", **model))
    twice = OnnxSegmenter(build_tiny_model(tmp_path / "twice.onnx", test_time_flip=True, **model))
    direct, mirror = once.predict(slices), once.predict(np.ascontiguousarray(slices[:, :, ::-1]))
    both = twice.predict(slices)
    expected = (direct.probabilities + mirror.probabilities[:, :, ::-1]) / 2
    assert np.allclose(both.probabilities, expected, atol=1e-6)
    assert np.abs(both.probabilities - direct.probabilities).max() > 0.1  # the second reading counts
    assert np.allclose(both.slice_probabilities, (direct.slice_probabilities + mirror.slice_probabilities) / 2)
    # A model without a lean answers a mirror with the mirrored answer: the reading changes nothing,
    # which holds only if the mirror's maps are mirrored back before they are averaged.
    upright = {"size": 64, "crop_to_head": False, "channels": 3}
    plain = OnnxSegmenter(build_tiny_model(tmp_path / "plain.onnx", **upright)).predict(slices)
    flipped = OnnxSegmenter(build_tiny_model(tmp_path / "flip.onnx", test_time_flip=True, **upright)).predict(slices)
    assert np.allclose(flipped.probabilities, plain.probabilities, atol=1e-6)
    assert np.abs(plain.probabilities - plain.probabilities[:, :, ::-1]).max() > 0.5  # the slices are not symmetric
