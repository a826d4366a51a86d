"""A hospital's PACS to ichseg and back, over the DICOM network, as a site runs it.

Orthanc (a real PACS) holds a head CT study and sends it to the gateway's AE title (C-STORE, what a
routing rule does); the gateway hands each completed study to the pipeline; the SEG and the SR
come back to Orthanc by C-STORE, where a radiologist's viewer would open them. The objects are
checked with dciodvfy (the standard's validator), against the source instances, and against the
job's report. A PACS outage delays delivery and loses nothing; a re-send duplicates nothing.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from botocore.exceptions import ClientError
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ichseg.pipeline import keys
from ichseg.pipeline.jobs import Job, JobState
from ichseg.pipeline.keys import UploadRef
from ichseg.pipeline.messages import ScanManifest
from infrastructure.local_stack import LocalStack
from tests.dicom_tools import dciodvfy_errors
from tests.gateway.receivers import Ris
from tests.pacs_fixtures import OrthancPacs, identified_head_ct
from tests.patient_identifiers import identifier_leaks
from tests.scan_fixtures import dicom_bytes

GATEWAY = "ichseg"
"""Orthanc's name for the gateway (its DicomModalities entry)."""


@pytest.fixture(scope="module")
def hospital(stack: LocalStack, pacs: OrthancPacs) -> Iterator[OrthancPacs]:
    """Orthanc, told where ichseg's gateway listens (as a site's PACS admin would configure it)."""
    gateway = stack.describe()["dicom_gateway"]
    pacs.add_modality(GATEWAY, gateway["ae_title"], gateway["host"], int(gateway["port"]))
    yield pacs


def _send_study(pacs: OrthancPacs, series: list[pydicom.Dataset]) -> str:
    ids = [pacs.upload(dicom_bytes(ds)) for ds in series]
    study = ids[0]["ParentStudy"]
    pacs.send(GATEWAY, study)
    return str(series[0].StudyInstanceUID)


def _ingest_jobs(stack: LocalStack) -> dict[str, str]:
    """Every hospital job the gateway's uploads started: object key -> job id."""
    s3 = stack.aws("s3")
    objects = s3.list_objects_v2(Bucket=stack.settings.bucket, Prefix="ingest/").get("Contents", [])
    return {
        o["Key"]: UploadRef.from_object(stack.settings.bucket, o["Key"], o["ETag"], o["Size"]).job_id for o in objects
    }


def _study_of(stack: LocalStack, job_id: str) -> str | None:
    """The study a hospital job segments (its manifest's DICOM source), once the split wrote it."""
    try:
        body = stack.aws("s3").get_object(Bucket=stack.settings.bucket, Key=keys.manifest_key(job_id))["Body"].read()
    except ClientError:  # not split yet, or refused before its manifest
        return None
    manifest = ScanManifest.from_json(body.decode())
    return manifest.dicom.series.study_instance_uid if manifest.dicom else None


