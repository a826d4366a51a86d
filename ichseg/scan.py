"""The :class:`Scan` domain type and :func:`read_scan`, the single entry point for every input.

A scan is an ordered stack of axial slices with the metadata that travels with the pixels:
where it came from, what each slice is called, its geometry in millimetres when known, and
whether the pixels are Hounsfield units (DICOM, NIfTI) or an already-windowed 8-bit rendering
(videos and slice images, which is what the mobile app and the CT-ICH exports provide).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichseg.errors import ScanTooLargeError, UnsupportedFormatError
from ichseg.limits import ScanLimits
from ichseg.readers.detect import HEAD_BYTES, READABLE_SINGLE, Content, detect_content


@dataclass(frozen=True)
class DicomSeriesRef:
    """What a DICOM SEG needs to point back at its source series."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    """In slice order (the order of :attr:`Scan.slices`)."""
    sop_class_uid: str
    frame_of_reference_uid: str | None = None


@dataclass(frozen=True)
class Scan:
    """An ordered stack of slices plus their metadata.

    ``slices`` has shape ``(N, H, W)``: ``float32`` Hounsfield units when ``hu`` is true,
    otherwise ``uint8`` windowed grey levels. Slices run inferior to superior for volumetric
    inputs (DICOM, NIfTI) and in file/frame order otherwise.
    """

    slices: np.ndarray
    slice_ids: tuple[str, ...]
    format: str
    hu: bool
    pixel_spacing_mm: tuple[float, float] | None = None
    """(row spacing, column spacing) in mm."""
    slice_thickness_mm: float | None = None
    """Distance between slice centres in mm (DICOM: from the position step)."""
    source: str = ""
    dicom: DicomSeriesRef | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.slices.ndim != 3:
            raise ValueError(f"slices must be (N, H, W), got shape {self.slices.shape}")
        if len(self.slice_ids) != self.slices.shape[0]:
            raise ValueError("one slice id per slice is required")

    @property
    def num_slices(self) -> int:
        return int(self.slices.shape[0])

    @property
    def original_size(self) -> tuple[int, int]:
        """(height, width) of every slice, as read."""
        return int(self.slices.shape[1]), int(self.slices.shape[2])

    def describe(self) -> dict[str, object]:
        """The summary ``ichseg inspect`` prints."""
        height, width = self.original_size
        return {
            "format": self.format,
            "slices": self.num_slices,
            "height": height,
            "width": width,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "slice_thickness_mm": self.slice_thickness_mm,
            "hu": self.hu,
        }


def read_scan(source: str | os.PathLike[str] | bytes, limits: ScanLimits | None = None) -> Scan:
    """Read any supported input: a path (file or directory) or the bytes of an upload.

    The format is detected from content. Raises a :class:`ichseg.errors.ScanError` subclass with
    a user-facing message for anything that is not a readable, reasonably sized CT scan.
    """
    limits = limits or ScanLimits.from_env()
    if isinstance(source, bytes | bytearray | memoryview):
        return _read_blob(bytes(source), name="upload", limits=limits)
    path = Path(source)
    if path.is_dir():
        from ichseg.readers.collection import read_directory

        return read_directory(path, limits)
    if not path.exists():
        raise UnsupportedFormatError(f"{path}: no such file or directory")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ScanTooLargeError(
            f"{path.name} is {size / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB"
        )
    return _read_blob(path.read_bytes(), name=path.name, limits=limits)


def _read_blob(data: bytes, name: str, limits: ScanLimits) -> Scan:
    if len(data) > limits.max_bytes:
        raise ScanTooLargeError(
            f"{name} is {len(data) / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB"
        )
    content = detect_content(data[:HEAD_BYTES])
    if content not in READABLE_SINGLE:
        raise UnsupportedFormatError(
            f"{name}: detected {content.value}; ichseg reads MP4/MOV or AVI videos, JPEG/PNG slices "
            "(alone, zipped or in a folder), DICOM (an instance or a zipped series) and NIfTI volumes"
        )
    if content in (Content.MP4, Content.MOV, Content.AVI):
        from ichseg.readers.video import read_video

        return read_video(data, content, name, limits)
    if content in (Content.JPEG, Content.PNG):
        from ichseg.readers.images import read_single_image

        return read_single_image(data, content, name, limits)
    if content == Content.ZIP:
        from ichseg.readers.collection import read_zip

        return read_zip(data, name, limits)
    if content == Content.DICOM:
        from ichseg.readers.dicom import read_dicom_instances

        return read_dicom_instances([(name, data)], fmt="dicom", source=name, limits=limits)
    from ichseg.readers.nifti import read_nifti

    return read_nifti(data, content, name, limits)
