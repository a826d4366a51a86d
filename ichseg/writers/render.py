"""What people look at: mask overlays, H.264 videos that phones play, and contact sheets."""

from __future__ import annotations

import io
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
    # cvtColor is ~25x faster than np.repeat on the last axis, and most slices have no mask at all.
    rgb = cv2.cvtColor(np.ascontiguousarray(slice_u8, dtype=np.uint8), cv2.COLOR_GRAY2RGB)
    region = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(region.any(axis=1))
    if not len(rows):
        return rgb
    cols = np.flatnonzero(region.any(axis=0))
    # Blend inside the mask's bounding box only: the same float32 arithmetic on the same pixels as
    # blending the whole frame, without converting hundreds of thousands of untouched pixels.
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = region[box]
    patch = rgb[box]
    tint = np.array(color, dtype=np.float32)
    blended = (1 - opacity) * patch[inside].astype(np.float32) + opacity * tint
    patch[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if outline:
        contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, round(min(region.shape) / 256))
        cv2.drawContours(rgb, contours, -1, color, thickness)
    return rgb


def caption_frame(frame: np.ndarray, text: str, bottom: bool = False, line: int = 0) -> np.ndarray:
    """Write one line of text into the top-left (or bottom-left) corner of an RGB ``(H, W, 3)``
    frame, in place; ``line`` counts lines down from the top (up from the bottom). Text wider than
    the frame is set smaller, never cut off."""
    margin = max(4, frame.shape[1] // 100)
    width_at_1 = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0] or 1
    scale = min(max(0.35, frame.shape[0] / 900), (frame.shape[1] - 2 * margin) / width_at_1)
    thickness = max(1, round(scale * 1.5))
    step = max(14, round(28 * max(scale, 0.35)))
    origin = (margin, frame.shape[0] - margin - line * step if bottom else step * (line + 1))
    # A dark halo under light text stays readable on bone and on air alike.
    cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 180), thickness, cv2.LINE_AA)
    return frame


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 with yuv420p needs even sides: pad the last row/column by edge replication."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if not (pad_h or pad_w):
        return frame
    pad = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (frame.ndim - 2)
    return np.pad(frame, pad, mode="edge")


OVERLAY_CRF = 20
OVERLAY_PRESET = "ultrafast"
"""The segmented overlay video's encoder settings: people wait for it, so encoding is fast. x264's
``ultrafast`` costs half of ``superfast`` (16 overlays of 650x650: 77 against 162 ms, the largest
share of rendering a batch) for a ~60 % larger file (470 against 290 KB); it is for viewing, not
archiving, and the quality (CRF) is the same."""


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
    One segment (:func:`encode_h264_segment`) made into the final file by :func:`concat_h264`: the
    one code path for whole videos and for videos assembled from per-batch segments.
    """
    return concat_h264([encode_h264_segment(frames, fps=fps, crf=crf, preset=preset)], destination)


def encode_h264_segment(
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float = 5.0,
    crf: int = 18,
    preset: str = "medium",
    threads: int = 0,
) -> bytes:
    """Encode frames as an H.264 mp4 segment in memory, for :func:`concat_h264` to join.

    Segments made with the same size, ``fps``, ``crf`` and ``preset`` join into one stream: each
    starts with a key frame, and x264 writes the same parameter sets for the same settings.
    ``threads`` 0 lets x264 choose; 1 suits a worker that shares its cores with other work.
    No B-frames, so that every segment's decode order is its display order and timestamps
    can simply be shifted when segments are joined.
    """
    if len(frames) == 0:
        raise ValueError("a video needs at least one frame")
    first = _even(np.asarray(frames[0]))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_fps_fraction(fps))
        stream.width, stream.height = first.shape[1], first.shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset, "threads": str(threads), "bframes": "0"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(_yuv420p(_even(np.asarray(image, dtype=np.uint8))), format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def concat_h264(segments: Sequence[bytes], destination: str | Path | None = None) -> bytes:
    """Join :func:`encode_h264_segment` segments, in order, into one mp4 with faststart (no re-encoding).

    Packets are copied and their timestamps shifted by the frames before them. Segments whose
    parameter sets differ (another encoder build or settings) cannot share one H.264 stream
    description; they are decoded and encoded again, so the result is always one playable video.
    """
    if not segments:
        raise ValueError("a video needs at least one segment")
    # faststart rewrites the file to put the index first: FFmpeg needs a real file for that.
    with tempfile.TemporaryDirectory(prefix="ichseg-h264-") as tmp:
        path = Path(tmp) / "video.mp4"
        if not _remux(segments, path):
            _reencode(segments, path)
        data = path.read_bytes()
    if destination is not None:
        Path(destination).write_bytes(data)
    return data


def _remux(segments: Sequence[bytes], path: Path) -> bool:
    """Copy every segment's packets into ``path``; False if their parameter sets differ."""
    inputs = [av.open(io.BytesIO(segment), mode="r") for segment in segments]
    try:
        streams = [container.streams.video[0] for container in inputs]
        template = streams[0]
        if any(
            (s.codec_context.extradata, s.time_base, s.width, s.height)
            != (template.codec_context.extradata, template.time_base, template.width, template.height)
            for s in streams
        ):
            return False
        with av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"}) as output:
            out_stream = output.add_stream_from_template(template)
            offset = 0
            for stream, container in zip(streams, inputs, strict=True):
                end = offset
                for packet in container.demux(stream):
                    if packet.dts is None or packet.pts is None:  # the demuxer's end-of-stream marker
                        continue
                    duration = packet.duration or 0
                    end = max(end, packet.pts + offset + duration)
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = out_stream
                    output.mux(packet)
                offset = end
        return True
    finally:
        for container in inputs:
            container.close()


