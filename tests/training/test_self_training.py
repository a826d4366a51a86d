"""Self-training targets: a teacher's confident outlines replace the weak targets, within limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichseg.inference import OnnxSegmenter
from ichseg.preprocess import model_input_spec
from tests.onnx_fixtures import build_tiny_model
from training.metrics import dice
from training.self_training import BACKGROUND, CONFIDENT, pseudo_target
from training.training_set import SHARED_DATA, _Rows, add_ct_ich
from training.weak_labels import WeakTarget


def _fallback(shape: tuple[int, int]) -> WeakTarget:
    return WeakTarget(np.zeros(shape, np.float32), np.zeros(shape, np.float32))


def test_a_confident_region_is_the_target_unsure_pixels_and_specks_teach_nothing() -> None:
    probabilities = np.zeros((650, 650), np.float32)
    probabilities[100:160, 100:160] = 0.9  # a bleed the teacher is sure of
    probabilities[95:100, 100:160] = (CONFIDENT + BACKGROUND) / 2  # its unsure rim
    probabilities[400:403, 400:403] = 0.95  # a speck: 9 px, far below a bleed's size
    probabilities[300:310, 300:310] = BACKGROUND  # faint: still a no-bleed target
    fallback = _fallback(probabilities.shape)
    target = pseudo_target(probabilities, fallback)
    assert target is not fallback
    assert target.mask.sum() == 60 * 60 and target.mask[100:160, 100:160].all()
    assert not target.weight[95:100, 100:160].any() and not target.weight[400:403, 400:403].any()
    assert target.mask[400:403, 400:403].sum() == 0
    assert target.weight[300:310, 300:310].all() and target.weight[0, 0] == 1.0


def test_a_slice_the_teacher_is_sure_of_nothing_keeps_its_weak_target() -> None:
    probabilities = np.full((200, 200), CONFIDENT - 0.01, np.float32)
    fallback = _fallback(probabilities.shape)
    assert pseudo_target(probabilities, fallback) is fallback


def test_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert dice(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)


def _rows(teacher: OnnxSegmenter | None) -> dict[str, np.ndarray]:
    rows = _Rows()
    # The first 117 listed slices: patients 049 and 050 (train), 051 and 052 (test, with masks).
    add_ct_ich(rows, SHARED_DATA / "ct-ich", model_input_spec(64), limit=117, teacher=teacher)
    built = rows.build()
    return {name: getattr(built, name) for name in ("masks", "mask_weights", "labels", "split", "real_mask", "images")}


def test_only_training_patients_bleeding_slices_without_a_radiologist_mask_are_taught(tmp_path: Path) -> None:
    # The tiny model paints bright pixels: in a brain window, blood (and what the weak targets miss).
    spec = model_input_spec(64)
    model = build_tiny_model(tmp_path / "teacher.onnx", size=64, channels=3, intracranial_only=spec.intracranial_only)
    before, after = _rows(None), _rows(OnnxSegmenter(model))
    assert set(before["split"]) == {"train", "test"}
    masks_moved = (before["masks"] != after["masks"]).any(axis=(1, 2))
    changed = masks_moved | (before["mask_weights"] != after["mask_weights"]).any(axis=(1, 2))
    taught = (before["split"] == "train") & (before["labels"] == 1) & ~before["real_mask"]
    assert changed.any() and not changed[~taught].any()  # normal, held-out and radiologist rows untouched
    # What is taught is what the teacher is sure of: bright pixels of the slice itself.
    centre = after["images"][changed][..., 1]
    painted = after["masks"][changed] > 127
    assert painted.any() and np.mean(centre[painted] >= 128) > 0.95
