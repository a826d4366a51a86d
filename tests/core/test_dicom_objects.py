"""The DICOM objects a DICOM scan gets back: the SEG, the SR measurement report and the overlay series.

Both are built from a real pydicom series through the split's own header capture, checked by
dciodvfy (0 errors), and read back: what the SR says must be what ``report.json`` says, what it
points at must be the SEG and the source images, and the UIDs must be the job's own.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from ichseg.dicom_identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from ichseg.limits import ScanLimits
from ichseg.model_metadata import ModelMetadata
from ichseg.pipeline import (
    AssembleMessage,
    SegmentMessage,
    UploadRef,
    assemble_results,
    create_scan,
    segment_batch,
    split_scan_into_batches,
)
from ichseg.pipeline import keys as layout
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import JobState
from ichseg.scan import DicomSeriesRef
from ichseg.writers.dicom_results import overlay_series_zip
from ichseg.writers.dicom_sc import OverlayUnavailable, build_overlay_series, finding_banner, patient_orientation
from ichseg.writers.dicom_seg import DerivedObject, build_seg, capture_headers, derived_uids
from ichseg.writers.dicom_sr import SrUnavailable, build_sr
from ichseg.writers.report import Report, report_from_areas
from tests.dicom_tools import dciodvfy_errors
from tests.scan_fixtures import dicom_bytes, dicom_series, zip_files
from tests.stack_fixtures import receive_all

SLICES, ROWS, COLS = 5, 32, 40
SPACING = (0.5, 0.45)
STEP_MM = 2.5
MODEL = ModelMetadata(
    name="ichseg-test", version="1.2.3", subtypes=("epidural", "subdural"), pixel_threshold=0.5, slice_threshold=0.5
)
VOLUME = "118565006"  # SCT Volume
PROBABILITY = "122157"  # DCM Probability
REFERENCED_SEGMENT = "121191"  # DCM Referenced Segment
INTRACRANIAL_HEMORRHAGE = "1386000"  # SCT
PRESENT, ABSENT = "52101004", "272519000"  # SCT


@pytest.fixture(scope="module")
def series() -> list[Dataset]:
    datasets = dicom_series(count=SLICES, rows=ROWS, cols=COLS, pixel_spacing=SPACING, step_mm=STEP_MM)
    for ds in datasets:
        ds.PatientName, ds.StudyDate, ds.AccessionNumber = "Test^Patient", "20260101", "ACC-1"
    return datasets


def _captured(series: list[Dataset], folder: Path) -> list[dict[str, Any]]:
    """The headers as the split keeps them: captured from the uploaded zip, in slice order."""
    archive = zip_files(folder / "series.zip", {f"IM{i}": dicom_bytes(ds) for i, ds in enumerate(series)})
    first = series[0]
    ref = DicomSeriesRef(
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in series),
        sop_class_uid=str(first.SOPClassUID),
    )
    return capture_headers(archive.read_bytes(), ref, ScanLimits())


@pytest.fixture(scope="module")
def headers(series: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _captured(series, tmp_path_factory.mktemp("upload"))


def _case(bleed: bool) -> tuple[np.ndarray, Report]:
    """Masks and the report the pipeline would write for them (slices 2 and 3 bleed when ``bleed``)."""
    masks = np.zeros((SLICES, ROWS, COLS), dtype=bool)
    probabilities = np.full(SLICES, 0.1, dtype=np.float32)
    if bleed:
        masks[2, 10:15, 10:20] = True
        masks[3, 12:14, 12:20] = True
        probabilities[2:4] = (0.93, 0.81)
    report = report_from_areas(
        [f"{i:04d}" for i in range(SLICES)],
        probabilities,
        np.full((SLICES, 2), 0.2, dtype=np.float32),
        masks.reshape(SLICES, -1).sum(axis=1),
        MODEL,
        SPACING,
        STEP_MM,
    )
    return masks, report


def _build(headers: list[dict[str, Any]], bleed: bool, job_id: str) -> tuple[bytes, bytes, Report]:
    masks, report = _case(bleed)
    seg = build_seg(headers, masks, MODEL.name, MODEL.version, job_id)
    return seg, build_sr(headers, seg, report, MODEL.name, MODEL.version, job_id), report


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _items(node: Dataset) -> Iterator[Dataset]:
    """Every content item of an SR tree, depth first."""
    for item in getattr(node, "ContentSequence", []):
        yield item
        yield from _items(item)


def _concept(item: Dataset) -> str:
    names = getattr(item, "ConceptNameCodeSequence", [])
    return str(names[0].CodeValue) if names else ""


def _numbers(sr: Dataset, code: str) -> list[float]:
    return [
        float(item.MeasuredValueSequence[0].NumericValue)
        for item in _items(sr)
        if item.ValueType == "NUM" and _concept(item) == code
    ]


def _evaluation(sr: Dataset) -> str:
    [value] = [
        str(item.ConceptCodeSequence[0].CodeValue)
        for item in _items(sr)
        if item.ValueType == "CODE" and _concept(item) == INTRACRANIAL_HEMORRHAGE
    ]
    return value


def _segment_references(sr: Dataset) -> list[Dataset]:
    return [item for item in _items(sr) if item.ValueType == "IMAGE" and _concept(item) == REFERENCED_SEGMENT]


def _valid(tmp_path: Path, name: str, data: bytes) -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    return dciodvfy_errors(path)


@pytest.mark.parametrize("bleed", [True, False], ids=["hemorrhage", "normal"])
def test_seg_and_sr_are_valid_dicom(headers: list[dict[str, Any]], tmp_path: Path, bleed: bool) -> None:
    seg, sr, _ = _build(headers, bleed, "job-valid")
    assert _valid(tmp_path, "seg.dcm", seg) == []
    assert _valid(tmp_path, "sr.dcm", sr) == []


def test_seg_and_sr_name_ichseg_as_their_implementation(headers: list[dict[str, Any]]) -> None:
    """PS3.10 file meta: ichseg's own Implementation Class UID and Version Name, not highdicom's."""
    for data in _build(headers, True, "job-identity")[:2]:
        meta = _read(data).file_meta
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME


def test_the_validator_catches_a_broken_object(headers: list[dict[str, Any]], tmp_path: Path) -> None:
    # The check above is worth something only if dciodvfy flags what is wrong.
    _, sr, _ = _build(headers, True, "job-broken")
    broken = _read(sr)
    del broken.CompletionFlag  # Type 1 in the SR Document General Module
    buffer = io.BytesIO()
    broken.save_as(buffer)
    errors = _valid(tmp_path, "broken.dcm", buffer.getvalue())
    assert any("CompletionFlag" in error for error in errors), errors


def test_sr_of_a_hemorrhage_reports_the_volume_of_the_seg_segment(
    headers: list[dict[str, Any]], series: list[Dataset]
) -> None:
    seg_bytes, sr_bytes, report = _build(headers, True, "job-bleed")
    seg, sr = _read(seg_bytes), _read(sr_bytes)
    assert report["volume_ml"] is not None and report["volume_ml"] > 0
    assert _numbers(sr, VOLUME) == [pytest.approx(report["volume_ml"])]
    # The scan's probability, then each subtype's (the report's scan-level subtypes: 0.2 each here).
    assert _numbers(sr, PROBABILITY) == pytest.approx([report["hemorrhage_probability"], 0.2, 0.2])
    assert _evaluation(sr) == PRESENT
    [segment] = _segment_references(sr)
    assert segment.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert segment.ReferencedSOPSequence[0].ReferencedSegmentNumber == 1
    # The SEG's frames are the bleeding slices (in highdicom's order), each referencing its source
    # instance and holding that slice's mask.
    sources = [str(ds.SOPInstanceUID) for ds in series]
    framed = [
        sources.index(str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID))
        for frame in seg.PerFrameFunctionalGroupsSequence
    ]
    assert sorted(framed) == [2, 3]
    masks, _ = _case(True)
    for frame_pixels, index in zip(seg.pixel_array, framed, strict=True):
        assert np.array_equal(frame_pixels.astype(bool), masks[index])
    # The slices involved are the source images of the scan's finding.
    measured = {
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in _items(sr)
        if item.ValueType == "IMAGE" and _concept(item) == "121112"  # DCM Source of Measurement
    }
    assert measured == set(sources[2:4])
    notes = [str(item.TextValue) for item in _items(sr) if item.ValueType == "TEXT" and _concept(item) == "121106"]
    assert "Slices with hemorrhage: 0002, 0003." in notes
    assert any("cannot separate the subtypes" in note for note in notes)  # no subtype volume is invented


def test_sr_of_a_normal_scan_says_absent_with_no_volume(headers: list[dict[str, Any]], series: list[Dataset]) -> None:
    seg_bytes, sr_bytes, report = _build(headers, False, "job-normal")
    seg, sr = _read(seg_bytes), _read(sr_bytes)
    assert report["finding"] == "Normal" and report["volume_ml"] == 0.0
    assert _evaluation(sr) == ABSENT and _numbers(sr, VOLUME) == [0.0]
    assert _segment_references(sr) == []  # an empty segment is no region to point at
    # The SEG still says "none found": one segment, every frame encoded and empty.
    assert int(seg.NumberOfFrames) == SLICES and not np.any(seg.pixel_array)
    # The verdict rests on every slice: all are its source images.
    measured = [
        str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for item in _items(sr)
        if item.ValueType == "IMAGE" and _concept(item) == "121112"  # DCM Source of Measurement
    ]
    assert measured == [str(ds.SOPInstanceUID) for ds in series]


def test_sr_says_why_a_detected_hemorrhage_measures_0_ml_and_carries_the_input_warnings(
    headers: list[dict[str, Any]], tmp_path: Path
) -> None:
    # Slices 2 and 3 called hemorrhage by the detection head, nothing outlined: 0 mL, explained.
    probabilities = np.array([0.1, 0.1, 0.93, 0.81, 0.1], dtype=np.float32)
    report = report_from_areas(
        [f"{i:04d}" for i in range(SLICES)], probabilities, None, np.zeros(SLICES), MODEL, SPACING, STEP_MM
    )
    assert report["finding"] == "Hemorrhage detected" and report["volume_ml"] == 0.0
    assert [w["code"] for w in report["warnings"]] == ["partial_coverage"]  # 5 slices of 2.5 mm
    seg = build_seg(headers, np.zeros((SLICES, ROWS, COLS), dtype=bool), MODEL.name, MODEL.version, "job-no-outline")
    sr_bytes = build_sr(headers, seg, report, MODEL.name, MODEL.version, "job-no-outline")
    notes = [str(i.TextValue) for i in _items(_read(sr_bytes)) if i.ValueType == "TEXT" and _concept(i) == "121106"]
    assert report["volume_note"] in notes
    assert f"Input warning (partial_coverage): {report['warnings'][0]['message']}" in notes
    assert _valid(tmp_path, "sr.dcm", sr_bytes) == []


def test_both_objects_land_in_the_source_study_as_new_series(
    headers: list[dict[str, Any]], series: list[Dataset]
) -> None:
    seg_bytes, sr_bytes, _ = _build(headers, True, "job-study")
    source = series[0]
    for data in (seg_bytes, sr_bytes):
        obj = _read(data)
        assert obj.StudyInstanceUID == source.StudyInstanceUID
        assert (obj.PatientID, str(obj.PatientName), obj.AccessionNumber) == ("ICHSEG-TEST", "Test^Patient", "ACC-1")
        assert obj.SeriesInstanceUID != source.SeriesInstanceUID
    sr = _read(sr_bytes)
    assert sr.SeriesDescription == DerivedObject.SR.series_description and sr.Modality == "SR"
    assert _read(seg_bytes).SeriesNumber != sr.SeriesNumber
    evidence = {
        str(instance.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for ref_series in study.ReferencedSeriesSequence
        for instance in ref_series.ReferencedSOPSequence
    }
    assert evidence == {str(ds.SOPInstanceUID) for ds in series} | {str(_read(seg_bytes).SOPInstanceUID)}


def test_uids_come_from_the_job_id(headers: list[dict[str, Any]]) -> None:
    def uids(job_id: str) -> list[str]:
        seg, sr, _ = _build(headers, True, job_id)
        return [str(getattr(_read(d), k)) for d in (seg, sr) for k in ("SeriesInstanceUID", "SOPInstanceUID")]

    first, again, other = uids("job-a"), uids("job-a"), uids("job-b")
    assert first == again  # a re-run makes the very same instances: a PACS files them once
    assert len(set(first)) == 4 and not set(first) & set(other)
    expected = [derived_uids("job-a", kind) for kind in (DerivedObject.SEG, DerivedObject.SR)]
    assert first == [uid for u in expected for uid in (u.series_instance_uid, u.sop_instance_uid)]
    with pytest.raises(ValueError, match="job id"):
        derived_uids("", DerivedObject.SR)


def test_subtype_volumes_appear_only_when_the_report_has_them(headers: list[dict[str, Any]], tmp_path: Path) -> None:
    masks, report = _case(True)
    seg = build_seg(headers, masks, MODEL.name, MODEL.version, "job-subtypes")
    plain = _read(build_sr(headers, seg, report, MODEL.name, MODEL.version, "job-subtypes"))
    assert len(_numbers(plain, VOLUME)) == 1
    with_subtypes: Report = {**report, "volume_ml_by_subtype": {"epidural": 0.012, "subdural": 0.027}}
    sr_bytes = build_sr(headers, seg, with_subtypes, MODEL.name, MODEL.version, "job-subtypes")
    assert _valid(tmp_path, "sr.dcm", sr_bytes) == []
    assert sorted(_numbers(_read(sr_bytes), VOLUME)) == pytest.approx([0.012, 0.027, report["volume_ml"]])


def test_subtypes_are_coded_findings_with_their_probabilities_and_dsrdump_shows_them(
    headers: list[dict[str, Any]], tmp_path: Path
) -> None:
    masks, report = _case(True)
    report = {**report, "subtypes": {"epidural": 0.31, "subdural": 0.74}}
    seg = build_seg(headers, masks, MODEL.name, MODEL.version, "job-subtype-probabilities")
    sr_bytes = build_sr(headers, seg, report, MODEL.name, MODEL.version, "job-subtype-probabilities")
    assert _valid(tmp_path, "sr.dcm", sr_bytes) == []
    sr = _read(sr_bytes)
    findings = [
        str(item.ConceptCodeSequence[0].CodeMeaning)
        for item in _items(sr)
        if item.ValueType == "CODE" and item.ConceptCodeSequence[0].CodingSchemeDesignator == "99ICHSEG"
    ]
    assert findings == ["subdural hemorrhage", "epidural hemorrhage"]  # the most probable first
    scan_probability = report["hemorrhage_probability"]
    assert _numbers(sr, PROBABILITY) == pytest.approx([scan_probability, 0.74, 0.31])
    # What a PACS administrator sees with dcmtk: the tree, the subtype and its probability in it.
    (tmp_path / "sr.dcm").write_bytes(sr_bytes)
    dump = subprocess.run(["dsrdump", str(tmp_path / "sr.dcm")], capture_output=True, text=True, timeout=60, check=True)
    groups = dump.stdout.split('CONTAINER:(,,"Measurement Group")')
    [subdural] = [g for g in groups if '"ichseg subtype subdural"' in g]
    assert '<contains CODE:(,,"Finding")=(subdural,99ICHSEG,"subdural hemorrhage")>' in subdural
    assert '<contains NUM:(,,"Probability")="0.74" (1,UCUM,"no units")>' in subdural


def test_a_report_that_does_not_fit_the_series_is_a_clear_error(headers: list[dict[str, Any]]) -> None:
    masks, report = _case(True)
    seg = build_seg(headers, masks, MODEL.name, MODEL.version, "job-mismatch")
    short: Report = {**report, "slices": report["slices"][:3]}
    with pytest.raises(SrUnavailable, match="3 slice"):
        build_sr(headers, seg, short, MODEL.name, MODEL.version, "job-mismatch")
    with pytest.raises(SrUnavailable, match="SEG"):
        build_sr(headers, b"not dicom", report, MODEL.name, MODEL.version, "job-mismatch")
    source_bytes = json.dumps(headers[0]["dataset"]).encode()
    with pytest.raises(SrUnavailable):
        build_sr(headers, source_bytes, report, MODEL.name, MODEL.version, "job-mismatch")


def _run_stages(core: PipelineContext, key: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
    """Upload ``data`` to ``key`` and run split, segment and assemble one by one; the job id."""
    etag = core.s3.put_object(Bucket=core.config.bucket, Key=key, Body=data, Metadata=metadata or {})["ETag"]
    upload = UploadRef.from_object(core.config.bucket, key, etag, len(data))
    assert split_scan_into_batches(core, upload).outcome == "split"
    segments = [SegmentMessage.from_json(m["Body"]) for m in receive_all(core, core.config.segment_queue_url)]
    for message in sorted((m for m in segments if m.job_id == upload.job_id), key=lambda m: m.batch_id):
        assert segment_batch(core, message).outcome == "segmented"
    assert assemble_results(core, AssembleMessage(job_id=upload.job_id)).outcome == "done"
    return upload.job_id


def test_the_assembly_writes_seg_and_sr_for_a_dicom_upload(
    core: PipelineContext, series: list[Dataset], tmp_path: Path
) -> None:
    """The stages one by one on a DICOM zip: the job's results name both objects, valid and the job's own."""
    archive = zip_files(tmp_path / "series.zip", {f"IM{i}": dicom_bytes(ds) for i, ds in enumerate(series)})
    data = archive.read_bytes()
    ticket = create_scan(core, "dana", "application/zip", len(data))
    # An app's upload cannot ask for the overlay series: only the gateway's uploads are hospital jobs.
    job_id = _run_stages(core, layout.upload_key("dana", ticket.job_id), data, {layout.OVERLAY_SERIES_METADATA: "yes"})
    assert "overlay_series" not in core.store.require(job_id).results

    job = core.store.require(job_id)
    assert job.state == JobState.DONE
    assert (job.results["seg"], job.results["sr"]) == (f"results/{job_id}/seg.dcm", f"results/{job_id}/sr.dcm")
    seg_bytes, sr_bytes = core.get(job.results["seg"]), core.get(job.results["sr"])
    assert _valid(tmp_path, "seg.dcm", seg_bytes) == [] and _valid(tmp_path, "sr.dcm", sr_bytes) == []
    report = json.loads(core.get(job.results["report"]))
    sr = _read(sr_bytes)
    assert sr.SOPInstanceUID == derived_uids(job_id, DerivedObject.SR).sop_instance_uid
    assert _read(seg_bytes).SOPInstanceUID == derived_uids(job_id, DerivedObject.SEG).sop_instance_uid
    assert _numbers(sr, VOLUME) == [pytest.approx(report["volume_ml"])]
    assert _evaluation(sr) == (PRESENT if report["finding"] == "Hemorrhage detected" else ABSENT)
    assert sr.StudyInstanceUID == series[0].StudyInstanceUID


# ------------------------------------------------------------------------------ the overlay series


OVERLAY_SIZE = 160
"""The overlay tests' slices: room for the banners above and below the bleed, as on a real slice."""


