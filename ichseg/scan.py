"""The :class:`Scan` domain type (read one with :func:`ichseg.readers.read_scan`).

A scan is an ordered stack of axial slices with the metadata that travels with the pixels:
where it came from, what each slice is called, its geometry in millimetres when known, and
whether the pixels are Hounsfield units (DICOM, NIfTI) or an already-windowed 8-bit rendering
(videos and slice images, which is what the mobile app and the CT-ICH exports provide).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypedDict

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


class SkipReason(StrEnum):
    """Why a series of a multi-series DICOM upload was not the one segmented.

    The first group are rules a series fails on its own
    (:class:`ichseg.readers.series_selection.SeriesRules`); the second say why a series that
    passes them all lost to the chosen one.
    """

    NOT_CT = "not_ct"
    LOCALIZER = "localizer"
    INCONSISTENT = "inconsistent"
    NO_GEOMETRY = "no_geometry"
    NOT_AXIAL = "not_axial"
    SHARP_KERNEL = "sharp_kernel"
    TOO_FEW_SLICES = "too_few_slices"
    SHORT_COVERAGE = "short_coverage"
    GAP = "gap"
    # Qualifies, but another series is preferred:
    UNKNOWN_KERNEL = "unknown_kernel"
    THINNER_THAN_LIMIT = "thinner_than_limit"
    UNKNOWN_THICKNESS = "unknown_thickness"
    THICKER_THAN_CHOSEN = "thicker_than_chosen"
    THINNER_THAN_CHOSEN = "thinner_than_chosen"
    EQUIVALENT = "equivalent"


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series of an upload, named the way reasons and reports may name it: by number and
    UID, never by its description (free text that sites fill with patient details)."""

    series_number: int | None
    series_instance_uid: str
    images: int
    """Slices (frames of an Enhanced CT instance count one each)."""
    kernel: str | None = None
    """ConvolutionKernel, its values joined by a backslash."""
    thickness_mm: float | None = None
    """Median SliceThickness (the median position step where the tag is missing)."""

    @property
    def label(self) -> str:
        """``series 3`` (or ``unnumbered series`` when SeriesNumber is missing)."""
        return f"series {self.series_number}" if self.series_number is not None else "unnumbered series"

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_number": self.series_number,
            "series_instance_uid": self.series_instance_uid,
            "images": self.images,
            "kernel": self.kernel,
            "thickness_mm": self.thickness_mm,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeriesInfo:
        number, thickness = data.get("series_number"), data.get("thickness_mm")
        return cls(
            series_number=int(number) if number is not None else None,
            series_instance_uid=str(data["series_instance_uid"]),
            images=int(data["images"]),
            kernel=data.get("kernel"),
            thickness_mm=float(thickness) if thickness is not None else None,
        )


@dataclass(frozen=True)
class SkippedSeries:
    """A series not segmented, the rule that excluded it and a short reason for people."""

    series: SeriesInfo
    reason: SkipReason
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.series.to_dict(), "reason": self.reason.value, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkippedSeries:
        return cls(SeriesInfo.from_dict(data), SkipReason(data["reason"]), str(data["detail"]))


@dataclass(frozen=True)
class SeriesSelection:
    """Which series of a DICOM upload became the scan, and why the others did not."""

    chosen: SeriesInfo
    skipped: tuple[SkippedSeries, ...] = ()
    non_image_objects: int = 0
    """DICOM objects without pixel data (DICOMDIR, dose reports...), skipped."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen.to_dict(),
            "skipped": [s.to_dict() for s in self.skipped],
            "non_image_objects": self.non_image_objects,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeriesSelection:
        return cls(
            SeriesInfo.from_dict(data["chosen"]),
            tuple(SkippedSeries.from_dict(s) for s in data.get("skipped", ())),
            int(data.get("non_image_objects", 0)),
        )


class SpacingRun(TypedDict):
    """Consecutive slices that share one extent along the slice normal."""

    first: str
    last: str
    count: int
    extent_mm: float


EXTENT_DECIMALS = 2
"""Extents are compared (and reported) to 0.01 mm: positions are written with a few decimals."""


def spacing_profile(slice_ids: Sequence[str], extents_mm: Sequence[float] | None) -> list[SpacingRun] | None:
    """Runs of consecutive slices with the same extent, or None when every slice has the same one
    (or extents are unknown): a two-stage head protocol reads as two runs."""
    if extents_mm is None or not len(extents_mm):
        return None
    runs: list[SpacingRun] = []
    for slice_id, extent in zip(slice_ids, extents_mm, strict=True):
        value = round(float(extent), EXTENT_DECIMALS)
        if runs and runs[-1]["extent_mm"] == value:
            runs[-1]["last"] = slice_id
            runs[-1]["count"] += 1
        else:
            runs.append({"first": slice_id, "last": slice_id, "count": 1, "extent_mm": value})
    return runs if len({run["extent_mm"] for run in runs}) > 1 else None


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
    """Distance between slice centres in mm (DICOM: the median position step), for display; the
    volume uses :attr:`slice_extents_mm` where known."""
    source: str = ""
    dicom: DicomSeriesRef | None = field(default=None, repr=False)
    non_image_objects: int = 0
    """DICOM objects in the input without pixel data (DICOMDIR, dose reports...), skipped."""
    slice_extents_mm: tuple[float, ...] | None = None
    """Each slice's own extent along the slice normal (DICOM with positions), so that a protocol
    whose spacing changes part-way (4 mm then 7 mm) is measured slice by slice; None: unknown."""
    series: SeriesSelection | None = field(default=None, repr=False)
    """DICOM: the series read and the ones skipped."""

    def __post_init__(self) -> None:
        if self.slices.ndim != 3:
            raise ValueError(f"slices must be (N, H, W), got shape {self.slices.shape}")
        if len(self.slice_ids) != self.slices.shape[0]:
            raise ValueError("one slice id per slice is required")
        if self.slice_extents_mm is not None and len(self.slice_extents_mm) != len(self.slice_ids):
            raise ValueError("one slice extent per slice is required")

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
        summary: dict[str, object] = {
            "format": self.format,
            "slices": self.num_slices,
            "height": height,
            "width": width,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "slice_thickness_mm": self.slice_thickness_mm,
            "hu": self.hu,
        }
        if self.non_image_objects:
            summary["non_image_objects"] = self.non_image_objects
        profile = spacing_profile(self.slice_ids, self.slice_extents_mm)
        if profile is not None:
            summary["spacing_profile"] = profile
        if self.series is not None:
            summary["series"] = {
                "chosen": self.series.chosen.to_dict(),
                "skipped": [s.to_dict() for s in self.series.skipped],
            }
        return summary
