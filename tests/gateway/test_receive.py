"""The C-STORE side against dcmtk's storescu/echoscu: a study in, one content-addressed zip out."""

from __future__ import annotations

import io
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.service import GatewayService
from gateway.settings import Destination, GatewaySettings
from ichseg.pipeline import keys
from tests.gateway.conftest import Aws, RecordingMetrics, ct_series, mr_instance, storescu, wait_until
from tests.patient_identifiers import identifier_leaks


def test_c_echo_is_answered(gateway: GatewayService) -> None:
    host, port = gateway.address
    done = subprocess.run(
        ["echoscu", "-aet", "SITEA", "-aec", "ICHSEG", host, str(port)], capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr


def test_an_association_for_another_called_ae_title_is_rejected(gateway: GatewayService) -> None:
    host, port = gateway.address
    done = subprocess.run(
        ["echoscu", "-aet", "SITEA", "-aec", "OTHERNODE", host, str(port)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0 and "Called AE Title Not Recognized" in done.stdout + done.stderr, done.stderr


def test_a_ct_study_of_one_series_becomes_one_content_addressed_zip_of_its_instances(
    gateway: GatewayService, aws: Aws, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    files = ct_series(tmp_path / "series", 5)
    output = storescu(gateway.address, [*files, files[2]], calling="SITE A")  # one instance twice: one slice
    assert output.count("Received Store Response (Success)") == 6, output

    [key] = wait_until(aws.ingest_keys)
    assert key.startswith("ingest/SITE.20A/") and keys.is_content_addressed(key)  # "SITE A": the space escaped
    body = aws.s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read()
    assert key == keys.gateway_ingest_key("SITE.20A", __import__("hashlib").sha256(body).hexdigest())
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = archive.namelist()
        sent = {dcmread(f).SOPInstanceUID: dcmread(f) for f in files}
        series_uid = dcmread(files[0]).SeriesInstanceUID
        assert names == sorted(f"{series_uid}/{uid}.dcm" for uid in sent)
        for name in names:
            received = dcmread(io.BytesIO(archive.read(name)))
            assert received.PixelData == sent[name.split("/")[1][:-4]].PixelData
            assert received.file_meta.TransferSyntaxUID  # a whole DICOM file: preamble and file meta
    # The spool moves the study on to sent/ (just after the PUT), and nobody's name reached a log line.
    wait_until(lambda: len(list((gateway.settings.spool_dir / "sent").rglob("*.dcm"))) == 5)
    assert not list((gateway.settings.spool_dir / "incoming").rglob("*.dcm"))
    assert identifier_leaks(caplog.text) == []


def test_re_sending_a_study_creates_no_second_object_or_job(
    gateway: GatewayService, aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    files = ct_series(tmp_path / "series", 4)
    storescu(gateway.address, files)
    [first] = wait_until(aws.ingest_keys)
    etag = aws.s3.head_object(Bucket=aws.bucket, Key=first)["ETag"]

    storescu(gateway.address, files)  # the whole study again
    wait_until(lambda: metrics.count("GatewayStudiesResent") == 1)
    storescu(gateway.address, files[1:2])  # and one instance of it again
    wait_until(lambda: metrics.count("GatewayStudiesResent") == 2)
    assert aws.ingest_keys() == [first]
    assert aws.s3.head_object(Bucket=aws.bucket, Key=first)["ETag"] == etag  # never PUT again
    assert metrics.count("GatewayStudiesUploaded") == 1
    # The job id comes from the key alone, whatever the ETag (a multipart or SSE-KMS upload's is no MD5).
    assert keys.ingest_job_id(first, etag) == keys.ingest_job_id(first, "another-etag")


def test_an_instance_added_to_an_uploaded_study_is_a_new_upload(
    gateway: GatewayService, aws: Aws, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "series", 4)
    storescu(gateway.address, files[:3])
    wait_until(lambda: len(aws.ingest_keys()) == 1)
    storescu(gateway.address, files[3:])  # a late instance: the study now holds four
    [_, _] = wait_until(lambda: len(aws.ingest_keys()) == 2 and aws.ingest_keys())
    newest = max(aws.ingest_keys(), key=lambda k: aws.s3.head_object(Bucket=aws.bucket, Key=k)["ContentLength"])
    body = aws.s3.get_object(Bucket=aws.bucket, Key=newest)["Body"].read()
    assert len(zipfile.ZipFile(io.BytesIO(body)).namelist()) == 4


def test_a_calling_ae_not_allowed_is_rejected(
    make_settings: Callable[..., GatewaySettings], metrics: RecordingMetrics, aws: Aws, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "series", 1)
    with GatewayService(make_settings(allowed_calling_aes=("SITEA",)), metrics=metrics) as service:
        refused = storescu(service.address, files, calling="INTRUDER")
        accepted = storescu(service.address, files, calling="SITEA")
    assert "Association Rejected" in refused and "Success" not in refused, refused
    assert "Received Store Response (Success)" in accepted, accepted


def test_an_mr_instance_is_rejected_at_association(gateway: GatewayService, aws: Aws, tmp_path: Path) -> None:
    output = storescu(gateway.address, [mr_instance(tmp_path / "mr")])
    assert "No presentation context" in output or "no acceptable presentation context" in output.lower(), output
    assert "Store Response" not in output
    assert not list((gateway.settings.spool_dir / "incoming").rglob("*.dcm"))


def test_a_ct_class_instance_of_another_modality_gets_a_failure_status(
    gateway: GatewayService, aws: Aws, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "series", 1, modality="MR")
    output = storescu(gateway.address, files, verbosity="-d")
    assert "0xa900: Error: Data Set does not match SOP Class" in output, output
    assert "[modality 'MR' is not CT: ichseg segments CT]" in output, output
    assert not list((gateway.settings.spool_dir / "incoming").rglob("*.dcm"))


def test_a_full_spool_answers_out_of_resources_until_uploads_free_room(
    make_settings: Callable[..., GatewaySettings], metrics: RecordingMetrics, aws: Aws, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "series", 2)
    one = files[0].stat().st_size
    with GatewayService(make_settings(max_spool_bytes=one + one // 2), metrics=metrics) as service:
        output = storescu(service.address, files)
        assert output.count("Received Store Response (Success)") == 1, output
        assert "Received Store Response (Refused: OutOfResources)" in output, output  # 0xA700
        assert metrics.count("GatewaySpoolFull") == 1
        # Once the first instance's study is in S3, its kept copy is the first thing forgotten for room.
        wait_until(lambda: len(aws.ingest_keys()) == 1)
        again = storescu(service.address, files[1:])
        assert "Received Store Response (Success)" in again, again


def test_a_site_whose_destination_wants_the_overlay_series_asks_for_it_on_its_uploads(
    make_settings: Callable[..., GatewaySettings], aws: Aws, tmp_path: Path, metrics: RecordingMetrics
) -> None:
    """``?overlay`` on a site's destination puts ``overlay-series: yes`` on its uploads (the pipeline
    then makes the series); another site's uploads carry no such request."""
    pacs = Destination.parse("PACS@127.0.0.1:104")
    settings = make_settings(destinations={"SITEA": Destination.parse("PACS@127.0.0.1:104?overlay"), "SITEB": pacs})
    with GatewayService(settings, metrics=metrics) as gateway:
        storescu(gateway.address, ct_series(tmp_path / "a", 2), calling="SITEA")
        storescu(gateway.address, ct_series(tmp_path / "b", 2), calling="SITEB")
        uploads = wait_until(lambda: len(aws.ingest_keys()) == 2 and aws.ingest_keys())
    asked = {keys.ingest_site(key): aws.s3.head_object(Bucket=aws.bucket, Key=key)["Metadata"] for key in uploads}
    assert asked == {"SITEA": {keys.OVERLAY_SERIES_METADATA: "yes"}, "SITEB": {}}
