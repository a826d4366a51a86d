"""``report.json``: the contract with the app, the viewer and hospital integrations.

Built from the masks' areas and the models' answers (:func:`report_from_areas`), the same document
from ``ichseg segment`` and the pipeline's assemble stage; the answer never contradicts itself
(notes say why a slice has no outline, why a volume is 0 mL or missing, why the scan's finding and
its slices seem to disagree).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np

from ichseg.findings import Finding
from ichseg.input_warnings import WarningEntry, input_warnings
from ichseg.model_metadata import ModelMetadata
from ichseg.scan import SeriesSelection, SpacingRun, spacing_profile
from ichseg.scan_context import ScanContext, ScanOutput
from ichseg.segmentation import Segmentation

HEMORRHAGE_DETECTED = Finding.HEMORRHAGE_DETECTED
NORMAL = Finding.NORMAL


class SliceReport(TypedDict, total=False):
    """One slice in ``report.json`` (``subtypes`` only for models with a subtype head)."""

    id: str
    probability: float
    hemorrhage: bool
    area_px: int
    area_mm2: float | None
    extent_mm: float | None
    """The slice's extent along the slice normal (what its area counts for in the volume)."""
    subtypes: dict[str, float]
    outline_note: str
    """Only on a slice called hemorrhage with nothing outlined: why it has no outline."""
    context_probability: float
    """The scan head's probability for the slice, read with the whole scan (with a scan head)."""


class Thresholds(TypedDict):
    scan: float
    slice: float
    pixel: float


class ModelRef(TypedDict):
    name: str
    version: str


class SeriesEntry(TypedDict):
    """A DICOM series by number and UID (never its description: free text with patient details)."""

    series_number: int | None
    series_instance_uid: str
    images: int
    kernel: str | None
    thickness_mm: float | None


class SkippedSeriesEntry(SeriesEntry):
    reason: str
    """A :class:`ichseg.scan.SkipReason` value."""
    detail: str


class SeriesReport(TypedDict):
    """Which series of a DICOM upload was segmented, the ones skipped and why."""

    chosen: SeriesEntry
    skipped: list[SkippedSeriesEntry]
    non_image_objects: int


class Report(TypedDict):
    """``report.json``: the contract with the app, the viewer and hospital integrations."""

    finding: Finding
    hemorrhage_probability: float
    """The scan's probability: the scan head's where its card adopted the finding, else the most confident slice's."""
    finding_note: str | None
    """Where the scan's finding and its slices' seem to disagree, why; None otherwise."""
    slices_with_hemorrhage: list[str]
    subtypes: dict[str, float] | None
    volume_ml: float | None
    volume_note: str | None
    """Why there is no volume, or why it is 0 mL beside a detected hemorrhage; None otherwise."""
    volume_ml_by_subtype: dict[str, float] | None
    volume_ml_by_subtype_note: str | None
    pixel_spacing_mm: list[float] | None
    slice_thickness_mm: float | None
    """The median distance between slice centres (for display; the volume sums per-slice extents)."""
    spacing_profile: list[SpacingRun] | None
    """Runs of slices sharing one extent, when the spacing varies (a two-stage head protocol)."""
    series: SeriesReport | None
    """DICOM inputs: the series segmented and the ones skipped."""
    thresholds: Thresholds
    model: ModelRef
    scan_model: ModelRef | None
    """The scan head that gave the finding or the scan's subtypes (its card says which); None: the
    most confident slice gave both."""
    warnings: list[WarningEntry]
    """Input the model reads poorly (:mod:`ichseg.input_warnings`): the answer is given, with less trust."""
    slices: list[SliceReport]
    disclaimer: str


NO_OUTLINE_NOTE = (
    "The detection head calls this slice hemorrhage, but no pixel reached the outline threshold "
    "({pixel:g}): it is counted without an outline and adds nothing to the volume."
)
VOLUME_WITHOUT_OUTLINE_NOTE = (
    "0 mL: the hemorrhage was detected on {count} slice(s) by the detection head, but no pixel reached the "
    "outline threshold, so there is nothing to measure. Read the flagged slices."
)
VOLUME_WITHOUT_SPACING_NOTE = (
    "No volume: the input does not say how large its pixels and slices are (a video or images); "
    "send DICOM or NIfTI for a volume."
)
DETECTED_WITHOUT_SLICE_NOTE = (
    "The scan head reads the scan as a whole as hemorrhage ({probability:.2f} >= {threshold:g}), though no "
    "single slice reached the slice threshold ({slice:g}). The slices it weighs most: {slices}. Read them."
)
NORMAL_WITH_SLICES_NOTE = (
    "The scan head reads the scan as a whole as normal ({probability:.2f} < {threshold:g}), though the slice "
    "head flags {count} slice(s) on its own: {slices}. Read them."
)
BELOW_SCAN_THRESHOLD_NOTE = (
    "No slice reaches the scan threshold ({threshold:g}; the most confident reaches {probability:.2f}), so the "
    "scan reads as normal, though {count} slice(s) reach the slice threshold ({slice:g}) and are outlined: "
    "{slices}. Read them."
)
VOLUME_WITHOUT_SLICES_NOTE = (
    "0 mL: the scan head finds hemorrhage in the scan as a whole, but no slice reached the slice threshold, "
    "so nothing is outlined to measure. Read the slices the finding note names."
)
MOST_WEIGHED_SLICES = 3
SUBTYPE_VOLUME_NOTE = (
    "The mask head outlines hemorrhage of any subtype; it cannot separate the subtypes' pixels, so "
    "no volume per subtype is given. Subtype probabilities come from the classification head."
)


