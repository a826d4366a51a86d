"""The whole pipeline through its real local interfaces: HTTP API, presigned POST to moto's S3, S3 -> SQS
notifications, the event pump and functions, the inference server, Firebase Storage emulator."""

from __future__ import annotations

import io
import json
import time
import uuid
from pathlib import Path

import av
import numpy as np
import requests

from ichseg.errors import ScanError
from ichseg.inference import OnnxSegmenter, segment_scan
from ichseg.model_metadata import SUBTYPES
from ichseg.pipeline.jobs import JobSource, JobState
from ichseg.readers import read_scan
from ichseg.writers.report import build_report
from infrastructure.local_stack import LocalStack
from tests.settled import json_log_lines, settled_invocations
from tests.stack_fixtures import AppClient, head_frames, video_bytes


def _get(url: str) -> bytes:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text[:200]
    return response.content


def _video_facts(data: bytes) -> tuple[str, str, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.codec_context.name, stream.codec_context.pix_fmt, frames


def test_app_upload_ends_done_with_h264_overlay_in_s3_and_firebase_and_the_cli_report(
    alice: AppClient, stack: LocalStack, tiny_model: Path, tmp_path: Path
) -> None:
    frames = head_frames(10, bleed_from=6)
    data = video_bytes(tmp_path, frames)
    job_id = alice.upload(data)
    job = alice.wait(job_id)
    assert job.state == JobState.DONE, job.error_reason

    status = alice.status(job_id).json()
    assert status["state"] == "DONE"
    assert status["progress"] == {"done": 10, "total": 10, "batches_done": 3, "batches_total": 3}
    assert status["error"] is None
    assert set(status["results"]) == {"overlay", "report", "contact_sheet"}

    codec, pix_fmt, count = _video_facts(_get(status["results"]["overlay"]))
    assert (codec, pix_fmt, count) == ("h264", "yuv420p", 10)
    assert _get(status["results"]["contact_sheet"]).startswith(b"\x89PNG")

    # The report is the one `ichseg segment` writes for the same upload and model.
    report = json.loads(_get(status["results"]["report"]))
    segmenter = OnnxSegmenter(tiny_model)
    scan = read_scan(data)
    _, segmentation = segment_scan(scan, segmenter)
    expected = build_report(scan.slice_ids, segmentation, segmenter.metadata, None, None)
    assert [s["id"] for s in report["slices"]] == list(scan.slice_ids) == [f"{i:04d}" for i in range(10)]
    for key in ("finding", "hemorrhage_probability", "slices_with_hemorrhage", "thresholds", "model", "disclaimer"):
        assert report[key] == expected[key], key
    # Slices at batch borders see their neighbours through the batches' context slices: every
    # probability, subtypes included, is the one of the whole scan read at once.
    for got, want in zip(report["slices"], expected["slices"], strict=True):
        assert got["probability"] == want["probability"]
        assert got["hemorrhage"] == want["hemorrhage"]
        assert got["subtypes"].keys() == want["subtypes"].keys() == set(SUBTYPES)
        assert all(abs(got["subtypes"][n] - want["subtypes"][n]) <= 0.005 for n in SUBTYPES)
        # probabilities cross the wire as uint8: a pixel right at the threshold may round either way
        assert abs(got["area_px"] - want["area_px"]) <= max(3, 0.02 * want["area_px"])
    # Slice 6 alone would pass the gate; read with its dimmer neighbour 5 (2.5-D) it does not.
    assert report["slices_with_hemorrhage"] == [f"{i:04d}" for i in range(7, 10)]
    assert status["result"]["finding"] == report["finding"] == "Hemorrhage detected"
    assert status["result"]["subtypes"] == report["subtypes"] and report["subtypes"]["epidural"] > 0.5
    assert report["volume_ml_by_subtype"] is None and "cannot separate" in report["volume_ml_by_subtype_note"]

    masks = stack.aws("s3").list_objects_v2(Bucket=stack.settings.bucket, Prefix=f"results/{job_id}/masks/")
    assert len(masks.get("Contents", [])) == 10

    mirrored = {o["name"]: o for o in stack.inspect.firebase_objects(f"users/alice/scans/{job_id}/")}
    assert set(mirrored) == {f"users/alice/scans/{job_id}/overlay.mp4", f"users/alice/scans/{job_id}/report.json"}
    assert mirrored[f"users/alice/scans/{job_id}/overlay.mp4"]["content_type"] == "video/mp4"
    emulator_video = stack.inspect.firebase_download(f"users/alice/scans/{job_id}/overlay.mp4")
    assert _video_facts(emulator_video) == ("h264", "yuv420p", 10)
    assert status["mirror"]["error"] is None
    assert list(job.stage_seconds()) == [
        "created->received",
        "received->split",
        "split->segmenting",
        "segmenting->assembling",
        "assembling->done",
    ]


def test_duplicate_s3_events_and_sqs_deliveries_make_one_job_and_one_assembly(
    alice: AppClient, stack: LocalStack, tmp_path: Path
) -> None:
    sqs = stack.aws("sqs")
    job_id = alice.upload(video_bytes(tmp_path, head_frames(6, bleed_from=3)))
    # The same S3 notification delivered twice more (S3 and SQS are both at-least-once).
    notification = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": "ObjectCreated:Post",
                "s3": {
                    "bucket": {"name": stack.settings.bucket},
                    "object": {"key": f"uploads/alice/{job_id}/scan".replace("/", "%2F"), "size": 1, "eTag": "x"},
                },
            }
        ]
    }
    for _ in range(2):
        sqs.send_message(QueueUrl=stack.queues["ingest"].url, MessageBody=json.dumps(notification))
    job = alice.wait(job_id)
    assert job.state == JobState.DONE, job.error_reason
    done_at = job.stamps["done"]

    # Replay every stage's messages after the fact: a segment message and the assemble message.
    segment = {
        "job_id": job_id,
        "batch_id": "b0000",
        "start": 0,
        "count": 4,
        "frames_key": f"work/{job_id}/frames/b0000.npy",
        "context_before": 0,
        "context_after": 1,
        "slice_ids": ["0000", "0001", "0002", "0003"],
    }
    sqs.send_message(QueueUrl=stack.queues["segment"].url, MessageBody=json.dumps(segment))
    sqs.send_message(QueueUrl=stack.queues["assemble"].url, MessageBody=json.dumps({"job_id": job_id}))
    # Wait for the replays themselves to have been handled (not for counts the job had reached
    # before they were sent): the replayed segment message, and a second final assembly.
    replayed_segment = json.dumps(segment)
    settled_invocations(stack, "segment", job_id, lambda found: any(i.bodies == [replayed_segment] for i in found))
    settled_invocations(stack, "assemble", job_id, lambda found: len(found) >= 2)
    settled_invocations(stack, "split", job_id, lambda found: len(found) >= 3)

    after = stack.inspect.store.require(job_id)
    assert after.state == JobState.DONE and after.stamps["done"] == done_at
    assert after.done_batches == frozenset({"b0000", "b0001"}) and after.done_slices == 6
    assert len(stack.inspect.invocations_of("split", job_id)) == 3
    assembles = stack.inspect.invocations_of("assemble", job_id)
    assert len(assembles) == 2  # the pipeline's final assembly, and the replay: nothing per batch
    assert all(not i.failed_ids for i in assembles)
    # Only one assemble message ever came from the pipeline itself: one transition to ASSEMBLING.
    assert stack.inspect.store.require(job_id).stamps["assembling"] == job.stamps["assembling"]


