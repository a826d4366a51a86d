"""Videos of slices (MP4/MOV with H.264/HEVC, AVI with MJPG or raw frames), decoded with PyAV.

The mobile app uploads a video of windowed slices; the CT-ICH data itself was acquired as AVI
exports. Each frame is one slice; the frame's luma is the grey level.
"""

from __future__ import annotations

import io

import av
import numpy as np

from ichseg.errors import CorruptScanError, NoFramesError
from ichseg.limits import ScanLimits, check_scan_size
from ichseg.readers.detect import Content
from ichseg.readers.naming import index_ids
from ichseg.scan import Scan


def read_video(data: bytes, content: Content, name: str, limits: ScanLimits) -> Scan:
    """Decode every frame of the first video stream into a uint8 slice."""
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as exc:
        raise CorruptScanError(
            f"{name}: the {content.value} video cannot be opened; it is truncated or damaged ({exc})"
        ) from exc
    with container:
        if not container.streams.video:
            raise NoFramesError(f"{name}: the {content.value} file has no video stream")
        stream = container.streams.video[0]
        declared = int(stream.frames or 0)
        width, height = stream.codec_context.width, stream.codec_context.height
        # Limits first, from the stream's header: a tiny file can declare huge frames.
        check_scan_size(limits, name, max(declared, 1), height, width)
        # With a declared count the frames decode straight into one array (no list + stack copy,
        # so the peak is the scan's size, not twice it).
        slices: np.ndarray | None = np.empty((declared, height, width), np.uint8) if declared else None
        frames: list[np.ndarray] = []
        count = 0
        try:
            for frame in container.decode(stream):
                if count >= max(declared, limits.max_frames) or (frame.height, frame.width) != (height, width):
                    check_scan_size(limits, name, count + 1, frame.height, frame.width)
                    if (frame.height, frame.width) != (height, width):
                        raise CorruptScanError(
                            f"{name}: frame {count + 1} is {frame.width}x{frame.height}, the stream declares "
                            f"{width}x{height}; one scan has one slice size"
                        )
                grey = frame.to_ndarray(format="gray")
                if slices is not None and count < declared:
                    slices[count] = grey
                else:
                    frames.append(grey)
                count += 1
        except av.FFmpegError as exc:
            raise CorruptScanError(
                f"{name}: decoding failed after {count} frames; the video is truncated or damaged ({exc})"
            ) from exc
    if count == 0:
        raise NoFramesError(f"{name}: the video decodes to no frames")
    if declared and count < declared:
        raise CorruptScanError(
            f"{name}: the video declares {declared} frames but only {count} could be decoded; "
            "it is truncated or damaged"
        )
    check_scan_size(limits, name, count, height, width)
    if slices is None:
        slices = np.stack(frames)
    elif frames:  # more frames than the header declared (allowed; some muxers under-count)
        slices = np.concatenate([slices, np.stack(frames)])
    return Scan(
        slices=slices,
        slice_ids=index_ids(count),
        format=content.value,
        hu=False,
        source=name,
    )
