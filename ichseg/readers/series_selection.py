"""Which series of a DICOM study to segment, by explicit rules (after MONAI Deploy's series selector).

A study exported from a scanner or a PACS holds several series: the thick (5 mm) and thin (1 mm)
brain reconstructions, the same slices in a bone or lung kernel, scouts/localizers, dose pages
stored as secondary captures. The model was trained on ~5 mm axial soft-tissue CT (CT-ICH), so
:func:`select_series` picks, from the series that pass every rule of :class:`SeriesRules`:

1. a known soft-tissue/brain kernel over an unknown one (sharp kernels are excluded outright);
2. the thinnest series not thinner than ``min_thickness_mm`` (2.5 mm by default: thin 0.6-1.25 mm
   reconstructions are noisier than anything the model saw), else the thickest of the thinner ones;
3. then the one with more slices, then the lower SeriesNumber (so the pick is deterministic).

Every other series is reported with the rule that excluded it (:class:`ichseg.scan.SkipReason`).
An upload of a single series is what its sender chose: it is read as it is, without these rules.

The module also holds the slice geometry both the selection and the reader use: each slice's own
extent along the slice normal (:func:`slice_extents`), exact for protocols whose spacing changes
part-way through the head.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ichseg.errors import InconsistentSeriesError, NotCTError
from ichseg.readers.dicom_values import dicom_float, dicom_vector
from ichseg.scan import SeriesInfo, SeriesSelection, SkippedSeries, SkipReason

CT_IMAGE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    }
)
"""SOP classes of CT images; a dose page stored as a Secondary Capture carries Modality CT too."""

SHARP_KERNELS = (
    r"BONE|LUNG|SHARP|EDGE|DETAIL|CHEST|HIGH.?RES"  # GE (BONE, BONEPLUS, LUNG, EDGE, DETAIL), words
    r"|^(?:[HBJIQ]r?)[6-9]\d"  # Siemens H60s/H70h, B60f/B70f, Br64, Hr60, J70, Qr59
    r"|^(?:YC|YD|YE|D|E|EB|L|LA)$"  # Philips bone and lung kernels
    r"|^FC(?:[3-9]\d)"  # Canon/Toshiba bone and lung (FC30, FC52, FC81...)
)
"""Bone, lung and edge-enhancing kernels (searched in each ConvolutionKernel value, any case)."""

SOFT_KERNELS = (
    r"STANDARD|SOFT|BRAIN|HEAD|NEURO|SMOOTH"  # GE STANDARD/SOFT, words sites and vendors use
    r"|^(?:[HBJQ]r?)[1-4]\d"  # Siemens H30s/H40s/H45s, J40s, Hr36/Hr40, Br36, Qr40
    r"|^FC[0-2]\d"  # Canon/Toshiba head and body soft tissue (FC21, FC26...)
    r"|^(?:UA|UB|UC|A|B|C)$"  # Philips brain (UB) and soft-tissue kernels
)
"""Soft-tissue/brain kernels, preferred over kernels neither pattern knows."""


@dataclass(frozen=True)
class SeriesRules:
    """The rules a series must pass to be segmented; every field can be set from the environment as
    ``ICHSEG_SERIES_<FIELD>`` (``ICHSEG_SERIES_MIN_THICKNESS_MM=1`` picks thin series)."""

    modality: str = "CT"
    """The only Modality segmented."""
    max_tilt_deg: float = 30.0
    """Axial: the slice normal within this angle of the patient's z axis (gantry tilt included)."""
    sharp_kernels: str = SHARP_KERNELS
    """Regular expression of excluded kernels (bone, lung, edge-enhancing)."""
    soft_kernels: str = SOFT_KERNELS
    """Regular expression of preferred kernels (soft tissue, brain)."""
    min_slices: int = 10
    """Fewer slices than this is not a head (a scout, a partial series)."""
    min_coverage_mm: float = 60.0
    """The slices' summed extents along the normal must cover at least this much of the head."""
    max_gap_factor: float = 1.5
    """A step between neighbours larger than this many times the expected step (the larger of the
    median step and the two slices' mean thickness) is a gap: slices are missing."""
    min_thickness_mm: float = 2.5
    """The thinnest series from this thickness is chosen (the model learnt ~5 mm slices)."""

    def __post_init__(self) -> None:
        for name in ("sharp_kernels", "soft_kernels"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ValueError(f"ICHSEG_SERIES_{name.upper()} is not a regular expression ({exc})") from exc

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SeriesRules:
        """Defaults, overridden by ``ICHSEG_SERIES_<FIELD>`` variables where set."""
        env = os.environ if environ is None else environ
        overrides: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"ICHSEG_SERIES_{field.name.upper()}")
            if raw is None:
                continue
            convert = {"float": float, "int": int}.get(str(field.type), str)
            try:
                overrides[field.name] = convert(raw)
            except ValueError as exc:
                raise ValueError(f"ICHSEG_SERIES_{field.name.upper()}={raw!r} is not a {field.type}") from exc
        return dataclasses.replace(cls(), **overrides)

    def kernel_class(self, kernel: str | None) -> str:
        """``sharp``, ``soft`` or ``unknown`` (also when the tag is missing)."""
        values = [v.strip() for v in (kernel or "").split("\\") if v.strip()]
        if any(re.search(self.sharp_kernels, v, re.IGNORECASE) for v in values):
            return "sharp"
        if any(re.search(self.soft_kernels, v, re.IGNORECASE) for v in values):
            return "soft"
        return "unknown"


