"""The :class:`Scan` domain type (read one with :func:`ichseg.readers.read_scan`).

A scan is an ordered stack of axial slices with the metadata that travels with the pixels:
where it came from, what each slice is called, its geometry in millimetres when known, and
whether the pixels are Hounsfield units (DICOM, NIfTI) or an already-windowed 8-bit rendering
(videos and slice images, which is what the mobile app and the CT-ICH exports provide).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    non_image_objects: int = 0
    """DICOM objects in the input without pixel data (DICOMDIR, dose reports...), skipped."""

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
        } | ({"non_image_objects": self.non_image_objects} if self.non_image_objects else {})
