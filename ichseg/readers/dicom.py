"""DICOM CT: one instance, or a zipped/folder series or study, sorted along the slice normal.

A study of several series is narrowed to one by :mod:`ichseg.readers.series_selection`. Geometry
follows the DICOM patient coordinate system: slices are ordered by the projection of
ImagePositionPatient on the normal of ImageOrientationPatient (InstanceNumber only when positions
are missing), and each slice's extent along that normal comes from its position and thickness;
pixels are rescaled to Hounsfield units with RescaleSlope/RescaleIntercept.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from ichseg.errors import (
    CorruptScanError,
    InconsistentSeriesError,
    NoFramesError,
    NotCTError,
    UnsupportedFormatError,
)
from ichseg.limits import ScanLimits, check_scan_size
from ichseg.readers.dicom_values import dicom_float, dicom_vector
from ichseg.readers.naming import index_ids
from ichseg.readers.series_selection import (
    SeriesRules,
    check_sole_series,
    describe_series,
    enhanced_frame_geometry,
    select_series,
    slice_extents,
    slice_normal,
)
from ichseg.scan import DicomSeriesRef, Scan, SeriesSelection

ORIENTATION_TOLERANCE = 1e-3
"""Direction cosines closer than this are the same orientation (rounding in exporters)."""


@dataclass
class _Instance:
    name: str
    dataset: Dataset
    position: np.ndarray | None
    orientation: np.ndarray | None
    modality: str = ""


def read_dicom_instances(
    files: list[tuple[str, bytes]], fmt: str, source: str, limits: ScanLimits, rules: SeriesRules | None = None
) -> Scan:
    """Turn DICOM files (name, bytes) of one CT series, or of a study, into a HU scan.

    Objects without pixel data (a DICOMDIR, a vendor's directory file, a dose report) are what a
    series exported to CD or PACS carries beside its images: they are skipped and counted. Of
    several series, ``rules`` (default: :meth:`SeriesRules.from_env`) choose one; the others are
    named in :attr:`Scan.series` with the reason each was skipped.
    """
    parsed = [_parse(name, data) for name, data in files]
    images = [p for p in parsed if "PixelData" in p.dataset or "FloatPixelData" in p.dataset]
    if not images:
        classes = sorted({str(getattr(p.dataset, "SOPClassUID", "?")) for p in parsed})
        raise NoFramesError(
            f"{source}: none of the {len(parsed)} DICOM object(s) holds pixel data (SOP classes {', '.join(classes)})"
        )
    non_image = len(parsed) - len(images)
    groups = _by_series(_dedupe(images))
    if len(groups) == 1:
        # One series is what the sender chose: read as it is, with the errors that explain it.
        instances = groups[0]
        for image in instances:
            _require_ct(image)
        check_sole_series([i.dataset for i in instances], rules or SeriesRules.from_env(), source)
        selection = SeriesSelection(describe_series([i.dataset for i in instances]), (), non_image)
    else:
        index, selection = select_series(
            [[i.dataset for i in group] for group in groups], rules or SeriesRules.from_env(), source, non_image
        )
        instances = groups[index]
    return replace(_read_series(instances, fmt, source, limits), non_image_objects=non_image, series=selection)


def _read_series(instances: list[_Instance], fmt: str, source: str, limits: ScanLimits) -> Scan:
    first = instances[0].dataset
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        if len(instances) > 1:
            raise InconsistentSeriesError(f"{source}: several multi-frame instances in one series; upload one")
        return _multiframe_scan(instances[0], fmt, source, limits)
    rows, cols = int(first.Rows), int(first.Columns)
    for inst in instances:
        size = (int(inst.dataset.Rows), int(inst.dataset.Columns))
        if size != (rows, cols):
            raise InconsistentSeriesError(
                f"{source}: instances differ in size ({instances[0].name} is {cols}x{rows}, "
                f"{inst.name} is {size[1]}x{size[0]})"
            )
    check_scan_size(limits, source, len(instances), rows, cols)
    ordered, along = _sort_along_normal(instances, source)
    slices = np.stack([_hu_pixels(inst.name, inst.dataset) for inst in ordered])
    own = [dicom_float(getattr(inst.dataset, "SliceThickness", None)) for inst in ordered]
    step = round(float(np.median(np.diff(along))), 4) if along is not None and len(along) > 1 else None
    if along is not None:
        extents: tuple[float, ...] | None = slice_extents(along, own) or None
    else:  # no positions: the thickness tag is all there is, and only when every slice agrees
        extents = (own[0],) * len(own) if own[0] is not None and len(set(own)) == 1 else None
    return Scan(
        slices=slices,
        slice_ids=index_ids(len(ordered)),
        format=fmt,
        hu=True,
        pixel_spacing_mm=_pixel_spacing(first),
        slice_thickness_mm=step if step is not None else dicom_float(getattr(first, "SliceThickness", None)),
        source=source,
        dicom=_series_ref([inst.dataset for inst in ordered]),
        slice_extents_mm=extents,
    )


def _parse(name: str, data: bytes) -> _Instance:
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=False)
        modality = str(getattr(dataset, "Modality", "") or "")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptScanError(f"{name}: the DICOM file is truncated or damaged ({exc})") from exc
    return _Instance(
        name,
        dataset,
        dicom_vector(dataset, "ImagePositionPatient", 3),
        dicom_vector(dataset, "ImageOrientationPatient", 6),
        modality,
    )


def _require_ct(instance: _Instance) -> None:
    if instance.modality != "CT":
        raise NotCTError(
            f"{instance.name}: DICOM modality is {instance.modality or 'missing'}, not CT; ichseg segments head CT only"
        )


def _dedupe(instances: list[_Instance]) -> list[_Instance]:
    """The same SOP instance sent twice (a router retry) is one slice."""
    seen: dict[str, _Instance] = {}
    for inst in instances:
        uid = str(getattr(inst.dataset, "SOPInstanceUID", "")) or inst.name
        seen.setdefault(uid, inst)
    return list(seen.values())


def _by_series(instances: list[_Instance]) -> list[list[_Instance]]:
    """Instances grouped by SeriesInstanceUID, in the order the series first appear."""
    series: dict[str, list[_Instance]] = defaultdict(list)
    for inst in instances:
        series[str(getattr(inst.dataset, "SeriesInstanceUID", ""))].append(inst)
    return list(series.values())


def _sort_along_normal(instances: list[_Instance], source: str) -> tuple[list[_Instance], list[float] | None]:
    """Order slices along the normal; return them and their positions along it (mm; None when
    positions are missing and InstanceNumber gave the order)."""
    if any(inst.position is None or inst.orientation is None for inst in instances):
        ordered = sorted(instances, key=lambda i: int(getattr(i.dataset, "InstanceNumber", 0) or 0))
        return ordered, None
    reference = instances[0].orientation
    assert reference is not None
    for inst in instances:
        assert inst.orientation is not None
        if np.max(np.abs(inst.orientation - reference)) > ORIENTATION_TOLERANCE:
            raise InconsistentSeriesError(
                f"{source}: instances have different orientations ({instances[0].name} vs {inst.name}); "
                "they are not one axial series"
            )
    # The normal of the (possibly gantry-tilted) slice plane: positions projected on it are the
    # distances between slices, where the table's z would overstate them by 1/cos(tilt).
    normal = slice_normal(reference)
    along = {id(inst): float(np.dot(np.asarray(inst.position, dtype=float), normal)) for inst in instances}
    ordered = sorted(instances, key=lambda i: along[id(i)])
    positions = [along[id(i)] for i in ordered]
    if np.any(np.abs(np.diff(positions)) < 1e-4):
        raise InconsistentSeriesError(
            f"{source}: two different instances share one slice position; the series is not one volume"
        )
    return ordered, positions


def _hu_pixels(name: str, dataset: Dataset) -> np.ndarray:
    try:
        raw = dataset.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        label = getattr(syntax, "name", str(syntax))
        raise UnsupportedFormatError(
            f"{name}: pixel data in transfer syntax {label} cannot be decoded here; "
            "send uncompressed or JPEG/JPEG-LS/JPEG 2000/RLE DICOM"
        ) from exc
    except (ValueError, AttributeError, EOFError, OSError) as exc:
        raise CorruptScanError(f"{name}: DICOM pixel data is truncated or damaged ({exc})") from exc
    return np.asarray(apply_rescale(raw, dataset), dtype=np.float32)


def _pixel_spacing(dataset: Dataset) -> tuple[float, float] | None:
    spacing = getattr(dataset, "PixelSpacing", None)
    if spacing is None or len(spacing) != 2:
        return None
    return float(spacing[0]), float(spacing[1])


def _series_ref(datasets: list[Dataset]) -> DicomSeriesRef:
    first = datasets[0]
    return DicomSeriesRef(
        study_instance_uid=str(getattr(first, "StudyInstanceUID", "")),
        series_instance_uid=str(getattr(first, "SeriesInstanceUID", "")),
        sop_instance_uids=tuple(str(getattr(d, "SOPInstanceUID", "")) for d in datasets),
        sop_class_uid=str(getattr(first, "SOPClassUID", "")),
        frame_of_reference_uid=str(getattr(first, "FrameOfReferenceUID", "")) or None,
    )


def _multiframe_scan(instance: _Instance, fmt: str, source: str, limits: ScanLimits) -> Scan:
    """Enhanced CT: one instance holding every slice, positions in the per-frame groups."""
    dataset = instance.dataset
    frames = int(dataset.NumberOfFrames)
    check_scan_size(limits, source, frames, int(dataset.Rows), int(dataset.Columns))
    pixels = _hu_pixels(instance.name, dataset)
    shared = getattr(dataset, "SharedFunctionalGroupsSequence", [None])[0]
    transform = getattr(shared, "PixelValueTransformationSequence", [None])[0] if shared is not None else None
    if "RescaleSlope" not in dataset and transform is not None:
        # Enhanced CT keeps the rescale in the functional groups, where apply_rescale does not look.
        slope = float(getattr(transform, "RescaleSlope", 1) or 1)
        pixels = pixels * np.float32(slope) + np.float32(float(getattr(transform, "RescaleIntercept", 0) or 0))
    positions, orientation, thicknesses = enhanced_frame_geometry(dataset)
    measures = getattr(shared, "PixelMeasuresSequence", [None])[0] if shared is not None else None
    spacing = _pixel_spacing(measures) if measures is not None else None
    step = None
    extents = None
    order: np.ndarray = np.arange(frames)
    if orientation is not None and len(positions) == frames and all(p is not None for p in positions):
        along = np.array(positions) @ slice_normal(orientation)
        order = np.argsort(along, kind="stable")
        ordered_along = [float(v) for v in along[order]]
        if frames > 1:
            if float(np.min(np.diff(ordered_along))) < 1e-4:
                raise InconsistentSeriesError(
                    f"{source}: two frames share one slice position; the instance is not one volume"
                )
            step = round(float(np.median(np.diff(ordered_along))), 4)
        extents = slice_extents(ordered_along, [thicknesses[i] for i in order]) or None
    return Scan(
        slices=pixels[order],
        slice_ids=index_ids(frames),
        format=fmt,
        hu=True,
        pixel_spacing_mm=spacing,
        slice_thickness_mm=step,
        source=source,
        dicom=_series_ref([dataset]),
        slice_extents_mm=extents,
    )
