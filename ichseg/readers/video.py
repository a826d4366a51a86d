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
        check_scan_size(limits, name, max(declared, 1), height, width)
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                if len(frames) >= limits.max_frames:
                    check_scan_size(limits, name, len(frames) + 1, frame.height, frame.width)
                frames.append(frame.to_ndarray(format="gray"))
        except av.FFmpegError as exc:
            raise CorruptScanError(
                f"{name}: decoding failed after {len(frames)} frames; the video is truncated or damaged ({exc})"
            ) from exc
    if not frames:
        raise NoFramesError(f"{name}: the video decodes to no frames")
    if declared and len(frames) < declared:
        raise CorruptScanError(
            f"{name}: the video declares {declared} frames but only {len(frames)} could be decoded; "
            "it is truncated or damaged"
        )
    check_scan_size(limits, name, len(frames), frames[0].shape[0], frames[0].shape[1])
    return Scan(
        slices=np.stack(frames),
        slice_ids=index_ids(len(frames)),
        format=content.value,
        hu=False,
        source=name,
    )