def test_corrupt_upload_fails_with_the_scan_library_reason(alice: AppClient, stack: LocalStack, tmp_path: Path) -> None:
    good = video_bytes(tmp_path, head_frames(6))
    truncated = good[: len(good) // 3]
    try:
        read_scan(truncated)
    except ScanError as exc:
        expected_code, expected_reason = exc.code, str(exc)
    else:  # pragma: no cover - the fixture must be unreadable
        raise AssertionError("the truncated video should not decode")
    job_id = alice.upload(truncated)
    job = alice.wait(job_id)
    assert job.state == JobState.FAILED
    assert (job.error_code, job.error_reason) == (expected_code, expected_reason)
    body = alice.status(job_id).json()
    assert body["error"] == {"code": expected_code, "reason": expected_reason}

    text_job = alice.upload(b"these are not the slices you are looking for\n" * 10, "application/octet-stream")
    failed = alice.wait(text_job)
    assert failed.state == JobState.FAILED and failed.error_code == "unsupported_format"
    assert "ichseg reads MP4/MOV" in (failed.error_reason or "")


def test_endpoint_down_is_retried_then_the_job_fails_and_the_message_is_dead_lettered(
    alice: AppClient, stack: LocalStack, tmp_path: Path
) -> None:
    with stack.endpoint.down():
        job_id = alice.upload(video_bytes(tmp_path, head_frames(3)))  # one batch
        job = alice.wait(job_id, timeout=120)
    assert job.state == JobState.FAILED
    assert job.error_code == "segment_failed" and job.failed_stage == "segment"
    assert "failed 3 time(s)" in (job.error_reason or "") and "after 3 attempt(s)" in (job.error_reason or "")
    # The last attempt fails the job before its invocation returns: wait for it to be recorded.
    attempts = settled_invocations(stack, "segment", job_id, lambda found: len(found) >= 3)
    assert sorted(c for i in attempts for c in i.receive_counts) == [1, 2, 3]
    deadline = time.time() + 60
    while time.time() < deadline and not any(job_id in body for body in stack.inspect.dlq_bodies("segment")):
        time.sleep(0.5)
    assert any(job_id in body for body in stack.inspect.dlq_bodies("segment"))


def test_a_poisoned_message_goes_to_the_dead_letter_queue_and_fails_its_job(
    alice: AppClient, stack: LocalStack, tmp_path: Path
) -> None:
    store = stack.inspect.store
    job, _ = store.create(uuid.uuid4().hex, JobSource.APP, "alice", "uploads/alice/poisoned/scan", 900)
    store.mark_split(job.job_id, total_batches=1, total_slices=4, scan={})
    poison = {
        "job_id": job.job_id,
        "batch_id": "b0000",
        "start": 0,
        "count": 4,
        "frames_key": f"work/{job.job_id}/frames/missing.npy",
        "context_before": 0,
        "context_after": 0,
        "slice_ids": ["0000", "0001", "0002", "0003"],
    }
    stack.aws("sqs").send_message(QueueUrl=stack.queues["segment"].url, MessageBody=json.dumps(poison))
    failed = stack.inspect.wait_for_job(job.job_id, timeout=60)
    assert failed.state == JobState.FAILED and failed.error_code == "segment_failed"
    assert "NoSuchKey" in (failed.error_reason or "")
    deadline = time.time() + 60
    while time.time() < deadline and not any(job.job_id in body for body in stack.inspect.dlq_bodies("segment")):
        time.sleep(0.5)
    assert any(job.job_id in body for body in stack.inspect.dlq_bodies("segment"))

    garbage = "this is not a segment message"
    stack.aws("sqs").send_message(QueueUrl=stack.queues["segment"].url, MessageBody=garbage)
    deadline = time.time() + 60
    while time.time() < deadline and garbage not in stack.inspect.dlq_bodies("segment"):
        time.sleep(0.5)
    assert garbage in stack.inspect.dlq_bodies("segment")


def test_several_jobs_at_once_all_finish_each_for_its_owner(
    alice: AppClient, bob: AppClient, stack: LocalStack, tmp_path: Path
) -> None:
    uploads = [(alice, head_frames(5, bleed_from=2)), (bob, head_frames(7)), (alice, head_frames(4, bleed_from=0))]
    jobs = [(client, client.upload(video_bytes(tmp_path, frames)), frames) for client, frames in uploads]
    for client, job_id, frames in jobs:
        job = client.wait(job_id)
        assert job.state == JobState.DONE, job.error_reason
        assert job.owner == client.uid and job.total_slices == len(frames)
    assert len({job_id for _, job_id, _ in jobs}) == 3
    findings = [alice.stack.inspect.store.require(job_id).summary["finding"] for _, job_id, _ in jobs]
    assert findings == ["Hemorrhage detected", "Normal", "Hemorrhage detected"]


def test_hospital_dicom_zip_in_ingest_gets_a_dicom_seg_and_no_mirror(stack: LocalStack, tmp_path: Path) -> None:
    import highdicom as hd

    from ichseg.pipeline.keys import ingest_job_id
    from tests.scan_fixtures import dicom_bytes, dicom_series, zip_files

    series = dicom_series(count=5, rows=48, cols=40)
    archive = zip_files(tmp_path / "series.zip", {f"IM{i}": dicom_bytes(ds) for i, ds in enumerate(series)})
    s3 = stack.aws("s3")
    key = "ingest/router-7/study 1/series.zip"
    put = s3.put_object(Bucket=stack.settings.bucket, Key=key, Body=archive.read_bytes())
    job_id = ingest_job_id(key, put["ETag"])
    job = stack.inspect.wait_for_job(job_id, timeout=90)
    assert job.state == JobState.DONE, job.error_reason
    assert job.owner is None and job.mirror_prefix is None and "seg" in job.results
    assert job.scan["format"] == "dicom-zip" and job.scan["pixel_spacing_mm"] == [0.5, 0.45]
    seg = hd.seg.segread(io.BytesIO(s3.get_object(Bucket=stack.settings.bucket, Key=job.results["seg"])["Body"].read()))
    assert seg.SeriesDescription.startswith("ichseg") and seg.Modality == "SEG"
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced <= {str(ds.SOPInstanceUID) for ds in series}
    report = json.loads(s3.get_object(Bucket=stack.settings.bucket, Key=job.results["report"])["Body"].read())
    assert report["slice_thickness_mm"] == 2.5 and len(report["slices"]) == 5


def test_a_series_clipped_to_a_brain_window_is_refused_as_unfit(alice: AppClient, tmp_path: Path) -> None:
    """Exported already windowed (0-80 HU): no skull left, so the model would paint it as blood."""
    from tests.scan_fixtures import dicom_bytes, dicom_series, zip_files

    series = dicom_series(count=6, rows=48, cols=40)
    for ds in series:
        hu = ds.pixel_array.astype(np.float32) + float(ds.RescaleIntercept)
        ds.PixelData = (np.clip(hu, 0, 80) - float(ds.RescaleIntercept)).astype(ds.pixel_array.dtype).tobytes()
    archive = zip_files(tmp_path / "clipped.zip", {f"IM{i}": dicom_bytes(ds) for i, ds in enumerate(series)})
    job = alice.wait(alice.upload(archive.read_bytes(), "application/zip"))
    assert job.state == JobState.FAILED and job.error_code == "unfit_input" and job.failed_stage == "split"
    assert "no bone-density pixels" in (job.error_reason or "") and "from 0 to 80 HU" in (job.error_reason or "")
    assert job.results == {}


def test_watchdog_function_runs_on_its_schedule_event(stack: LocalStack) -> None:
    status, answer = stack.pump.tick_watchdog()
    assert status == "ok" and set(answer) == {"checked", "failed"}


def test_function_logs_carry_the_job_id_and_emit_emf_metrics(
    alice: AppClient, stack: LocalStack, tmp_path: Path
) -> None:
    job_id = alice.upload(video_bytes(tmp_path, head_frames(3)))
    assert alice.wait(job_id).state == JobState.DONE
    # The assemble function logs its outcome after DONE: its lines are on disk once it has returned.
    settled_invocations(stack, "assemble", job_id, lambda found: bool(found))
    for function in ("split", "segment", "assemble"):
        lines = json_log_lines(stack, function)
        logs = [line for line in lines if line.get("job_id") == job_id]
        assert logs, f"no {function} log line carries job_id"
        metric_names = {
            m["Name"]
            for line in lines
            if "_aws" in line
            for d in line["_aws"]["CloudWatchMetrics"]
            for m in d["Metrics"]
        }
        assert f"{function.capitalize()}Latency" in metric_names
    assert np.isfinite(stack.inspect.store.require(job_id).stamps["done"])