class NoSuitableSeriesError(InconsistentSeriesError):
    """Several series, none of which passes the rules; ``skipped`` says why for each."""

    def __init__(self, message: str, skipped: tuple[SkippedSeries, ...]) -> None:
        super().__init__(message)
        self.skipped = skipped


def slice_extents(along_mm: Sequence[float], thickness_mm: Sequence[float | None]) -> tuple[float, ...]:
    """Each slice's extent along the normal, from positions in ascending order and thicknesses.

    The boundary between neighbours i and i+1 is ``((z_i + t_i/2) + (z_i+1 - t_i+1/2)) / 2``: exact
    for contiguous slabs of any thickness (4 mm slabs then 7 mm slabs), the midpoint for equal slabs
    that overlap or leave gaps, the plain midpoint where thickness is unknown (t = 0). It is kept
    between the two centres, so odd thicknesses cannot make an extent negative. The first and last
    slices reach t/2 outward (half the adjacent step without a thickness).
    """
    z = [float(v) for v in along_mm]
    t = [float(v) if v is not None and v > 0 else 0.0 for v in thickness_mm]
    if len(z) != len(t):
        raise ValueError("one thickness per position is required")
    if len(z) == 1:
        return (round(t[0], 4),) if t[0] else ()
    bounds = [min(max(((z[i] + t[i] / 2) + (z[i + 1] - t[i + 1] / 2)) / 2, z[i]), z[i + 1]) for i in range(len(z) - 1)]
    low = z[0] - (t[0] / 2 if t[0] else (z[1] - z[0]) / 2)
    high = z[-1] + (t[-1] / 2 if t[-1] else (z[-1] - z[-2]) / 2)
    edges = [low, *bounds, high]
    return tuple(round(b - a, 4) for a, b in itertools.pairwise(edges))


def enhanced_frame_geometry(
    dataset: Dataset,
) -> tuple[list[np.ndarray | None], np.ndarray | None, list[float | None]]:
    """Enhanced CT: each frame's position, the (shared or first frame's) orientation and each
    frame's thickness, from the shared and per-frame functional groups."""
    shared = _first(getattr(dataset, "SharedFunctionalGroupsSequence", None))
    per_frame = list(getattr(dataset, "PerFrameFunctionalGroupsSequence", []) or [])
    positions: list[np.ndarray | None] = []
    thicknesses: list[float | None] = []
    orientation = dicom_vector(_first(getattr(shared, "PlaneOrientationSequence", None)), "ImageOrientationPatient", 6)
    shared_measures = _first(getattr(shared, "PixelMeasuresSequence", None))
    shared_thickness = dicom_float(getattr(shared_measures, "SliceThickness", None))
    for group in per_frame:
        positions.append(dicom_vector(_first(getattr(group, "PlanePositionSequence", None)), "ImagePositionPatient", 3))
        measures = _first(getattr(group, "PixelMeasuresSequence", None))
        own = dicom_float(getattr(measures, "SliceThickness", None)) if measures is not None else None
        thicknesses.append(own if own is not None else shared_thickness)
        if orientation is None:
            orientation = dicom_vector(
                _first(getattr(group, "PlaneOrientationSequence", None)), "ImageOrientationPatient", 6
            )
    return positions, orientation, thicknesses


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """The unit normal of a slice from its six direction cosines (row x column)."""
    normal = np.cross(orientation[:3], orientation[3:])
    length = float(np.linalg.norm(normal))
    return normal / length if length > 0 else normal


