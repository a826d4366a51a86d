"""DICOM SEG for DICOM input: the source headers captured at split time, the SEG written at assembly.

A SEG must reference its source instances and share their geometry (frame of reference, plane
positions, orientation, spacing), so the split keeps every source header, without pixel data, in
slice order, as DICOM JSON (``work/{job}/dicom-headers.json``); the assembly rebuilds the
datasets from it and hands them to highdicom with the masks. The headers are the ones the reader
parsed on its way through the upload (:func:`source_headers`): the zip is decompressed once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset

from ichseg import __version__
from ichseg.dicom_identity import dicom_file_bytes
from ichseg.limits import ScanLimits
from ichseg.readers.archive import iter_zip_members
from ichseg.readers.detect import HEAD_BYTES, Content, detect_content
from ichseg.scan import DicomSeriesRef

SEGMENT_LABEL = "Intracranial hemorrhage"
MANUFACTURER = "ichseg"

_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
)
"""Type 2 attributes a SEG copies from its source: required present, allowed empty. Anonymised
exports often drop them entirely; an empty value is the honest stand-in."""


class SegUnavailable(RuntimeError):
    """The scan is DICOM but a SEG cannot be made for it (said in the report, not a job failure)."""


class DerivedObject(StrEnum):
    """The DICOM objects a job derives from its source series, each a series of its own."""

    SEG = "seg"
    SR = "sr"
    OVERLAY = "overlay_series"
    """The secondary-capture series: the slices with the outline burned in (:mod:`~ichseg.writers.dicom_sc`)."""

    @property
    def series_number(self) -> int:
        """High and fixed, so a PACS lists ichseg's series after the scanner's, always the same."""
        return {DerivedObject.SEG: 9301, DerivedObject.SR: 9302, DerivedObject.OVERLAY: 9303}[self]

    @property
    def series_description(self) -> str:
        return {
            DerivedObject.SEG: "ichseg hemorrhage segmentation (research use only)",
            DerivedObject.SR: "ichseg hemorrhage report (research use only)",
            DerivedObject.OVERLAY: "ichseg hemorrhage overlay (not for clinical use)",
        }[self]


@dataclass(frozen=True)
class DerivedUids:
    """A derived object's series and instance UIDs."""

    series_instance_uid: str
    sop_instance_uid: str


def derived_uids(job_id: str, kind: DerivedObject, instance: int = 1) -> DerivedUids:
    """The UIDs of a job's SEG, SR or overlay instance (``instance``, from 1), the same on every
    build for the job.

    A re-run of the assembly, or a re-delivery to a PACS, must make the very same instances: a
    PACS de-duplicates by SOP Instance UID, so fresh UIDs would file a second copy.
    """
    from pydicom.uid import generate_uid

    if not job_id:
        raise ValueError("a job id is required to derive DICOM UIDs")
    numbered = [str(instance)] if instance != 1 else []  # the first instance's UID predates numbering
    return DerivedUids(
        series_instance_uid=generate_uid(entropy_srcs=["ichseg", job_id, kind.value, "series"]),
        sop_instance_uid=generate_uid(entropy_srcs=["ichseg", job_id, kind.value, "instance", *numbered]),
    )


def derived_object_attributes(
    job_id: str, kind: DerivedObject, model_version: str, instance: int = 1
) -> dict[str, Any]:
    """What ichseg's derived objects say alike of themselves (highdicom's keyword arguments): the
    job's UIDs, their own series, ichseg as the manufacturer, the software and model versions."""
    uids = derived_uids(job_id, kind, instance)
    return {
        "series_instance_uid": uids.series_instance_uid,
        "series_number": kind.series_number,
        "sop_instance_uid": uids.sop_instance_uid,
        "instance_number": instance,
        "manufacturer": MANUFACTURER,
        "software_versions": f"ichseg {__version__}; model {model_version}",
        "series_description": kind.series_description,
    }


_PIXEL_KEYS = ("7FE00010", "7FE00008", "7FE00009")
"""Pixel Data, Float and Double Float Pixel Data, as DICOM JSON keys: never in a captured header."""


