"""What people look at: mask overlays, H.264 videos that phones play, and contact sheets."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw

HEMORRHAGE_RGB = (255, 40, 40)
"""Overlay colour for hemorrhage: a saturated red that reads on grey CT at any opacity."""


def overlay_mask(
    slice_u8: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = HEMORRHAGE_RGB,
    opacity: float = 0.4,
    outline: bool = True,
) -> np.ndarray:
    """Blend a binary mask onto a grey slice: ``(H, W)`` uint8 + ``(H, W)`` bool -> ``(H, W, 3)`` uint8.

    The fill shows extent; the opaque outline keeps the boundary visible where the fill is faint.
    """
    rgb = np.repeat(np.asarray(slice_u8, dtype=np.uint8)[..., None], 3, axis=-1)
    region = np.asarray(mask, dtype=bool)
    if not region.any():
        return rgb
    tint = np.array(color, dtype=np.float32)
    blended = rgb.astype(np.float32)
    blended[region] = (1 - opacity) * blended[region] + opacity * tint
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if outline:
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, round(min(region.shape) / 256))
        cv2.drawContours(out, contours, -1, color, thickness)
    return out


def overlay_scan(slices_u8: np.ndarray, masks: np.ndarray, opacity: float = 0.4, outline: bool = True) -> np.ndarray:
    """Overlay every slice of a scan: ``(N, H, W)`` + ``(N, H, W)`` -> ``(N, H, W, 3)``."""
    return np.stack(
        [overlay_mask(s, m, opacity=opacity, outline=outline) for s, m in zip(slices_u8, masks, strict=True)]
    )


def caption_frames(frames: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    """RGB ``(N, H, W, 3)`` frames with one line of text each in the top-left corner (a copy)."""
    out = np.array(frames, dtype=np.uint8, copy=True)
    for frame, text in zip(out, captions, strict=True):
        scale = max(0.35, frame.shape[0] / 900)
        thickness = max(1, round(scale * 1.5))
        origin = (max(4, frame.shape[1] // 100), max(14, round(24 * scale)))
        # A dark halo under light text stays readable on bone and on air alike.
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 180), thickness, cv2.LINE_AA)
    return out


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 with yuv420p needs even sides: pad the last row/column by edge replication."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if not (pad_h or pad_w):
        return frame
    pad = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (frame.ndim - 2)
    return np.pad(frame, pad, mode="edge")


def write_h264(
    frames: np.ndarray | Sequence[np.ndarray],
    destination: str | Path | None = None,
    fps: float = 5.0,
    crf: int = 18,
    preset: str = "medium",
) -> bytes:
    """Encode grey ``(N, H, W)`` or RGB ``(N, H, W, 3)`` uint8 frames as H.264 mp4 (yuv420p, faststart).

    Returns the file's bytes, and also writes them to ``destination`` when given. Odd sizes are
    padded by one pixel. ``crf`` 18 is visually lossless for CT slices; ``preset`` trades encode
    time for file size (``veryfast`` encodes ~4x faster than ``medium`` at a somewhat larger file).
    """
    if len(frames) == 0:
        raise ValueError("a video needs at least one frame")
    first = _even(np.asarray(frames[0]))
    # faststart rewrites the file to put the index first: FFmpeg needs a real file for that.
    with tempfile.TemporaryDirectory(prefix="ichseg-h264-") as tmp:
        path = Path(tmp) / "video.mp4"
        _encode_h264(frames, first, path, fps, crf, preset)
        data = path.read_bytes()
    if destination is not None:
        Path(destination).write_bytes(data)
    return data


def _encode_h264(
    frames: np.ndarray | Sequence[np.ndarray], first: np.ndarray, path: Path, fps: float, crf: int, preset: str
) -> None:
    pixel_format = "gray" if first.ndim == 2 else "rgb24"
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=_fps_fraction(fps))
        stream.width, stream.height = first.shape[1], first.shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(_even(np.ascontiguousarray(image, dtype=np.uint8)), format=pixel_format)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1000)


def contact_sheet(
    frames: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    columns: int | None = None,
    thumb: int = 160,
) -> Image.Image:
    """A grid of thumbnails (grey or RGB frames), each captioned with its label (e.g. slice id)."""
    count = len(frames)
    if count == 0:
        raise ValueError("a contact sheet needs at least one frame")
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    caption = 14
    sheet = Image.new("RGB", (columns * thumb, rows * (thumb + caption)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, frame in enumerate(frames):
        image = Image.fromarray(np.asarray(frame, dtype=np.uint8)).convert("RGB")
        image.thumbnail((thumb, thumb))
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption)
        sheet.paste(image, (x + (thumb - image.width) // 2, y + caption + (thumb - image.height) // 2))
        if labels is not None:
            draw.text((x + 3, y + 1), str(labels[i]), fill=(230, 230, 230))
    return sheet


def write_contact_sheet(
    frames: np.ndarray | Sequence[np.ndarray], destination: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Save :func:`contact_sheet` as PNG."""
    path = Path(destination)
    contact_sheet(frames, labels).save(path, format="PNG")
    return path