@dataclass(frozen=True)
class _Evaluated:
    info: SeriesInfo
    kernel_class: str
    failure: tuple[SkipReason, str] | None


def select_series(
    groups: Sequence[Sequence[Dataset]],
    rules: SeriesRules,
    source: str,
    non_image_objects: int = 0,
) -> tuple[int, SeriesSelection]:
    """Pick one series of ``groups`` (each one series' image instances); return its index and the
    selection. :class:`NotCTError` when no series is CT, :class:`NoSuitableSeriesError` when none
    passes the rules: both name each series by SeriesNumber and say why."""
    evaluated = [_evaluate(group, rules) for group in groups]
    # Reasons list series by number, whatever order the files arrived in.
    order = sorted(range(len(groups)), key=lambda i: _by_number(evaluated[i].info))
    evaluated = [evaluated[i] for i in order]
    candidates = [i for i, e in enumerate(evaluated) if e.failure is None]
    if not candidates:
        skipped = tuple(SkippedSeries(e.info, *e.failure) for e in evaluated if e.failure is not None)
        reasons = "; ".join(f"{s.series.label} ({s.series.images} images): {s.detail}" for s in skipped)
        if all(s.reason == SkipReason.NOT_CT for s in skipped):
            raise NotCTError(f"{source}: no CT series in the upload ({reasons}); ichseg segments head CT only")
        raise NoSuitableSeriesError(
            f"{source}: {len(groups)} series in one upload, none fit to segment: {reasons}", skipped
        )
    chosen = min(candidates, key=lambda i: _rank(evaluated[i], rules))
    best = evaluated[chosen]
    skipped_list = []
    for index, entry in enumerate(evaluated):
        if index == chosen:
            continue
        reason, detail = entry.failure or _lost(entry, best, rules)
        skipped_list.append(SkippedSeries(entry.info, reason, detail))
    return order[chosen], SeriesSelection(best.info, tuple(skipped_list), non_image_objects)


def check_sole_series(group: Sequence[Dataset], rules: SeriesRules, source: str) -> None:
    """Refuse an upload's only series when it is no CT volume at all: a summary or dose page, a
    scout, a sagittal or coronal reformat (a segmentation of those would be garbage that looks like
    a result). The preferences (kernel, coverage, thickness) stay the sender's choice: the series
    was sent on purpose, maybe for a reason the rules cannot know."""
    geometry = _geometry(group)
    info = _describe(group, geometry)
    classes = {str(getattr(d, "SOPClassUID", "")) for d in group}
    problem = None
    if rules.modality == "CT" and not classes <= CT_IMAGE_CLASSES:
        names = ", ".join(sorted(UID(c).name or c for c in classes - CT_IMAGE_CLASSES))
        problem = f"it holds {names}, not CT images (a summary or dose page)"
    elif any("LOCALIZER" in _values(getattr(d, "ImageType", None)) for d in group):
        problem = "its ImageType is LOCALIZER (a scout)"
    elif geometry.normal is not None:
        tilt = math.degrees(math.acos(min(1.0, abs(float(geometry.normal[2])))))
        if tilt > rules.max_tilt_deg:
            problem = f"its slices are {tilt:.0f} degrees from axial (a reformat; at most {rules.max_tilt_deg:g})"
    if problem:
        raise NoSuitableSeriesError(
            f"{source}: {info.label} ({info.images} images) cannot be segmented: {problem}; "
            "send the axial head CT series",
            (),
        )


def _by_number(info: SeriesInfo) -> tuple[bool, int, str]:
    return info.series_number is None, info.series_number or 0, info.series_instance_uid


def describe_series(group: Sequence[Dataset]) -> SeriesInfo:
    """Number, UID, slice count, kernel and thickness of one series' instances."""
    return _describe(group, _geometry(group))


def _describe(group: Sequence[Dataset], geometry: _Geometry) -> SeriesInfo:
    first = group[0]
    number = getattr(first, "SeriesNumber", None)
    frames = sum(int(getattr(d, "NumberOfFrames", 1) or 1) for d in group)
    kernel_value = getattr(first, "ConvolutionKernel", None)
    if kernel_value is None:  # Enhanced CT keeps it in the CT Reconstruction functional group
        shared = _first(getattr(first, "SharedFunctionalGroupsSequence", None))
        kernel_value = getattr(_first(getattr(shared, "CTReconstructionSequence", None)), "ConvolutionKernel", None)
    kernel = _joined(kernel_value)
    thicknesses = [t for t in geometry.thicknesses if t is not None]
    thickness: float | None = round(float(np.median(thicknesses)), 4) if thicknesses else None
    if thickness is None and geometry.along is not None and len(geometry.along) > 1:
        thickness = round(float(np.median(np.diff(geometry.along))), 4)
    return SeriesInfo(
        series_number=_int(number),
        series_instance_uid=str(getattr(first, "SeriesInstanceUID", "")),
        images=frames,
        kernel=kernel,
        thickness_mm=thickness,
    )


