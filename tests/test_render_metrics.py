"""Overlays, H.264 output, contact sheets and metrics."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from ichseg.metrics import detection_stats, dice, iou, per_scan, per_slice, roc_auc, volume_ml
from ichseg.readers import read_scan
from ichseg.render import HEMORRHAGE_RGB, contact_sheet, overlay_mask, write_h264


def test_overlay_tints_only_the_mask_and_outlines_it() -> None:
    grey = np.full((40, 40), 100, dtype=np.uint8)
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    out = overlay_mask(grey, mask, opacity=0.5, outline=True)
    assert out.shape == (40, 40, 3)
    assert tuple(out[0, 0]) == (100, 100, 100)
    assert tuple(out[20, 20]) == (178, 70, 70)  # 50 % blend with the hemorrhage red
    assert tuple(out[10, 20]) == HEMORRHAGE_RGB  # the outline is opaque
    assert np.array_equal(overlay_mask(grey, np.zeros_like(mask))[..., 0], grey)


def test_h264_video_is_playable_yuv420p_faststart_even(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, size=(4, 51, 33, 3), dtype=np.uint8)
    data = write_h264(frames, tmp_path / "out.mp4", fps=4)
    assert (tmp_path / "out.mp4").read_bytes() == data
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (34, 52)
        assert sum(1 for _ in container.decode(stream)) == 4
    # faststart: the index (moov) precedes the media data (mdat).
    assert 0 < data.find(b"moov") < data.find(b"mdat")
    assert read_scan(data).num_slices == 4


def test_contact_sheet_grid() -> None:
    sheet = contact_sheet(np.zeros((5, 20, 20), np.uint8), labels=list("abcde"), thumb=50)
    assert sheet.size == (150, 2 * (50 + 14))


def test_dice_iou_and_empty_convention() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice(a, b) == 1.0 and iou(a, b) == 1.0  # both empty: a correct "nothing"
    b[0, 0] = True
    assert dice(a, b) == 0.0 and iou(a, b) == 0.0
    a[0, :2] = True
    assert dice(a, b) == pytest.approx(2 / 3) and iou(a, b) == pytest.approx(1 / 2)
    stack_p, stack_t = np.stack([a, a]), np.stack([b, np.zeros_like(b)])
    assert per_slice(dice, stack_p, stack_t).tolist() == pytest.approx([2 / 3, 0.0])
    assert per_scan(dice, stack_p, stack_t) == pytest.approx(2 * 1 / (4 + 1))


def test_detection_and_auc() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    assert roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(scores, np.ones(4)))
    stats = detection_stats(scores, labels, threshold=0.35)
    assert (stats.true_positives, stats.false_positives, stats.true_negatives, stats.false_negatives) == (2, 1, 1, 0)
    assert stats.sensitivity == 1.0 and stats.specificity == 0.5


def test_volume_in_millilitres() -> None:
    masks = np.zeros((3, 10, 10), bool)
    masks[:, :5, :4] = True  # 60 voxels of 0.5 x 0.5 x 5 mm = 75 mm³
    assert volume_ml(masks, (0.5, 0.5), 5.0) == pytest.approx(0.075)