def build_report(
    slice_ids: tuple[str, ...] | list[str],
    segmentation: Segmentation,
    model: ModelMetadata,
    pixel_spacing_mm: tuple[float, float] | None,
    slice_thickness_mm: float | None,
    slice_extents_mm: Sequence[float] | None = None,
    series: SeriesSelection | None = None,
    context: ScanContext | None = None,
) -> Report:
    """The ``report.json`` document: per-slice probability and area, scan probability, volume."""
    areas = segmentation.masks.reshape(len(slice_ids), -1).sum(axis=1)
    return report_from_areas(
        slice_ids,
        segmentation.slice_probabilities,
        segmentation.subtype_probabilities,
        areas,
        model,
        pixel_spacing_mm,
        slice_thickness_mm,
        slice_extents_mm,
        series,
        context,
    )


def report_from_areas(
    slice_ids: Sequence[str],
    slice_probabilities: np.ndarray,
    subtype_probabilities: np.ndarray | None,
    areas_px: np.ndarray | Sequence[int],
    model: ModelMetadata,
    pixel_spacing_mm: tuple[float, float] | None,
    slice_thickness_mm: float | None,
    slice_extents_mm: Sequence[float] | None = None,
    series: SeriesSelection | None = None,
    context: ScanContext | None = None,
) -> Report:
    """:func:`build_report` from each slice's mask area instead of the masks (all a report reads
    of them), for callers that hold the areas of a scan assembled batch by batch.

    The volume is the sum over slices of area x pixel area x the slice's own extent along the
    normal (``slice_extents_mm``), so a protocol that changes spacing part-way is measured right;
    without extents every slice counts ``slice_thickness_mm``.

    With a scan head's ``context`` (:mod:`ichseg.scan_context`), the finding, the scan's probability
    and its subtypes are the head's; without one, the most confident slice's.
    """
    areas = np.asarray(areas_px, dtype=np.int64)
    pixel_mm2 = pixel_spacing_mm[0] * pixel_spacing_mm[1] if pixel_spacing_mm else None
    extents = list(slice_extents_mm) if slice_extents_mm is not None else None
    if extents is not None and len(extents) != len(slice_ids):
        raise ValueError(f"{len(extents)} slice extents for {len(slice_ids)} slices")
    slices: list[SliceReport] = [
        {
            "id": slice_id,
            "probability": round(float(p), 4),
            "hemorrhage": bool(p >= model.slice_threshold),
            "area_px": int(area),
            "area_mm2": round(float(area) * pixel_mm2, 2) if pixel_mm2 is not None else None,
            "extent_mm": round(float(extents[i]), 4) if extents is not None else slice_thickness_mm,
        }
        for i, (slice_id, p, area) in enumerate(zip(slice_ids, slice_probabilities, areas, strict=True))
    ]
    for entry in slices:
        if entry["hemorrhage"] and entry["area_px"] == 0:
            entry["outline_note"] = NO_OUTLINE_NOTE.format(pixel=model.pixel_threshold)
    subtypes = subtype_probabilities
    if subtypes is not None:
        for entry, row in zip(slices, subtypes, strict=True):
            entry["subtypes"] = {name: round(float(q), 4) for name, q in zip(model.subtypes, row, strict=True)}
    if context is not None:
        for entry, q in zip(slices, context.slice_probabilities, strict=True):
            entry["context_probability"] = round(float(q), 4)
    if context is not None and context.gives(ScanOutput.FINDING):
        scan_probability, scan_threshold = context.scan_probability, context.metadata.scan_threshold
        detected = context.detected
    else:
        scan_probability = float(np.max(slice_probabilities)) if len(slice_ids) else 0.0
        scan_threshold = model.finding_threshold
        detected = scan_probability >= scan_threshold
    volume = None
    if pixel_spacing_mm and extents is not None:
        pixel_area = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])
        volume = round(float(np.dot(areas.astype(np.float64), np.asarray(extents, np.float64))) * pixel_area / 1000, 3)
    elif pixel_spacing_mm and slice_thickness_mm:
        # Voxel count x voxel volume / 1000 (training.metrics.volume_ml, which evaluation uses), from the areas.
        voxel_mm3 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * float(slice_thickness_mm)
        volume = round(float(areas.sum()) * voxel_mm3 / 1000.0, 3)
    flagged = [s["id"] for s in slices if s["hemorrhage"]]
    if context is not None and context.gives(ScanOutput.SUBTYPES) and model.subtypes:
        scan_subtypes = {
            name: round(float(q), 4) for name, q in zip(model.subtypes, context.scan_subtypes, strict=True)
        }
    elif subtypes is not None and len(slice_ids):
        # Otherwise a scan's subtype probability is its most confident slice's.
        scan_subtypes = {name: round(float(subtypes[:, i].max()), 4) for i, name in enumerate(model.subtypes)}
    else:
        scan_subtypes = None
    return {
        "finding": HEMORRHAGE_DETECTED if detected else NORMAL,
        "hemorrhage_probability": round(scan_probability, 4),
        "finding_note": _finding_note(
            context, detected, scan_probability, scan_threshold, slice_ids, flagged, model.slice_threshold
        ),
        "slices_with_hemorrhage": flagged,
        "subtypes": scan_subtypes,
        "volume_ml": volume,
        "volume_note": _volume_note(detected, volume, len(flagged)),
        "volume_ml_by_subtype": None,
        "volume_ml_by_subtype_note": SUBTYPE_VOLUME_NOTE if subtypes is not None else None,
        "pixel_spacing_mm": list(pixel_spacing_mm) if pixel_spacing_mm else None,
        "slice_thickness_mm": slice_thickness_mm,
        "spacing_profile": spacing_profile(slice_ids, extents),
        "series": series_report(series) if series is not None else None,
        "thresholds": {"scan": scan_threshold, "slice": model.slice_threshold, "pixel": model.pixel_threshold},
        "model": {"name": model.name, "version": model.version},
        "scan_model": (
            {"name": context.metadata.name, "version": context.metadata.version}
            if context is not None and context.metadata.adopted
            else None
        ),
        "warnings": input_warnings(len(slice_ids), slice_thickness_mm, extents),
        "slices": slices,
        "disclaimer": "Research software. Not for clinical use.",
    }