def source_headers(datasets: Sequence[Dataset], series: DicomSeriesRef) -> list[dict[str, Any]]:
    """The series' instances (from ``datasets``: the headers the reader collected) in slice order,
    as DICOM JSON with file meta and without pixel data; :class:`SegUnavailable` if one is missing."""
    by_uid: dict[str, Dataset] = {}
    for dataset in datasets:
        by_uid.setdefault(str(getattr(dataset, "SOPInstanceUID", "")), dataset)
    missing = [uid for uid in series.sop_instance_uids if uid not in by_uid]
    if missing:
        raise SegUnavailable(f"{len(missing)} source instance(s) could not be found again in the upload")
    headers = []
    for uid in series.sop_instance_uids:
        source = by_uid[uid]
        meta = getattr(source, "file_meta", None)
        dataset_json = source.to_json_dict()
        for key in _PIXEL_KEYS:  # the reader stops before them; a header must stay small whatever it was given
            dataset_json.pop(key, None)
        headers.append({"dataset": dataset_json, "file_meta": meta.to_json_dict() if meta else {}})
    return headers


def capture_headers(data: bytes, series: DicomSeriesRef, limits: ScanLimits) -> list[dict[str, Any]]:
    """The source instances' headers (no pixels) in slice order, as DICOM JSON with file meta, read
    from the upload's bytes one member at a time (the split uses the reader's instead:
    :func:`ichseg.readers.read_scan_and_headers`)."""
    from ichseg.readers.dicom import read_header

    wanted = set(series.sop_instance_uids)
    found: list[Dataset] = []
    for index, (name, payload) in enumerate(_dicom_payloads(data, limits)):
        dataset = read_header(index, name, payload).dataset
        if str(getattr(dataset, "SOPInstanceUID", "")) in wanted:
            found.append(dataset)
    return source_headers(found, series)


def _dicom_payloads(data: bytes, limits: ScanLimits) -> Iterator[tuple[str, bytes]]:
    content = detect_content(data[:HEAD_BYTES])
    if content == Content.DICOM:
        yield "upload", data
    elif content == Content.ZIP:
        yield from ((n, p) for n, p in iter_zip_members(data, "upload", limits) if _is_dicom(p))


def _is_dicom(payload: bytes) -> bool:
    return detect_content(payload[:HEAD_BYTES]) == Content.DICOM


def datasets_from_headers(headers: Sequence[dict[str, Any]]) -> list[Dataset]:
    """The source datasets (no pixels) back from :func:`capture_headers`' JSON, Type 2 gaps filled."""
    datasets = []
    for entry in headers:
        dataset = Dataset.from_json(entry["dataset"])
        meta = FileMetaDataset()
        meta.update(Dataset.from_json(entry["file_meta"]))
        dataset.file_meta = meta
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in dataset:
                setattr(dataset, keyword, "")
        datasets.append(dataset)
    return datasets


def build_seg(
    headers: Sequence[dict[str, Any]], masks: np.ndarray, model_name: str, model_version: str, job_id: str
) -> bytes:
    """A binary DICOM SEG (one segment: intracranial hemorrhage) over the source series.

    Its UIDs come from ``job_id`` (:func:`derived_uids`). An all-normal scan still gets a SEG: its
    one segment is empty (every frame encoded, all zero), which is valid and says "none found".
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = datasets_from_headers(headers)
    if len(sources) != len(masks):
        raise SegUnavailable(
            f"{len(sources)} source instance(s) for {len(masks)} slices (multi-frame input): no SEG written"
        )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.IntracranialHemorrhage,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model_name, version=model_version, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=np.asarray(masks, dtype=np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            manufacturer_model_name=model_name,
            device_serial_number="0",
            **derived_object_attributes(job_id, DerivedObject.SEG, model_version),
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise SegUnavailable(f"the source series cannot carry a DICOM SEG ({exc})") from exc
    return dicom_file_bytes(seg)


def headers_to_json(headers: list[dict[str, Any]]) -> bytes:
    return json.dumps(headers).encode()
