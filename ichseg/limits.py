"""Input limits: what ichseg agrees to decode, configurable per deployment.

Defaults suit a head CT (a few hundred slices of 512x512); every value can be overridden with an
``ICHSEG_LIMIT_*`` environment variable (e.g. ``ICHSEG_LIMIT_MAX_FRAMES=2000``), so a Lambda and a
workstation can differ without code changes.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

MiB = 1024 * 1024


@dataclass(frozen=True)
class ScanLimits:
    """Upper bounds checked before and while decoding a scan."""

    max_bytes: int = 1024 * MiB
    """Size of the upload itself (file, zip or directory total)."""
    max_frames: int = 1500
    """Number of slices (video frames, images, DICOM instances, NIfTI slices)."""
    max_pixels_per_slice: int = 4096 * 4096
    """Height x width of one slice."""
    max_total_pixels: int = 600 * 1024 * 1024
    """Slices x height x width: bounds decoded memory (~600 Mi voxels)."""
    max_uncompressed_bytes: int = 4096 * MiB
    """Sum of declared member sizes in a zip, or decompressed size of a .nii.gz."""
    max_compression_ratio: float = 200.0
    """Uncompressed / compressed size per zip member; CT images compress far less than this."""
    max_archive_members: int = 5000

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ScanLimits:
        """Defaults, overridden by ``ICHSEG_LIMIT_<FIELD>`` variables where set."""
        env = os.environ if environ is None else environ
        overrides: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"ICHSEG_LIMIT_{field.name.upper()}")
            if raw is not None:
                overrides[field.name] = float(raw) if field.type == "float" else int(raw)
        return dataclasses.replace(cls(), **overrides)


def check_scan_size(limits: ScanLimits, name: str, frames: int, height: int, width: int) -> None:
    """Raise :class:`ScanTooLargeError` if a scan of this shape exceeds ``limits``.

    Called before decoding whenever the shape is known up front, so nothing huge is allocated.
    """
    from ichseg.errors import ScanTooLargeError

    if frames > limits.max_frames:
        raise ScanTooLargeError(f"{name} has {frames} slices; the limit is {limits.max_frames}")
    if height * width > limits.max_pixels_per_slice:
        raise ScanTooLargeError(
            f"{name} has {width}x{height} slices ({height * width} pixels); "
            f"the limit is {limits.max_pixels_per_slice} pixels per slice"
        )
    if frames * height * width > limits.max_total_pixels:
        raise ScanTooLargeError(
            f"{name} holds {frames} x {width}x{height} = {frames * height * width} voxels; "
            f"the limit is {limits.max_total_pixels}"
        )