@pytest.fixture(scope="module")
def overlay_series(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    datasets = dicom_series(count=SLICES, rows=OVERLAY_SIZE, cols=OVERLAY_SIZE, pixel_spacing=SPACING, step_mm=STEP_MM)
    for ds in datasets:
        ds.PatientName = "Test^Patient"
    return datasets


@pytest.fixture(scope="module")
def overlay_headers(overlay_series: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _captured(overlay_series, tmp_path_factory.mktemp("overlay"))


def _overlay(headers: list[dict[str, Any]], bleed: bool, job_id: str) -> tuple[list[bytes], np.ndarray]:
    _, report = _case(bleed)
    masks = np.zeros((SLICES, OVERLAY_SIZE, OVERLAY_SIZE), dtype=bool)
    if bleed:
        masks[2, 60:90, 50:100] = True
        masks[3, 70:80, 60:90] = True
    slices = [np.full((OVERLAY_SIZE, OVERLAY_SIZE), 90 + 10 * i, np.uint8) for i in range(SLICES)]
    return build_overlay_series(headers, slices, masks, report, MODEL.version, job_id), masks


def _red_pixels(image: Dataset) -> int:
    """Pixels of the burned-in outline's red (the banners are pale yellow on black, the slice grey)."""
    rgb = image.pixel_array.astype(int)  # pydicom decodes JPEG's YCbCr to RGB
    return int(((rgb[..., 0] - rgb[..., 1] > 80) & (rgb[..., 0] - rgb[..., 2] > 80)).sum())


@pytest.mark.parametrize("bleed", [True, False], ids=["hemorrhage", "normal"])
def test_the_overlay_series_is_valid_secondary_capture_of_every_slice(
    overlay_headers: list[dict[str, Any]], overlay_series: list[Dataset], tmp_path: Path, bleed: bool
) -> None:
    files, masks = _overlay(overlay_headers, bleed, "job-overlay")
    assert len(files) == SLICES
    images = [_read(data) for data in files]
    for number, (data, image, source) in enumerate(zip(files, images, overlay_series, strict=True), start=1):
        assert _valid(tmp_path, f"sc{number}.dcm", data) == []
        assert image.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
        assert image.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG baseline: every PACS decodes it
        assert (image.StudyInstanceUID, image.PatientName) == (source.StudyInstanceUID, source.PatientName)
        assert (image.SeriesNumber, image.InstanceNumber, image.BurnedInAnnotation) == (9303, number, "YES")
        assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert [float(v) for v in image.PixelSpacing] == list(SPACING)
        assert image.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        # The outline is burned in where the mask has pixels, and nowhere else.
        assert (_red_pixels(image) > 0) == bool(masks[number - 1].any()), f"slice {number}"
    assert len({str(image.SeriesInstanceUID) for image in images}) == 1
    assert len({str(image.SOPInstanceUID) for image in images}) == SLICES


def test_the_overlay_series_is_the_same_instances_on_every_build(overlay_headers: list[dict[str, Any]]) -> None:
    """A re-run of the assembly (or a re-delivery) must not file a second overlay series in the PACS."""
    first, _ = _overlay(overlay_headers, True, "job-again")
    again, _ = _overlay(overlay_headers, True, "job-again")
    other, _ = _overlay(overlay_headers, True, "job-other")
    uids = [str(_read(data).SOPInstanceUID) for data in first]
    assert uids == [str(_read(data).SOPInstanceUID) for data in again]
    assert uids[0] == derived_uids("job-again", DerivedObject.OVERLAY).sop_instance_uid
    assert not set(uids) & {str(_read(data).SOPInstanceUID) for data in other}
    # The zip adds nothing of its own (no clock in its member times): the same images, the same bytes.
    packed = overlay_series_zip(first)
    assert packed == overlay_series_zip(list(first))
    with zipfile.ZipFile(io.BytesIO(packed)) as archive:
        assert archive.namelist() == [f"{n:04d}.dcm" for n in range(1, SLICES + 1)]
        assert [archive.read(name) for name in archive.namelist()] == first


def test_the_overlay_banner_says_the_finding_probability_volume_and_flags() -> None:
    _, report = _case(True)
    assert finding_banner(report) == [
        f"ichseg: Hemorrhage detected, probability {report['hemorrhage_probability']:.2f}",
        f"volume {report['volume_ml']:.1f} mL; input flagged: see the SR",  # 5 slices: fewer than the model's context
    ]
    _, normal = _case(False)
    assert finding_banner({**normal, "warnings": []}) == [
        f"ichseg: Normal, probability {normal['hemorrhage_probability']:.2f}"
    ]


@pytest.mark.parametrize(
    ("orientation", "letters"),
    [
        ((1, 0, 0, 0, 1, 0), ("L", "P")),  # axial
        ((1, 0, 0, 0, 0, -1), ("L", "F")),  # coronal
        ((0, 1, 0, 0, 0, -1), ("P", "F")),  # sagittal
        ((0.94, 0.34, 0, -0.34, 0.94, 0), ("LP", "PR")),  # a gantry-tilted axial
    ],
)
def test_patient_orientation_comes_from_the_direction_cosines(
    orientation: tuple[float, ...], letters: tuple[str, str]
) -> None:
    assert patient_orientation(orientation) == letters


def test_an_overlay_series_that_does_not_fit_the_series_is_a_clear_error(headers: list[dict[str, Any]]) -> None:
    masks, report = _case(True)
    with pytest.raises(OverlayUnavailable, match="5 source instance"):
        build_overlay_series(headers, [np.zeros((ROWS, COLS), np.uint8)] * 3, masks[:3], report, "1", "job")


def test_a_hospital_upload_asking_for_the_overlay_series_gets_it(
    core: PipelineContext, series: list[Dataset], tmp_path: Path
) -> None:
    """The gateway's upload metadata (``?overlay`` on the site's destination) -> the split's manifest ->
    the assembly's ``overlay_series.zip``: one valid secondary capture per source slice, in order."""
    archive = zip_files(tmp_path / "series.zip", {f"IM{i}": dicom_bytes(ds) for i, ds in enumerate(series)})
    data = archive.read_bytes()
    key = layout.gateway_ingest_key("SITEA", hashlib.sha256(data).hexdigest())
    job_id = _run_stages(core, key, data, {layout.OVERLAY_SERIES_METADATA: "yes"})

    job = core.store.require(job_id)
    assert job.state == JobState.DONE and job.results["overlay_series"] == f"results/{job_id}/overlay_series.zip"
    with zipfile.ZipFile(io.BytesIO(core.get(job.results["overlay_series"]))) as packed:
        images = [packed.read(name) for name in packed.namelist()]
    assert len(images) == SLICES
    assert _valid(tmp_path, "sc.dcm", images[-1]) == []
    sources = [str(_read(image).SourceImageSequence[0].ReferencedSOPInstanceUID) for image in images]
    assert sources == [str(ds.SOPInstanceUID) for ds in series]
    assert {"seg", "sr"} <= set(job.results)
