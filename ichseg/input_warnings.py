"""Input the model reads poorly: accepted, answered, and flagged wherever the answer is shown.

The model was trained on whole head scans of about 5 mm slices (CT-ICH), reading each slice with
its neighbours above and below. A scan far from that still gets an answer, because a radiologist
may have nothing better at hand, but the answer carries a warning: in ``report.json``
(``warnings``), the API's result, the viewer and the DICOM SR. Each warning has a stable code for
programs and a sentence for people.

Pure Python (no numpy): the API function reads the codes for its schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import TypedDict

from ichseg.endpoint_protocol import CONTEXT_SLICES


class InputWarning(StrEnum):
    """Why an answer deserves less trust than usual: the closed set of warning codes."""

    SINGLE_SLICE = "single_slice"
    FEW_SLICES = "few_slices"
    THIN_SLICES = "thin_slices"
    THICK_SLICES = "thick_slices"
    PARTIAL_COVERAGE = "partial_coverage"


class WarningEntry(TypedDict):
    """One warning as ``report.json`` and the API carry it."""

    code: InputWarning
    message: str


TRAINING_SLICE_MM = 5.0
"""The slice spacing of the training scans (CT-ICH)."""
THIN_BELOW_MM = 2.5
"""Half the training spacing: a slice's neighbours are then much closer than the model learnt."""
THICK_ABOVE_MM = 10.0
"""Twice the training spacing: small bleeds fall between slices and neighbours are far apart."""
BRAIN_COVERAGE_MM = 80.0
"""Less than this cannot hold an adult brain (about 120-150 mm from the foramen magnum to the vertex)."""
FEW_SLICES_WITHOUT_GEOMETRY = 10
"""Without geometry (a video, images): a head scan at the training spacing has about 30 slices."""
CONTEXT_WIDTH = 2 * CONTEXT_SLICES + 1
"""The slices the model reads at once: a slice and its neighbours."""


def input_warnings(
    num_slices: int, slice_thickness_mm: float | None, slice_extents_mm: Sequence[float] | None = None
) -> list[WarningEntry]:
    """The warnings for a scan of ``num_slices`` slices with this spacing (``slice_thickness_mm``:
    the median distance between slice centres) and extents (each slice's share of the volume),
    either of them None when the input does not say (videos, images)."""
    found: list[WarningEntry] = []

    def warn(code: InputWarning, message: str) -> None:
        found.append({"code": code, "message": message})

    if num_slices == 1:
        warn(
            InputWarning.SINGLE_SLICE,
            "One slice: the model reads each slice with its neighbours and sees this one repeated instead; "
            "a finding from one slice is weak, and nothing outside it was looked at.",
        )
    elif num_slices < CONTEXT_WIDTH:
        warn(
            InputWarning.FEW_SLICES,
            f"{num_slices} slices: the model reads {CONTEXT_WIDTH} at a time, so no slice here has "
            "both of its neighbours.",
        )
    if slice_thickness_mm is not None and num_slices > 1:
        if slice_thickness_mm < THIN_BELOW_MM:
            warn(
                InputWarning.THIN_SLICES,
                f"Slices {slice_thickness_mm:.3g} mm apart: the model was trained on {TRAINING_SLICE_MM:g} mm "
                "slices and reads thin ones less reliably; send a 5 mm reconstruction if there is one.",
            )
        elif slice_thickness_mm > THICK_ABOVE_MM:
            warn(
                InputWarning.THICK_SLICES,
                f"Slices {slice_thickness_mm:.3g} mm apart: the model was trained on {TRAINING_SLICE_MM:g} mm "
                "slices; small bleeds can fall between thick ones.",
            )
    coverage = _coverage_mm(num_slices, slice_thickness_mm, slice_extents_mm)
    if coverage is not None and num_slices > 1 and coverage < BRAIN_COVERAGE_MM:
        warn(
            InputWarning.PARTIAL_COVERAGE,
            f"The slices cover {coverage:.0f} mm, less than a brain ({BRAIN_COVERAGE_MM:.0f} mm or more): "
            "bleeding outside the covered range cannot be found.",
        )
    elif coverage is None and 1 < num_slices < FEW_SLICES_WITHOUT_GEOMETRY:
        warn(
            InputWarning.PARTIAL_COVERAGE,
            f"{num_slices} slices of unknown spacing: a whole head scan has about 30 at 5 mm, so this one "
            "may not cover the brain; bleeding outside it cannot be found.",
        )
    return found


def _coverage_mm(
    num_slices: int, slice_thickness_mm: float | None, slice_extents_mm: Sequence[float] | None
) -> float | None:
    """How far along the head the slices reach: their extents added up, or count x spacing."""
    if slice_extents_mm is not None and len(slice_extents_mm):
        return float(sum(slice_extents_mm))
    if slice_thickness_mm is not None:
        return num_slices * float(slice_thickness_mm)
    return None
