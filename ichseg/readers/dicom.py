"""DICOM CT: one instance, or a zipped/folder series or study, sorted along the slice normal.

A study of several series is narrowed to one by :mod:`ichseg.readers.series_selection`. Geometry
follows the DICOM patient coordinate system: slices are ordered by the projection of
ImagePositionPatient on the normal of ImageOrientationPatient (InstanceNumber only when positions
are missing), and each slice's extent along that normal comes from its position and thickness;
pixels are rescaled to Hounsfield units with RescaleSlope/RescaleIntercept.

Memory follows the chosen series, not the upload: every object's header is read first, without
its pixel data (:func:`read_header`), the series is chosen from the headers, and only then are
the chosen instances read again one at a time and decoded into one preallocated volume
(:func:`read_dicom_series`). The headers of the chosen instances are returned for the DICOM SEG.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
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
from ichseg.readers.result import ScanRead
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

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
"""Pixel Data, Float Pixel Data, Double Float Pixel Data: where a header read stops."""
_IMAGE_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008})
"""The pixel data this reader decodes (an object with one of these is an image)."""

FetchMember = Callable[[int], bytes]
"""A member's bytes again, by its index in the input (the pixel pass reads one member at a time)."""


@dataclass
class DicomHeader:
    """One DICOM object's header (no pixel data) and where to find its bytes again."""

    index: int
    name: str
    dataset: Dataset
    position: np.ndarray | None
    orientation: np.ndarray | None
    modality: str = ""
    has_pixels: bool = False


def read_header(index: int, name: str, payload: bytes) -> DicomHeader:
    """Parse one object's header, stopping at its pixel data; :class:`CorruptScanError` if damaged."""
    stopped_at: list[int] = []

    def at_pixels(tag: int, vr: str | None, length: int) -> bool:
        if int(tag) in _PIXEL_TAGS:
            stopped_at.append(int(tag))  # called for top-level elements only: nested icons do not count
            return True
        return False

    try:
        dataset = read_partial(io.BytesIO(payload), at_pixels, force=True)
        modality = str(getattr(dataset, "Modality", "") or "")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptScanError(f"{name}: the DICOM file is truncated or damaged ({exc})") from exc
    # A FileDataset keeps the buffer it was read from: that would keep every member's bytes alive.
    dataset.buffer = None
    return DicomHeader(
        index,
        name,
        dataset,
        dicom_vector(dataset, "ImagePositionPatient", 3),
        dicom_vector(dataset, "ImageOrientationPatient", 6),
        modality,
        has_pixels=bool(stopped_at) and stopped_at[0] in _IMAGE_PIXEL_TAGS,
    )


def read_dicom_series(
    headers: Sequence[DicomHeader | CorruptScanError],
    fetch: FetchMember,
    fmt: str,
    source: str,
    limits: ScanLimits,
    rules: SeriesRules | None = None,
) -> ScanRead:
    """Turn the headers of DICOM objects (one CT series, or a study) into a HU scan, decoding the
    pixels of the chosen series only, one instance at a time, into one preallocated volume.

    ``headers`` holds, in input order, each object's header or the error its parse raised (raised
    here, first one first, as if every file had been parsed up front). Objects without pixel data
    (a DICOMDIR, a vendor's directory file, a dose report) are what a series exported to CD or
    PACS carries beside its images: they are skipped and counted. Of several series, ``rules``
    (default: :meth:`SeriesRules.from_env`) choose one; the others are named in
    :attr:`Scan.series` with the reason each was skipped. The chosen instances' headers come back
    in slice order (the DICOM SEG's source).
    """
    parsed: list[DicomHeader] = []
    for header in headers:
        if isinstance(header, CorruptScanError):
            raise header
        parsed.append(header)
    images = [p for p in parsed if p.has_pixels]
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
    scan, ordered = _read_series(instances, fetch, fmt, source, limits)
    return ScanRead(
        replace(scan, non_image_objects=non_image, series=selection), tuple(inst.dataset for inst in ordered)
    )


def _read_series(
    instances: list[DicomHeader], fetch: FetchMember, fmt: str, source: str, limits: ScanLimits
) -> tuple[Scan, list[DicomHeader]]:
    first = instances[0].dataset
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        if len(instances) > 1:
            raise InconsistentSeriesError(f"{source}: several multi-frame instances in one series; upload one")
        return _multiframe_scan(instances[0], fetch, fmt, source, limits), instances
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
    # Filled one instance at a time: only this volume and one instance's bytes are ever held.
    slices = np.empty((len(ordered), rows, cols), dtype=np.float32)
    for k, inst in enumerate(ordered):
        hu = _hu_pixels(inst.name, _full_dataset(inst, fetch))
        if hu.shape != (rows, cols):
            raise UnsupportedFormatError(
                f"{inst.name}: its pixel data is {'x'.join(map(str, hu.shape))}, not one {cols}x{rows} "
                "greyscale slice; send a greyscale CT series"
            )
        slices[k] = hu
    own = [dicom_float(getattr(inst.dataset, "SliceThickness", None)) for inst in ordered]
    step = round(float(np.median(np.diff(along))), 4) if along is not None and len(along) > 1 else None
    if along is not None:
        extents: tuple[float, ...] | None = slice_extents(along, own) or None
    else:  # no positions: the thickness tag is all there is, and only when every slice agrees
        extents = (own[0],) * len(own) if own[0] is not None and len(set(own)) == 1 else None
    scan = Scan(
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
    return scan, ordered


def _full_dataset(instance: DicomHeader, fetch: FetchMember) -> Dataset:
    """The instance read again with its pixel data (its bytes dropped as soon as it is decoded)."""
    try:
        return pydicom.dcmread(io.BytesIO(fetch(instance.index)), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptScanError(f"{instance.name}: the DICOM file is truncated or damaged ({exc})") from exc


def _require_ct(instance: DicomHeader) -> None:
    if instance.modality != "CT":
        raise NotCTError(
            f"{instance.name}: DICOM modality is {instance.modality or 'missing'}, not CT; ichseg segments head CT only"
        )


def _dedupe(instances: list[DicomHeader]) -> list[DicomHeader]:
    """The same SOP instance sent twice (a router retry) is one slice."""
    seen: dict[str, DicomHeader] = {}
    for inst in instances:
        uid = str(getattr(inst.dataset, "SOPInstanceUID", "")) or inst.name
        seen.setdefault(uid, inst)
    return list(seen.values())


def _by_series(instances: list[DicomHeader]) -> list[list[DicomHeader]]:
    """Instances grouped by SeriesInstanceUID, in the order the series first appear."""
    series: dict[str, list[DicomHeader]] = defaultdict(list)
    for inst in instances:
        series[str(getattr(inst.dataset, "SeriesInstanceUID", ""))].append(inst)
    return list(series.values())


def _sort_along_normal(instances: list[DicomHeader], source: str) -> tuple[list[DicomHeader], list[float] | None]:
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


def _multiframe_scan(instance: DicomHeader, fetch: FetchMember, fmt: str, source: str, limits: ScanLimits) -> Scan:
    """Enhanced CT: one instance holding every slice, positions in the per-frame groups."""
    dataset = instance.dataset
    frames = int(dataset.NumberOfFrames)
    check_scan_size(limits, source, frames, int(dataset.Rows), int(dataset.Columns))
    pixels = _hu_pixels(instance.name, _full_dataset(instance, fetch))
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