@dataclass(frozen=True)
class _Geometry:
    along: list[float] | None
    """Positions along the normal, ascending (None: missing or inconsistent)."""
    thicknesses: list[float | None]
    normal: np.ndarray | None
    problem: str | None = None


def _geometry(group: Sequence[Dataset]) -> _Geometry:
    multiframe = [d for d in group if int(getattr(d, "NumberOfFrames", 1) or 1) > 1]
    if multiframe:
        if len(group) > 1:
            return _Geometry(None, [], None, "several instances, one of them multi-frame")
        positions, orientation, thicknesses = enhanced_frame_geometry(group[0])
        orientations: list[np.ndarray | None] = [orientation] * len(positions)
    else:
        positions = [dicom_vector(d, "ImagePositionPatient", 3) for d in group]
        orientations = [dicom_vector(d, "ImageOrientationPatient", 6) for d in group]
        thicknesses = [dicom_float(getattr(d, "SliceThickness", None)) for d in group]
        sizes = {(int(getattr(d, "Rows", 0) or 0), int(getattr(d, "Columns", 0) or 0)) for d in group}
        if len(sizes) > 1:
            return _Geometry(None, thicknesses, None, "images differ in size")
    if not positions or any(p is None for p in positions) or any(o is None for o in orientations):
        return _Geometry(None, thicknesses, None)
    reference = orientations[0]
    assert reference is not None
    if any(np.max(np.abs(o - reference)) > 1e-3 for o in orientations if o is not None):
        return _Geometry(None, thicknesses, None, "images have different orientations")
    normal = slice_normal(reference)
    along = [float(np.dot(p, normal)) for p in positions if p is not None]
    order = np.argsort(along, kind="stable")
    along_sorted = [along[i] for i in order]
    thick_sorted = [thicknesses[i] for i in order]
    if len(along_sorted) > 1 and float(np.min(np.diff(along_sorted))) < 1e-4:
        return _Geometry(None, thick_sorted, normal, "two images share one slice position")
    return _Geometry(along_sorted, thick_sorted, normal)


def _evaluate(group: Sequence[Dataset], rules: SeriesRules) -> _Evaluated:
    geometry = _geometry(group)
    info = _describe(group, geometry)
    kernel_class = rules.kernel_class(info.kernel)
    return _Evaluated(info, kernel_class, _failure(group, geometry, info, kernel_class, rules))


def _failure(
    group: Sequence[Dataset], geometry: _Geometry, info: SeriesInfo, kernel_class: str, rules: SeriesRules
) -> tuple[SkipReason, str] | None:
    """The first rule the series fails, in the order a reader would rule it out."""
    modalities = {str(getattr(d, "Modality", "") or "") for d in group}
    if modalities != {rules.modality}:
        return (
            SkipReason.NOT_CT,
            f"modality {'/'.join(sorted(m or 'missing' for m in modalities))}, not {rules.modality}",
        )
    classes = {str(getattr(d, "SOPClassUID", "")) for d in group}
    if rules.modality == "CT" and not classes <= CT_IMAGE_CLASSES:
        names = ", ".join(sorted(UID(c).name or c for c in classes - CT_IMAGE_CLASSES))
        return SkipReason.NOT_CT, f"{names}, not a CT image (a summary or dose page)"
    if any("LOCALIZER" in _values(getattr(d, "ImageType", None)) for d in group):
        return SkipReason.LOCALIZER, "ImageType LOCALIZER (a scout)"
    if info.images == 1:
        return SkipReason.LOCALIZER, "a single image (a scout or a summary page)"
    if geometry.problem is not None:
        return SkipReason.INCONSISTENT, geometry.problem
    if geometry.along is None or geometry.normal is None:
        return SkipReason.NO_GEOMETRY, "no slice positions or orientation: its coverage cannot be checked"
    tilt = math.degrees(math.acos(min(1.0, abs(float(geometry.normal[2])))))
    if tilt > rules.max_tilt_deg:
        return SkipReason.NOT_AXIAL, f"slices {tilt:.0f} degrees from axial (at most {rules.max_tilt_deg:g})"
    if kernel_class == "sharp":
        return SkipReason.SHARP_KERNEL, f"kernel {info.kernel} is a bone/lung/sharp kernel"
    if info.images < rules.min_slices:
        return SkipReason.TOO_FEW_SLICES, f"{info.images} slices, at least {rules.min_slices} needed"
    coverage = sum(slice_extents(geometry.along, geometry.thicknesses))
    if coverage < rules.min_coverage_mm:
        return SkipReason.SHORT_COVERAGE, f"covers {coverage:.0f} mm, at least {rules.min_coverage_mm:g} mm needed"
    steps = np.diff(geometry.along)
    median = float(np.median(steps))
    for i, step in enumerate(steps):
        t_mean = ((geometry.thicknesses[i] or 0.0) + (geometry.thicknesses[i + 1] or 0.0)) / 2
        if step > rules.max_gap_factor * max(median, t_mean):
            return (
                SkipReason.GAP,
                f"a {step:.1f} mm gap between slices {i + 1} and {i + 2} (median step {median:.1f} mm)",
            )
    return None