def _wait_for_job_of(stack: LocalStack, study_uid: str, before: set[str], timeout: float = 120) -> Job:
    """The one hospital job started after ``before`` for ``study_uid`` (found by the study its
    manifest names), once it ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = [
            job_id for job_id in set(_ingest_jobs(stack).values()) - before if _study_of(stack, job_id) == study_uid
        ]
        if mine:
            assert len(mine) == 1, f"one study sent, {len(mine)} jobs started for it"
            return stack.inspect.wait_for_job(mine[0], timeout=timeout)
        time.sleep(0.5)
    raise AssertionError(f"no job appeared for the study within {timeout:.0f} s")


def _objects_in_pacs(pacs: OrthancPacs, study_uid: str, modality: str) -> list[pydicom.Dataset]:
    found = []
    for series in pacs.series_of_modality(modality):
        for instance in series["Instances"]:
            ds = pydicom.dcmread(io.BytesIO(pacs.instance_file(instance)))
            if ds.StudyInstanceUID == study_uid:
                found.append(ds)
    return found


def _delivery_state_settles(stack: LocalStack, job_id: str, timeout: float = 60) -> str | None:
    """The job's delivery state once it is DELIVERED, or as it stands at ``timeout``: the row says
    DELIVERED just after the PACS has both objects (the C-STOREs come first)."""
    deadline = time.monotonic() + timeout
    while (state := stack.inspect.store.require(job_id).delivery_state) != "DELIVERED" and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def _wait_for_results_in_pacs(pacs: OrthancPacs, study_uid: str, timeout: float = 90) -> dict[str, pydicom.Dataset]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seg, sr = _objects_in_pacs(pacs, study_uid, "SEG"), _objects_in_pacs(pacs, study_uid, "SR")
        if seg and sr:
            assert len(seg) == 1 and len(sr) == 1, f"{len(seg)} SEG and {len(sr)} SR in the PACS"
            return {"SEG": seg[0], "SR": sr[0]}
        time.sleep(0.5)
    raise AssertionError(f"no SEG and SR in the PACS for the study within {timeout:.0f} s")


def report_of_job_in(message: str, job_id: str) -> bool:
    """Is this HL7 message the ORU of ``job_id`` (its order's filler number)?"""
    return f"|{job_id}^ICHSEG|" in message


def _numeric_items(item: Any) -> Iterator[tuple[str, float, str]]:
    """(concept meaning, value, unit) of every NUM content item in an SR tree."""
    for child in getattr(item, "ContentSequence", []):
        if child.ValueType == "NUM":
            measured = child.MeasuredValueSequence[0]
            unit = measured.MeasurementUnitsCodeSequence[0].CodeValue
            yield child.ConceptNameCodeSequence[0].CodeMeaning, float(measured.NumericValue), unit
        yield from _numeric_items(child)


def _report(stack: LocalStack, job: Job) -> dict[str, Any]:
    body = stack.aws("s3").get_object(Bucket=stack.settings.bucket, Key=job.results["report"])["Body"].read()
    report: dict[str, Any] = json.loads(body)
    return report


def test_a_study_sent_by_the_pacs_comes_back_as_a_valid_seg_and_sr(
    stack: LocalStack, hospital: OrthancPacs, ris: Ris, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the gateway runs in this process: its log lines and metrics
    assert hospital.echo(GATEWAY), "the gateway does not answer C-ECHO"
    series = identified_head_ct(count=8, bleed_from=4)
    before = set(_ingest_jobs(stack).values())
    study_uid = _send_study(hospital, series)
    job = _wait_for_job_of(stack, study_uid, before)
    assert job.state == JobState.DONE, job.error_reason
    returned = _wait_for_results_in_pacs(hospital, study_uid)

    for modality, dataset in returned.items():
        path = tmp_path / f"{modality}.dcm"
        dataset.save_as(path)
        assert dciodvfy_errors(path) == [], f"dciodvfy finds errors in the {modality}"
        assert dataset.PatientID == series[0].PatientID  # it lands in the patient's record
    seg, sr = returned["SEG"], returned["SR"]
    sources = {str(ds.SOPInstanceUID) for ds in series}
    referenced = {
        str(ref.ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for ref in derivation.SourceImageSequence
    }
    assert referenced and referenced <= sources
    report = _report(stack, job)
    assert report["volume_ml"] and report["volume_ml"] > 0
    volumes = [value for meaning, value, unit in _numeric_items(sr) if unit == "ml"]
    assert volumes and volumes[0] == pytest.approx(report["volume_ml"], abs=1e-3)
    referenced_seg = {
        str(ref.ReferencedSOPInstanceUID)
        for evidence in sr.CurrentRequestedProcedureEvidenceSequence
        for series_ref in evidence.ReferencedSeriesSequence
        for ref in series_ref.ReferencedSOPSequence
    }
    assert str(seg.SOPInstanceUID) in referenced_seg
    assert _delivery_state_settles(stack, job.job_id) == "DELIVERED"
    # The RIS heard of it too: an ORU^R01 naming the patient, the accession, the study and the answer.
    [oru] = [m.split("\r") for m in ris.received if report_of_job_in(m, job.job_id)]
    assert oru[1].startswith(f"PID|1||{series[0].PatientID}^")
    assert oru[3].startswith(f"OBR|1|{series[0].AccessionNumber}|{job.job_id}^ICHSEG|")
    assert any(f"|ST|110180^Study Instance UID^DCM||{study_uid}|" in segment for segment in oru)
    assert ("TQ1|1||||||||S^Stat^HL70485" in oru) == (report["finding"] == "Hemorrhage detected")
    # The patient is in the returned objects and messages (above) and nowhere else: gateway logs, the job row.
    assert any(record.name.startswith("gateway") for record in caplog.records)
    item = stack.aws("dynamodb").get_item(TableName=stack.settings.table, Key={"job_id": {"S": job.job_id}})
    assert identifier_leaks(caplog.text + json.dumps(item["Item"])) == []

    # The PACS sends the series again (a technologist presses "send" twice): nothing new anywhere.
    jobs_before = set(_ingest_jobs(stack).values())
    hospital.send(GATEWAY, hospital.upload(dicom_bytes(series[0]))["ParentSeries"])
    time.sleep(stack.settings.gateway_idle_seconds + 4)
    assert set(_ingest_jobs(stack).values()) == jobs_before
    assert len(_objects_in_pacs(hospital, study_uid, "SEG")) == 1
    assert len(_objects_in_pacs(hospital, study_uid, "SR")) == 1


def test_a_pacs_outage_delays_the_results_and_loses_nothing(stack: LocalStack, hospital: OrthancPacs) -> None:
    series = identified_head_ct(count=6, bleed_from=2)
    before = set(_ingest_jobs(stack).values())
    study_uid = _send_study(hospital, series)
    with hospital.down():
        job = _wait_for_job_of(stack, study_uid, before)
        assert job.state == JobState.DONE, job.error_reason
        deadline = time.monotonic() + 60
        while stack.inspect.store.require(job.job_id).delivery_attempts < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        failed_once = stack.inspect.store.require(job.job_id)
        assert failed_once.delivery_attempts >= 1 and failed_once.delivery_state == "PENDING"
    returned = _wait_for_results_in_pacs(hospital, study_uid, timeout=120)
    assert set(returned) == {"SEG", "SR"}
    assert _delivery_state_settles(stack, job.job_id) == "DELIVERED"


def _red_pixels(rgb: np.ndarray) -> int:
    """Pixels of the burned-in outline's red (the banners are pale yellow on black, the slice grey)."""
    rgb = rgb[..., :3].astype(int)
    return int(((rgb[..., 0] - rgb[..., 1] > 80) & (rgb[..., 0] - rgb[..., 2] > 80)).sum())


def _orthanc_id(pacs: OrthancPacs, sop_instance_uid: str) -> str:
    [found] = pacs.find_instances(sop_instance_uid)
    return found


def test_the_overlay_series_reaches_the_pacs_and_shows_in_its_own_viewer(
    stack: LocalStack, hospital: OrthancPacs, browser: Any, tmp_path: Path
) -> None:
    """A site whose destination says ``?overlay`` (this stack's) gets, beside the SEG and SR, a
    secondary-capture series any PACS viewer shows: one image per slice, the outline burned in on
    the bleeding slices only. Orthanc renders it, and its web viewer (Orthanc Explorer, in headless
    Chromium) shows it."""
    series = identified_head_ct(count=8, bleed_from=4, rows=256, cols=256)
    before = set(_ingest_jobs(stack).values())
    study_uid = _send_study(hospital, series)
    job = _wait_for_job_of(stack, study_uid, before)
    assert job.state == JobState.DONE, job.error_reason
    assert _delivery_state_settles(stack, job.job_id) == "DELIVERED"
    assert stack.inspect.store.require(job.job_id).delivered_objects == {"seg", "sr", "overlay_series", "hl7"}
    # The hospital's view of it, without an AWS login: the gateway's status page.
    status = requests.get(stack.describe()["dicom_gateway"]["status_url"] + "status.json", timeout=30).json()
    [entry] = [study for study in status["studies"] if study["job_id"] == job.job_id]
    assert (entry["job_state"], entry["delivery_state"], entry["delivered"]) == (
        "DONE",
        "DELIVERED",
        ["hl7", "overlay_series", "seg", "sr"],
    )

    overlay = sorted(_objects_in_pacs(hospital, study_uid, "OT"), key=lambda ds: int(ds.InstanceNumber))
    assert [int(ds.InstanceNumber) for ds in overlay] == list(range(1, 9))
    assert {int(ds.SeriesNumber) for ds in overlay} == {9303} and len({ds.SeriesInstanceUID for ds in overlay}) == 1
    assert [ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in overlay] == [
        ds.SOPInstanceUID for ds in series
    ]
    overlay[5].save_as(tmp_path / "sc.dcm")
    assert dciodvfy_errors(tmp_path / "sc.dcm") == []
    report = _report(stack, job)
    outlined = [number for number, entry in enumerate(report["slices"]) if entry["area_px"] > 0]
    assert outlined, "the bleed was not outlined: nothing to show"
    # Orthanc's own rendering of each image: red where the report outlined the slice, nowhere else.
    previews = [Image.open(io.BytesIO(hospital.preview(_orthanc_id(hospital, ds.SOPInstanceUID)))) for ds in overlay]
    assert [n for n, image in enumerate(previews) if _red_pixels(np.asarray(image.convert("RGB")))] == outlined

    # Orthanc Explorer, the PACS's web interface: the instance page, then its preview.
    bleeding = overlay[outlined[0]]
    browser.get(f"{hospital.url}/app/explorer.html#instance?uuid={_orthanc_id(hospital, bleeding.SOPInstanceUID)}")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "instance-preview").is_displayed())
    browser.find_element(By.ID, "instance-preview").click()

    def outline_on_screen(driver: Any) -> bytes | None:
        shot = driver.get_screenshot_as_png()
        return shot if _red_pixels(np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))) else None

    # The lightbox loads the image and fades it in: the screen is read until the outline shows.
    screenshot = WebDriverWait(browser, 30).until(outline_on_screen, "the outline never showed in Orthanc Explorer")
    (tmp_path / "orthanc-overlay.png").write_bytes(screenshot)  # docs/make_orthanc_picture.py makes the docs' one
