"""Overlays, H.264 output and contact sheets."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from ichseg.readers import read_scan
from ichseg.writers.render import HEMORRHAGE_RGB, caption_frame, contact_sheet, overlay_mask, write_h264


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


def test_a_caption_wider_than_the_frame_is_set_smaller_not_cut_off() -> None:
    frame = np.zeros((200, 160, 3), np.uint8)
    caption_frame(frame, "ichseg: Hemorrhage detected, probability 0.97 and more words besides")
    columns = np.flatnonzero(frame.any(axis=(0, 2)))
    margin = max(4, frame.shape[1] // 100)
    assert columns[0] >= margin - 2 and columns[-1] <= frame.shape[1] - margin + 2  # the halo may pass by 1-2 px
    assert columns[-1] > frame.shape[1] * 0.8  # and it still uses the width
    lines = np.zeros((200, 160, 3), np.uint8)
    caption_frame(lines, "one", line=0)
    caption_frame(lines, "two", line=1)
    caption_frame(lines, "bottom", bottom=True)
    rows = np.flatnonzero(lines.any(axis=(1, 2)))
    assert rows[0] < 20 and rows[-1] > 180 and not lines[60:160].any()  # two lines on top, one below