def _rank(entry: _Evaluated, rules: SeriesRules) -> tuple[int, int, float, int, bool, int, str]:
    thickness = entry.info.thickness_mm
    band = _band(thickness, rules)
    closeness = 0.0 if thickness is None else thickness if band == 0 else -thickness
    return (0 if entry.kernel_class == "soft" else 1, band, closeness, -entry.info.images, *_by_number(entry.info))


def _band(thickness: float | None, rules: SeriesRules) -> int:
    """0: at least the limit; 1: thinner; 2: unknown."""
    if thickness is None:
        return 2
    return 0 if thickness >= rules.min_thickness_mm - 1e-3 else 1


def _lost(entry: _Evaluated, best: _Evaluated, rules: SeriesRules) -> tuple[SkipReason, str]:
    """Why a series that passes every rule lost to ``best``."""
    chosen = best.info.label
    if entry.kernel_class != best.kernel_class:
        return (
            SkipReason.UNKNOWN_KERNEL,
            f"kernel {entry.info.kernel or 'missing'} is not a known soft-tissue kernel; {chosen}'s is",
        )
    band, best_band = _band(entry.info.thickness_mm, rules), _band(best.info.thickness_mm, rules)
    if band != best_band:
        if band == 2:
            return SkipReason.UNKNOWN_THICKNESS, f"slice thickness unknown; {chosen} is {_mm(best.info.thickness_mm)}"
        limit = f"thinner than {rules.min_thickness_mm:g} mm"
        return (
            SkipReason.THINNER_THAN_LIMIT,
            f"{_mm(entry.info.thickness_mm)} slices, {limit}; {chosen} is {_mm(best.info.thickness_mm)}",
        )
    if entry.info.thickness_mm != best.info.thickness_mm and entry.info.thickness_mm is not None:
        assert best.info.thickness_mm is not None
        if entry.info.thickness_mm > best.info.thickness_mm:
            return (
                SkipReason.THICKER_THAN_CHOSEN,
                f"{_mm(entry.info.thickness_mm)} slices; {chosen} is {_mm(best.info.thickness_mm)}",
            )
        return (
            SkipReason.THINNER_THAN_CHOSEN,
            f"{_mm(entry.info.thickness_mm)} slices; {chosen} is {_mm(best.info.thickness_mm)}",
        )
    return SkipReason.EQUIVALENT, f"as good as {chosen}, which has more slices or a lower number"


def _mm(value: float | None) -> str:
    return f"{value:g} mm" if value is not None else "unknown-thickness"


def _first(sequence: Any) -> Any:
    try:
        return sequence[0] if sequence else None
    except (TypeError, IndexError):
        return None


def _int(value: object) -> int | None:
    number = dicom_float(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _parts(value: object) -> list[str]:
    """A (possibly multi-valued) DICOM string's values, as written."""
    if value is None:
        return []
    if isinstance(value, str):
        items: list[object] = list(value.split("\\"))
    elif isinstance(value, list | tuple) or hasattr(value, "__iter__"):
        items = list(value)
    else:
        items = [value]
    return [str(v).strip() for v in items if str(v).strip()]


def _values(value: object) -> list[str]:
    return [v.upper() for v in _parts(value)]


def _joined(value: object) -> str | None:
    parts = _parts(value)
    return "\\".join(parts) if parts else None