def _reencode(segments: Sequence[bytes], path: Path) -> None:
    """The fallback of :func:`concat_h264`: decode every segment and encode the frames as one stream."""
    frames: list[np.ndarray] = []
    rate: Fraction | None = None
    for segment in segments:
        with av.open(io.BytesIO(segment), mode="r") as container:
            stream = container.streams.video[0]
            rate = rate or stream.average_rate
            frames += [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    video = encode_h264_segment(frames, fps=float(rate or 5), crf=OVERLAY_CRF, preset=OVERLAY_PRESET)
    if not _remux([video], path):  # pragma: no cover - one segment always matches itself
        raise RuntimeError("could not write the re-encoded video")


_LIMITED_RANGE_LUMA = np.rint(16 + np.arange(256) * 219 / 255).astype(np.uint8)
"""Grey level -> BT.601 limited-range luma, what FFmpeg's own grey -> yuv420p conversion gives."""


def _yuv420p(image: np.ndarray) -> np.ndarray:
    """An even-sided grey or RGB frame as planar yuv420p, ``(H * 3 / 2, W)`` uint8 (BT.601, limited range).

    OpenCV's SIMD conversion matches FFmpeg's swscale to within one level and costs a fraction of it.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    if image.ndim == 2:
        planar = np.empty((height * 3 // 2, width), dtype=np.uint8)
        planar[:height] = _LIMITED_RANGE_LUMA[image]
        planar[height:] = 128  # grey: no colour
        return planar
    return cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)


def _fps_fraction(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1000)


CONTACT_THUMB = 160
"""Thumbnail side of a contact sheet, in pixels."""
_CAPTION_HEIGHT = 14


def thumbnail(frame: np.ndarray, thumb: int = CONTACT_THUMB) -> np.ndarray:
    """A grey or RGB frame as an RGB ``(h, w, 3)`` thumbnail that fits ``thumb`` x ``thumb`` (aspect kept).

    Area averaging by the whole factor first (OpenCV's fast integer path; the last few rows and
    columns past a multiple of it are left out), then bilinear to the exact size: ~5x cheaper than
    area averaging by a fractional factor or PIL's thumbnail, for a preview that looks the same.
    Frames already small enough are only converted to RGB.
    """
    image: np.ndarray = np.ascontiguousarray(frame, dtype=np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    height, width = image.shape[:2]
    scale = thumb / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    factor = max(height, width) // thumb
    if factor > 1 and height >= factor and width >= factor:
        rows, cols = height - height % factor, width - width % factor
        image = cv2.resize(image[:rows, :cols], (cols // factor, rows // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def contact_sheet(
    frames: np.ndarray | Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    columns: int | None = None,
    thumb: int = CONTACT_THUMB,
) -> Image.Image:
    """A grid of thumbnails (grey or RGB frames), each captioned with its label (e.g. slice id)."""
    return contact_sheet_from_thumbnails([thumbnail(f, thumb) for f in frames], labels, columns, thumb)


def contact_sheet_from_thumbnails(
    thumbnails: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    columns: int | None = None,
    thumb: int = CONTACT_THUMB,
) -> Image.Image:
    """:func:`contact_sheet` from :func:`thumbnail` images made beforehand (e.g. batch by batch)."""
    count = len(thumbnails)
    if count == 0:
        raise ValueError("a contact sheet needs at least one frame")
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    caption = _CAPTION_HEIGHT
    canvas = np.zeros((rows * (thumb + caption), columns * thumb, 3), dtype=np.uint8)
    for i, image in enumerate(thumbnails):
        height, width = image.shape[:2]
        x, y = (i % columns) * thumb, (i // columns) * (thumb + caption)
        top, left = y + caption + (thumb - height) // 2, x + (thumb - width) // 2
        canvas[top : top + height, left : left + width] = image
    sheet = Image.fromarray(canvas)
    if labels is not None:
        draw = ImageDraw.Draw(sheet)
        for i in range(count):
            draw.text(
                ((i % columns) * thumb + 3, (i // columns) * (thumb + caption) + 1),
                str(labels[i]),
                fill=(230, 230, 230),
            )
    return sheet


def write_contact_sheet(
    frames: np.ndarray | Sequence[np.ndarray], destination: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Save :func:`contact_sheet` as PNG."""
    path = Path(destination)
    path.write_bytes(png_bytes(contact_sheet(frames, labels)))
    return path


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """An image as PNG bytes at zlib level 1: 3x faster than PIL's default level 6, and for these
    images (black backgrounds, flat masks) within a few per cent of its size."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