def _volume_note(detected: bool, volume_ml: float | None, flagged_slices: int) -> str | None:
    """Says why a volume is missing, or why a detected hemorrhage measures 0 mL: never a bare 0.0."""
    if volume_ml is None:
        return VOLUME_WITHOUT_SPACING_NOTE
    if detected and volume_ml == 0:
        if not flagged_slices:
            return VOLUME_WITHOUT_SLICES_NOTE
        return VOLUME_WITHOUT_OUTLINE_NOTE.format(count=flagged_slices)
    return None


def _finding_note(
    context: ScanContext | None,
    detected: bool,
    scan_probability: float,
    scan_threshold: float,
    slice_ids: Sequence[str],
    flagged: list[str],
    slice_threshold: float,
) -> str | None:
    """Where the scan's finding and its slices' flags disagree, says so and names the slices to read.
    The finding is the scan head's where it gives it, else the most confident slice's: that one can
    only disagree one way, normal beside slices flagged below the scan threshold."""
    by_head = context is not None and context.gives(ScanOutput.FINDING)
    if detected and not flagged and context is not None and by_head:
        order = np.argsort(-context.slice_probabilities, kind="stable")[:MOST_WEIGHED_SLICES]
        named = ", ".join(slice_ids[i] for i in sorted(order))
        return DETECTED_WITHOUT_SLICE_NOTE.format(
            probability=scan_probability, threshold=scan_threshold, slice=slice_threshold, slices=named
        )
    if detected or not flagged:
        return None
    template = NORMAL_WITH_SLICES_NOTE if by_head else BELOW_SCAN_THRESHOLD_NOTE
    return template.format(
        probability=scan_probability,
        threshold=scan_threshold,
        count=len(flagged),
        slice=slice_threshold,
        slices=", ".join(flagged),
    )


def series_report(selection: SeriesSelection) -> SeriesReport:
    """The report's ``series`` section."""

    chosen = selection.chosen
    skipped: list[SkippedSeriesEntry] = [
        {
            "series_number": s.series.series_number,
            "series_instance_uid": s.series.series_instance_uid,
            "images": s.series.images,
            "kernel": s.series.kernel,
            "thickness_mm": s.series.thickness_mm,
            "reason": s.reason.value,
            "detail": s.detail,
        }
        for s in selection.skipped
    ]
    return {
        "chosen": {
            "series_number": chosen.series_number,
            "series_instance_uid": chosen.series_instance_uid,
            "images": chosen.images,
            "kernel": chosen.kernel,
            "thickness_mm": chosen.thickness_mm,
        },
        "skipped": skipped,
        "non_image_objects": selection.non_image_objects,
    }


class Headline(TypedDict):
    """The report's headline: what the job record keeps for the status API and the CLI prints."""

    finding: Finding
    hemorrhage_probability: float
    slices_with_hemorrhage: int
    subtypes: dict[str, float] | None
    volume_ml: float | None
    volume_note: str | None
    warnings: list[WarningEntry]
    model: ModelRef


def headline(report: Report) -> Headline:
    """The few fields of a report a status reply or a terminal line shows."""
    return {
        "finding": report["finding"],
        "hemorrhage_probability": report["hemorrhage_probability"],
        "slices_with_hemorrhage": len(report["slices_with_hemorrhage"]),
        "subtypes": report["subtypes"],
        "volume_ml": report["volume_ml"],
        "volume_note": report["volume_note"],
        "warnings": report["warnings"],
        "model": report["model"],
    }
