"""DICOM CT series: one instance, a zipped series or a folder, sorted along the slice normal.

Geometry follows the DICOM patient coordinate system: slices are ordered by the projection of
ImagePositionPatient on the normal of ImageOrientationPatient (InstanceNumber only when positions
are missing); pixels are rescaled to Hounsfield units with RescaleSlope/RescaleIntercept.
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
from ichseg.readers.naming import index_ids
from ichseg.scan import DicomSeriesRef, Scan

ORIENTATION_TOLERANCE = 1e-3
"""Direction cosines closer than this are the same orientation (rounding in exporters)."""


@dataclass
class _Instance:
    name: str
    dataset: Dataset
    position: np.ndarray | None
    orientation: np.ndarray | None
    modality: str = ""


def read_dicom_instances(files: list[tuple[str, bytes]], fmt: str, source: str, limits: ScanLimits) -> Scan:
    """Turn DICOM files (name, bytes) of one CT series into a HU scan.

    Objects without pixel data (a DICOMDIR, a vendor's directory file, a dose report) are what a
    series exported to CD or PACS carries beside its images: they are skipped and counted.
    """
    parsed = [_parse(name, data) for name, data in files]
    images = [p for p in parsed if "PixelData" in p.dataset or "FloatPixelData" in p.dataset]
    if not images:
        classes = sorted({str(getattr(p.dataset, "SOPClassUID", "?")) for p in parsed})
        raise NoFramesError(
            f"{source}: none of the {len(parsed)} DICOM object(s) holds pixel data (SOP classes {', '.join(classes)})"
        )
    for image in images:
        _require_ct(image)
    instances = _dedupe(images)
    _check_single_series(instances, source)
    first = instances[0].dataset
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        if len(instances) > 1:
            raise InconsistentSeriesError(f"{source}: several multi-frame instances in one series; upload one")
        return replace(_multiframe_scan(instances[0], fmt, source, limits), non_image_objects=len(parsed) - len(images))
    rows, cols = int(first.Rows), int(first.Columns)
    for inst in instances:
        size = (int(inst.dataset.Rows), int(inst.dataset.Columns))
        if size != (rows, cols):
            raise InconsistentSeriesError(
                f"{source}: instances differ in size ({instances[0].name} is {cols}x{rows}, "
                f"{inst.name} is {size[1]}x{size[0]})"
            )
    check_scan_size(limits, source, len(instances), rows, cols)
    ordered, step = _sort_along_normal(instances, source)
    slices = np.stack([_hu_pixels(inst.name, inst.dataset) for inst in ordered])
    thickness = step if step is not None else _float_or_none(getattr(first, "SliceThickness", None))
    return Scan(
        slices=slices,
        slice_ids=index_ids(len(ordered)),
        format=fmt,
        hu=True,
        pixel_spacing_mm=_pixel_spacing(first),
        slice_thickness_mm=thickness,
        source=source,
        dicom=_series_ref([inst.dataset for inst in ordered]),
        non_image_objects=len(parsed) - len(images),
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
        _vector(dataset, "ImagePositionPatient", 3),
        _vector(dataset, "ImageOrientationPatient", 6),
        modality,
    )


def _require_ct(instance: _Instance) -> None:
    if instance.modality != "CT":
        raise NotCTError(
            f"{instance.name}: DICOM modality is {instance.modality or 'missing'}, not CT; ichseg segments head CT only"
        )


def _vector(dataset: Dataset, keyword: str, length: int) -> np.ndarray | None:
    value = getattr(dataset, keyword, None)
    if value is None or len(value) != length:
        return None
    return np.array([float(v) for v in value])


def _dedupe(instances: list[_Instance]) -> list[_Instance]:
    """The same SOP instance sent twice (a router retry) is one slice."""
    seen: dict[str, _Instance] = {}
    for inst in instances:
        uid = str(getattr(inst.dataset, "SOPInstanceUID", "")) or inst.name
        seen.setdefault(uid, inst)
    return list(seen.values())


def _check_single_series(instances: list[_Instance], source: str) -> None:
    series: dict[str, list[_Instance]] = defaultdict(list)
    for inst in instances:
        series[str(getattr(inst.dataset, "SeriesInstanceUID", ""))].append(inst)
    if len(series) > 1:
        # Named by SeriesNumber only: descriptions are free text a site may fill with patient
        # details, and this message reaches job records, the API and logs.
        parts = [
            f"series {getattr(group[0].dataset, 'SeriesNumber', None) or index} ({len(group)} images)"
            for index, group in enumerate(series.values(), start=1)
        ]
        raise InconsistentSeriesError(
            f"{source}: {len(series)} series in one upload: {'; '.join(parts)}. Upload one series at a time"
        )


def _sort_along_normal(instances: list[_Instance], source: str) -> tuple[list[_Instance], float | None]:
    """Order slices along the normal; return them and the median position step (mm)."""
    if len(instances) == 1:
        return instances, None
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
    normal = np.cross(reference[:3], reference[3:])
    along = {id(inst): float(np.dot(np.asarray(inst.position, dtype=float), normal)) for inst in instances}
    ordered = sorted(instances, key=lambda i: along[id(i)])
    steps = np.diff([along[id(i)] for i in ordered])
    if np.any(np.abs(steps) < 1e-4):
        raise InconsistentSeriesError(
            f"{source}: two different instances share one slice position; the series is not one volume"
        )
    return ordered, round(float(np.median(steps)), 4)


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


def _float_or_none(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(str(value))  # pydicom's DS/IS values, numbers or their text
    except (TypeError, ValueError):
        return None


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
    positions = []
    for group in getattr(dataset, "PerFrameFunctionalGroupsSequence", []):
        plane = getattr(group, "PlanePositionSequence", None)
        positions.append([float(v) for v in plane[0].ImagePositionPatient] if plane else None)
    measures = getattr(shared, "PixelMeasuresSequence", [None])[0] if shared is not None else None
    spacing = _pixel_spacing(measures) if measures is not None else None
    step = None
    order: np.ndarray = np.arange(frames)
    orientation = getattr(getattr(shared, "PlaneOrientationSequence", [None])[0], "ImageOrientationPatient", None)
    if orientation is not None and len(positions) == frames and all(p is not None for p in positions):
        cosines = np.array([float(v) for v in orientation])
        along = np.array(positions) @ np.cross(cosines[:3], cosines[3:])
        order = np.argsort(along, kind="stable")
        if frames > 1:
            step = round(float(np.median(np.diff(along[order]))), 4)
    return Scan(
        slices=pixels[order],
        slice_ids=index_ids(frames),
        format=fmt,
        hu=True,
        pixel_spacing_mm=spacing,
        slice_thickness_mm=step,
        source=source,
        dicom=_series_ref([dataset]),
    )
