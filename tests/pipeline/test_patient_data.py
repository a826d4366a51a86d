"""Patient data stays in the hospital path.

A hospital series carries identifiers in every field a site fills (name, IDs, birth date,
accession, descriptions, institution, physicians) and in its zip member names (routers name
folders after patients). They may reach the hospital's own results (the SEG and SR must land in
the patient's record) and nothing else: not the job row, not an error reason, not a log line or
metric, not Firebase, not the report.
"""

from __future__ import annotations

import io
import json
import uuid
import zipfile

import pydicom

from ichseg.pipeline.jobs import JobState
from ichseg.pipeline.keys import ingest_job_id
from infrastructure.event_pump import Invocation
from infrastructure.local_stack import LocalStack
from tests.pacs_fixtures import identified_head_ct
from tests.patient_identifiers import PATIENT_FOLDER, PATIENT_IDENTIFIERS, identifier_leaks
from tests.scan_fixtures import dicom_bytes
from tests.settled import all_logs, json_log_lines, settled_invocations


def _patient_zip(series: list[pydicom.Dataset], corrupt: int | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, ds in enumerate(series):
            payload = dicom_bytes(ds)
            if index == corrupt:
                payload = payload[: len(payload) // 3]
            archive.writestr(f"{PATIENT_FOLDER}/Quetzal_{index:03d}.dcm", payload)
    return buffer.getvalue()


def _ingest(stack: LocalStack, archive: bytes) -> tuple[str, str]:
    """Drop a zip as a router does: (its key, its job id)."""
    key = f"ingest/router-phi/{uuid.uuid4().hex}.zip"
    put = stack.aws("s3").put_object(Bucket=stack.settings.bucket, Key=key, Body=archive)
    return key, ingest_job_id(key, put["ETag"])


def _job_item(stack: LocalStack, job_id: str) -> str:
    item = stack.aws("dynamodb").get_item(TableName=stack.settings.table, Key={"job_id": {"S": job_id}})["Item"]
    return json.dumps(item)


def _final_assembly(invocations: list[Invocation]) -> bool:
    return bool(invocations)  # the assemble queue carries only final assemblies


def test_identifiers_stay_in_the_hospital_results(stack: LocalStack) -> None:
    _, job_id = _ingest(stack, _patient_zip(identified_head_ct()))
    job = stack.inspect.wait_for_job(job_id, timeout=120)
    assert job.state == JobState.DONE, job.error_reason
    # Every function that handled the job has returned, so each line it logged is on disk.
    settled_invocations(stack, "segment", job_id, lambda found: len(found) >= len(job.done_batches))
    settled_invocations(stack, "assemble", job_id, _final_assembly)

    assert identifier_leaks(_job_item(stack, job_id)) == []
    s3 = stack.aws("s3")
    report = s3.get_object(Bucket=stack.settings.bucket, Key=job.results["report"])["Body"].read().decode()
    assert identifier_leaks(report) == []
    assert [o for o in stack.inspect.firebase_objects("") if job_id in o["name"]] == []
    assert identifier_leaks(all_logs(stack)) == []
    # The positive control: the SEG goes back to the patient's record, so it must name the patient.
    seg = pydicom.dcmread(
        io.BytesIO(s3.get_object(Bucket=stack.settings.bucket, Key=job.results["seg"])["Body"].read())
    )
    assert str(seg.PatientName) == PATIENT_IDENTIFIERS["PatientName"]
    assert seg.PatientID == PATIENT_IDENTIFIERS["PatientID"]


def test_refused_series_name_no_patient_in_their_reasons(stack: LocalStack) -> None:
    refused = {
        "MR": _patient_zip(identified_head_ct(count=3, modality="MR")),
        "truncated member": _patient_zip(identified_head_ct(count=3), corrupt=1),
    }
    for case, archive in refused.items():
        key, job_id = _ingest(stack, archive)
        job = stack.inspect.wait_for_job(job_id, timeout=60)
        # Its last lines (the metric below) are on disk once the split has returned; an S3 event
        # URL-encodes the key, so the invocation is found by the key's file name.
        settled_invocations(stack, "split", key.rsplit("/", 1)[-1])
        assert job.state == JobState.FAILED, case
        assert job.error_reason and identifier_leaks(job.error_reason) == [], (case, job.error_reason)
        assert identifier_leaks(_job_item(stack, job.job_id)) == [], case
    assert identifier_leaks(all_logs(stack)) == []
    # Nothing goes back to the PACS for these: each one is counted for ops' alarm.
    failed = [line for line in json_log_lines(stack, "split") if "_aws" in line and "HospitalJobsFailed" in line]
    assert len(failed) >= len(refused)
