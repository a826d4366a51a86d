"""The stage functions driven one by one (no pump) against moto and the real inference server.

The ``core`` context has its own bucket, table and queues that nothing else reads, and reaches the
endpoint over plain HTTP (the EC2 mode), so each test can stop between stages, replay messages and
simulate the crashes that at-least-once delivery must survive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichseg.endpoint_protocol import ResponseAttributes, decode_slices
from ichseg.pipeline import (
    AssembleMessage,
    SegmentMessage,
    UploadRef,
    assemble_results,
    create_scan,
    fail_overdue_jobs,
    segment_batch,
    split_scan_into_batches,
)
from ichseg.pipeline import keys as layout
from ichseg.pipeline.api import ApiError, delete_scan, list_scans, scan_status
from ichseg.pipeline.assemble import AssemblyClaim
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import JobDeleted, JobSource, JobState, MirrorState, StageOutcome
from ichseg.pipeline.parts import BatchPart
from tests.stack_fixtures import head_frames, receive_all, video_bytes


def _upload(ctx: PipelineContext, uid: str, data: bytes) -> UploadRef:
    ticket = create_scan(ctx, uid, "video/mp4", len(data))
    key = layout.upload_key(uid, ticket.job_id)
    etag = ctx.s3.put_object(Bucket=ctx.config.bucket, Key=key, Body=data)["ETag"]
    return UploadRef.from_object(ctx.config.bucket, key, etag, len(data))


def _segment_messages(ctx: PipelineContext) -> list[SegmentMessage]:
    """The segment queue's messages in batch order (the split sends several batches at once)."""
    messages = [SegmentMessage.from_json(m["Body"]) for m in receive_all(ctx, ctx.config.segment_queue_url)]
    return sorted(messages, key=lambda m: m.batch_id)


def _assemble_messages(ctx: PipelineContext) -> list[AssembleMessage]:
    return [AssembleMessage.from_json(m["Body"]) for m in receive_all(ctx, ctx.config.assemble_queue_url)]


def _mask_keys(ctx: PipelineContext, job_id: str) -> set[str]:
    listed = ctx.s3.list_objects_v2(Bucket=ctx.config.bucket, Prefix=layout.masks_prefix(job_id))
    return {o["Key"] for o in listed.get("Contents", [])}


def _run_to_assembly(ctx: PipelineContext, upload: UploadRef) -> list[SegmentMessage]:
    assert split_scan_into_batches(ctx, upload).outcome == "split"
    messages = _segment_messages(ctx)
    for message in messages:
        assert segment_batch(ctx, message).outcome == "segmented"
    return messages


def test_stages_in_sequence_take_a_scan_from_upload_to_results(core: PipelineContext, tmp_path: Path) -> None:
    upload = _upload(core, "carol", video_bytes(tmp_path, head_frames(9, bleed_from=5)))
    split = split_scan_into_batches(core, upload)
    assert (split.outcome, split.slices, split.batches) == ("split", 9, 3)
    job = core.store.require(upload.job_id)
    assert job.state == JobState.SEGMENTING and job.total_batches == 3 and "received" in job.stamps
    manifest = json.loads(core.get(layout.manifest_key(upload.job_id)))
    assert manifest["slice_ids"] == [f"{i:04d}" for i in range(9)] and manifest["window"] == "ct-ich-brain"

    messages = _segment_messages(core)
    assert [(m.batch_id, m.start, m.count) for m in messages] == [("b0000", 0, 4), ("b0001", 4, 4), ("b0002", 8, 1)]
    # Each batch's request carries the neighbouring slices the model reads with its edge slices.
    assert [(m.context_before, m.context_after) for m in messages] == [(0, 1), (1, 1), (1, 0)]
    assert [len(decode_slices(core.get(m.frames_key))) for m in messages] == [5, 6, 2]
    assert [m.slice_ids for m in messages] == [
        ("0000", "0001", "0002", "0003"),
        ("0004", "0005", "0006", "0007"),
        ("0008",),
    ]
    results = [segment_batch(core, m) for m in messages]
    assert [r.started_assembly for r in results] == [False, False, True]
    assert core.store.require(upload.job_id).state == JobState.ASSEMBLING
    part = BatchPart.decode(core.get(layout.part_key(upload.job_id, "b0001")))
    assert part.attributes.model == "ichseg-tiny" and len(part.attributes.slice_probabilities) == 4
    assert len(part.attributes.subtype_probabilities) == 4  # the context slices' answers are dropped
    assert part.slice_ids == ("0004", "0005", "0006", "0007") and len(part.rendered.thumbnails) == 4

    # Each batch wrote its masks and frames as it was rendered (nothing is read back to be copied);
    # the last one started the assembly, the one message on the assemble queue.
    assert _mask_keys(core, upload.job_id) == {layout.mask_key(upload.job_id, f"{i:04d}") for i in range(9)}
    assert core.store.require(upload.job_id).state == JobState.ASSEMBLING
    assemble = _assemble_messages(core)
    assert assemble == [AssembleMessage(job_id=upload.job_id)]
    done = assemble_results(core, assemble[0])
    assert done.outcome == "done" and done.slices == 9 and done.mirror_error is None
    job = core.store.require(upload.job_id)
    # Frames 5-8 bleed; frame 5, read with its normal neighbour 4, stays under the gate.
    assert job.state == JobState.DONE and job.summary["slices_with_hemorrhage"] == 3
    listed = core.s3.list_objects_v2(Bucket=core.config.bucket, Prefix=f"results/{upload.job_id}/")["Contents"]
    names = {o["Key"].split(f"results/{upload.job_id}/")[1] for o in listed}
    assert {"overlay.mp4", "report.json", "contact_sheet.png"} <= names and len(names) == 3 + 9 + 9
    # Each slice also has its plain windowed frame (the viewer's "overlay off"), a grey JPEG of the slice's size.
    assert {f"frames/{i:04d}.jpg" for i in range(9)} <= names and job.results["frames"].endswith("/frames/")
    frame = np.array(Image.open(io.BytesIO(core.get(f"results/{upload.job_id}/frames/0007.jpg"))))
    assert frame.ndim == 2 and frame.shape == (64, 80)
    mask = np.array(Image.open(io.BytesIO(core.get(f"results/{upload.job_id}/masks/0007.png"))))
    assert set(np.unique(mask)) == {0, 255}
    # The frame shows the blob the mask outlines: brighter inside the mask than outside it.
    assert frame[mask > 0].mean() > frame[mask == 0].mean() + 100
    report = json.loads(core.get(job.results["report"]))
    assert [s["area_px"] > 0 for s in report["slices"]] == [False] * 6 + [True] * 3
    assert [s["area_px"] for s in report["slices"][6:]] == [int((mask > 0).sum())] * 3  # the same blob
    # Replays after the fact change nothing.
    assert split_scan_into_batches(core, upload).outcome == "duplicate"
    assert segment_batch(core, messages[0]).outcome == "skipped"
    assert assemble_results(core, assemble[0]).outcome == "duplicate"
    assert receive_all(core, core.config.segment_queue_url, wait=0.3) == []
    assert core.store.require(upload.job_id).stamps["done"] == job.stamps["done"]


def test_a_duplicate_segment_delivery_during_the_job_counts_once(core: PipelineContext, tmp_path: Path) -> None:
    upload = _upload(core, "carol", video_bytes(tmp_path, head_frames(8)))
    split_scan_into_batches(core, upload)
    first, second = _segment_messages(core)
    assert segment_batch(core, first).outcome == "segmented"
    assert segment_batch(core, first).outcome == "duplicate"
    assert core.store.require(upload.job_id).progress == (4, 8)
    assert segment_batch(core, second).started_assembly
    assert segment_batch(core, second).outcome == "duplicate"
    # One final assembly: the duplicates sent nothing.
    assert _assemble_messages(core) == [AssembleMessage(job_id=upload.job_id)]


def test_a_batch_redelivered_before_it_was_recorded_renders_the_same_part(
    core: PipelineContext, tmp_path: Path
) -> None:
    upload = _upload(core, "carol", video_bytes(tmp_path, head_frames(8, bleed_from=2)))
    split_scan_into_batches(core, upload)
    first, second = _segment_messages(core)
    assert segment_batch(core, first).outcome == "segmented"
    key = layout.part_key(upload.job_id, first.batch_id)
    part = core.get(key)
    # The worker wrote the part and died before the batch was recorded: undo the record.
    _forget_batch(core, upload.job_id, first.batch_id, first.count)
    assert segment_batch(core, first).outcome == "segmented"
    assert core.get(key) == part  # rendered again, bit for bit (the part is replaced whole, never mixed)
    assert core.store.require(upload.job_id).progress == (4, 8)
    assert segment_batch(core, second).started_assembly
    assert _assemble_messages(core) == [AssembleMessage(job_id=upload.job_id)]
    assert assemble_results(core, AssembleMessage(job_id=upload.job_id)).outcome == "done"
    report = json.loads(core.get(core.store.require(upload.job_id).results["report"]))
    assert len(report["slices"]) == 8 and len(_mask_keys(core, upload.job_id)) == 8


def test_a_duplicate_final_message_during_assembly_does_nothing_and_done_is_counted_once(
    core: PipelineContext, tmp_path: Path
) -> None:
    upload = _upload(core, "dave", video_bytes(tmp_path, head_frames(4, bleed_from=2)))
    split_scan_into_batches(core, upload)
    for message in _segment_messages(core):
        segment_batch(core, message)
    final = AssembleMessage(job_id=upload.job_id)
    # The first delivery holds the assembly (it is still writing); its duplicate arrives meanwhile.
    assert core.store.claim_assembly(upload.job_id, "first-delivery", lease_seconds=300)
    duplicate = assemble_results(core, final, claim=AssemblyClaim("duplicate-delivery", 300))
    assert duplicate.outcome == StageOutcome.DUPLICATE
    assert core.store.require(upload.job_id).state == JobState.ASSEMBLING
    assert _result_keys(core, upload.job_id) == []  # the duplicate wrote nothing
    # The holder (or its own redelivery after a crash) finishes, once.
    assert assemble_results(core, final, claim=AssemblyClaim("first-delivery", 300)).outcome == StageOutcome.DONE
    written = {
        key: core.s3.head_object(Bucket=core.config.bucket, Key=key)["ETag"]
        for key in _result_keys(core, upload.job_id)
    }
    late = assemble_results(core, final, claim=AssemblyClaim("duplicate-delivery", 300))
    assert late.outcome == StageOutcome.DUPLICATE
    assert {
        key: core.s3.head_object(Bucket=core.config.bucket, Key=key)["ETag"]
        for key in _result_keys(core, upload.job_id)
    } == written


def test_a_batch_rendered_again_writes_each_mask_once(core: PipelineContext, tmp_path: Path) -> None:
    """With bucket versioning (as template.yaml configures it), a rewrite would show as a second version."""
    core.s3.put_bucket_versioning(Bucket=core.config.bucket, VersioningConfiguration={"Status": "Enabled"})
    upload = _upload(core, "frank", video_bytes(tmp_path, head_frames(8, bleed_from=2)))
    split_scan_into_batches(core, upload)
    first, second = _segment_messages(core)
    for _ in range(3):  # a worker that dies after writing, before the batch is recorded, twice
        assert segment_batch(core, first).outcome == StageOutcome.SEGMENTED
        _forget_batch(core, upload.job_id, first.batch_id, first.count)
    segment_batch(core, first)
    segment_batch(core, second)
    assert assemble_results(core, AssembleMessage(job_id=upload.job_id)).outcome == StageOutcome.DONE
    versions = core.s3.list_object_versions(Bucket=core.config.bucket, Prefix=f"results/{upload.job_id}/")
    keys = [v["Key"] for v in versions.get("Versions", [])]
    # 8 masks, 8 frames, overlay, report, contact sheet: one version each
    assert len(keys) == len(set(keys)) == 8 + 8 + 3


def test_the_assembly_writes_the_slice_files_a_batch_left_unwritten(core: PipelineContext, tmp_path: Path) -> None:
    """A batch segmented by a version that left its masks to the assembly (a deploy while jobs run)."""
    upload = _upload(core, "gina", video_bytes(tmp_path, head_frames(8, bleed_from=2)))
    messages = _run_to_assembly(core, upload)
    missing = [layout.mask_key(upload.job_id, i) for i in messages[0].slice_ids]
    missing += [layout.slice_frame_key(upload.job_id, i) for i in messages[0].slice_ids]
    core.s3.delete_objects(Bucket=core.config.bucket, Delete={"Objects": [{"Key": k} for k in missing]})
    assert assemble_results(core, AssembleMessage(job_id=upload.job_id)).outcome == StageOutcome.DONE
    assert _mask_keys(core, upload.job_id) == {layout.mask_key(upload.job_id, f"{i:04d}") for i in range(8)}
    assert all(core.get(key) for key in missing)
    # The message of that version (it named the batch) is read as the final one: nothing left to do.
    old = AssembleMessage.from_json(json.dumps({"job_id": upload.job_id, "batch_id": messages[0].batch_id}))
    assert assemble_results(core, old).outcome == StageOutcome.DUPLICATE


def _forget_batch(ctx: PipelineContext, job_id: str, batch_id: str, count: int) -> None:
    """Undo a batch's record, as if its worker died after writing it and before recording it."""
    ctx.store.client.update_item(
        TableName=ctx.config.table,
        Key={"job_id": {"S": job_id}},
        UpdateExpression="DELETE done_batches :b ADD done_slices :minus",
        ExpressionAttributeValues={":b": {"SS": [batch_id]}, ":minus": {"N": str(-count)}},
    )


def test_an_expired_assembly_claim_can_be_taken_over(core: PipelineContext, tmp_path: Path) -> None:
    upload = _upload(core, "erin", video_bytes(tmp_path, head_frames(4, bleed_from=2)))
    split_scan_into_batches(core, upload)
    for message in _segment_messages(core):
        segment_batch(core, message)
    assert core.store.claim_assembly(upload.job_id, "crashed", lease_seconds=-1)  # its lease is over
    result = assemble_results(core, AssembleMessage(job_id=upload.job_id), claim=AssemblyClaim("rescuer", 300))
    assert result.outcome == StageOutcome.DONE


def _result_keys(ctx: PipelineContext, job_id: str) -> list[str]:
    listed = ctx.s3.list_objects_v2(Bucket=ctx.config.bucket, Prefix=f"results/{job_id}/")
    # The assembly's own results: the per-slice masks and frames are the segment stage's.
    keys = (o["Key"] for o in listed.get("Contents", []))
    return sorted(k for k in keys if "/masks/" not in k and "/frames/" not in k)


def test_a_split_that_died_after_recording_resumes_from_the_manifest(core: PipelineContext, tmp_path: Path) -> None:
    upload = _upload(core, "carol", video_bytes(tmp_path, head_frames(5)))
    split_scan_into_batches(core, upload)
    receive_all(core, core.config.segment_queue_url)  # the messages were lost with the crashed run...
    core.store.client.update_item(  # ...which got as far as SPLIT
        TableName=core.config.table,
        Key={"job_id": {"S": upload.job_id}},
        UpdateExpression="SET #s = :split",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":split": {"S": "SPLIT"}},
    )
    assert split_scan_into_batches(core, upload).outcome == "split"
    assert len(_segment_messages(core)) == 2
    assert core.store.require(upload.job_id).state == JobState.SEGMENTING


def test_a_redelivery_repairs_an_assembly_that_was_never_enqueued(core: PipelineContext, tmp_path: Path) -> None:
    upload = _upload(core, "carol", video_bytes(tmp_path, head_frames(4)))
    split_scan_into_batches(core, upload)
    (message,) = _segment_messages(core)
    # The worker recorded the batch and died before the transition to ASSEMBLING.
    frames_done = core.store.mark_batch_done(upload.job_id, message.batch_id, message.count)
    assert frames_done is not None and frames_done.state == JobState.SEGMENTING
    result = segment_batch(core, message)
    assert result.outcome == "duplicate" and result.started_assembly
    assert len(receive_all(core, core.config.assemble_queue_url)) == 1

    # Died after ASSEMBLING but before the send: re-sent, but only once the winner is surely gone.
    core.store.client.update_item(
        TableName=core.config.table, Key={"job_id": {"S": upload.job_id}}, UpdateExpression="REMOVE assembly_enqueued"
    )
    assert not segment_batch(core, message).started_assembly
    now = core.clock()
    core.clock = lambda: now + 120
    assert segment_batch(core, message).started_assembly
    assert len(receive_all(core, core.config.assemble_queue_url)) == 1


def test_mirror_failure_is_recorded_and_the_s3_results_stay(core: PipelineContext, tmp_path: Path) -> None:
    class Unreachable:
        def upload(self, path: str, data: bytes, content_type: str, timeout: float = 10.0) -> None:
            raise ConnectionError("firebase storage is unreachable")

    core.mirror = Unreachable()
    upload = _upload(core, "dave", video_bytes(tmp_path, head_frames(4)))
    _run_to_assembly(core, upload)
    result = assemble_results(core, AssembleMessage(job_id=upload.job_id))
    assert result.outcome == "done" and "unreachable" in (result.mirror_error or "")
    job = core.store.require(upload.job_id)
    assert job.state == JobState.DONE and "after 2 attempts" in (job.mirror_error or "")
    assert job.mirror_prefix == f"users/dave/scans/{upload.job_id}/"
    assert core.get(job.results["overlay"])[4:8] == b"ftyp"
    # The copy is not given up: it waits for the mirror function's retries (tests/pipeline/test_mirror_retry.py).
    assert (job.mirror_state, job.mirror_attempts) == (MirrorState.PENDING, 1)
    deadline = time.monotonic() + 30  # the message is delayed (the first retry's backoff)
    queued: list[dict[str, object]] = []
    while not queued and time.monotonic() < deadline:
        queued = receive_all(core, core.config.mirror_queue_url, wait=1.0)
    assert [json.loads(str(m["Body"])) for m in queued] == [{"job_id": upload.job_id}]


def test_a_model_change_between_batches_retries_the_job_once_then_fails_it_with_a_reason(
    core: PipelineContext, tmp_path: Path
) -> None:
    upload = _upload(core, "carol", video_bytes(tmp_path, head_frames(6)))

    def swap_model_of_one_batch() -> None:
        key = layout.part_key(upload.job_id, "b0001")
        part = BatchPart.decode(core.get(key))
        changed = ResponseAttributes("ichseg-unet", "2.0.0", 0.4, 0.5, part.attributes.slice_probabilities)
        core.put(key, dataclasses.replace(part, attributes=changed).encode())

    _run_to_assembly(core, upload)
    swap_model_of_one_batch()
    assert assemble_results(core, AssembleMessage(job_id=upload.job_id)).outcome == StageOutcome.RETRIED
    job = core.store.require(upload.job_id)
    assert (job.state, job.generation, job.error_code) == (JobState.RECEIVED, 1, None)  # runs again, on the new model
    assert len(receive_all(core, core.config.ingest_queue_url)) == 1  # the upload's event, sent again

    _run_to_assembly(core, upload)  # the second attempt is caught by a swap too: a real outage
    swap_model_of_one_batch()
    assert assemble_results(core, AssembleMessage(job_id=upload.job_id, generation=1)).outcome == "failed"
    job = core.store.require(upload.job_id)
    assert job.state == JobState.FAILED and job.error_code == "model_changed" and "2.0.0" in (job.error_reason or "")
    assert "resubmit" in (job.error_reason or "")


def test_a_small_video_of_huge_frames_is_refused_before_any_frame_is_decoded(
    core: PipelineContext, tmp_path: Path
) -> None:
    """80 frames of 3000x2500 in a few KB: refused from the stream header, nothing decoded."""
    import tracemalloc

    from tests.scan_fixtures import encode_video

    data = encode_video(tmp_path / "huge.mp4", np.zeros((80, 2500, 3000), np.uint8), "mp4", "libx264", "yuv420p")
    assert data.stat().st_size < 200_000
    upload = _upload(core, "carol", data.read_bytes())
    tracemalloc.start()
    try:
        assert split_scan_into_batches(core, upload).outcome == StageOutcome.REJECTED
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 80 * 2500 * 3000 / 20  # the decoded scan would be 600 MB; clients and the upload stay far below
    job = core.store.require(upload.job_id)
    assert (
        job.state == JobState.FAILED
        and job.error_code == "too_large"
        and "pixels per slice" in (job.error_reason or "")
    )


def test_slices_too_large_for_one_request_fail_with_a_scan_error(core: PipelineContext) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2600, 2600), np.uint8)).save(buffer, format="PNG")
    upload = _upload(core, "carol", buffer.getvalue())
    assert split_scan_into_batches(core, upload).outcome == "rejected"
    job = core.store.require(upload.job_id)
    assert (
        job.state == JobState.FAILED
        and job.error_code == "too_large"
        and "pixels per slice" in (job.error_reason or "")
    )


def test_a_stage_that_keeps_failing_fails_its_job_on_the_last_delivery(core: PipelineContext) -> None:
    ticket = create_scan(core, "erin", "video/mp4")
    key = layout.upload_key("erin", ticket.job_id)
    missing = UploadRef.from_object(core.config.bucket, key, "etag", 1)  # the object is not there
    for attempt in (1, 2):
        with pytest.raises(Exception, match="NoSuchKey"):
            split_scan_into_batches(core, missing, receive_count=attempt)
        assert core.store.require(ticket.job_id).state == JobState.RECEIVED
    with pytest.raises(Exception, match="NoSuchKey"):
        split_scan_into_batches(core, missing, receive_count=3)
    job = core.store.require(ticket.job_id)
    assert job.state == JobState.FAILED and job.error_code == "split_failed"
    assert "dead-letter" in (job.error_reason or "")


def test_the_watchdog_fails_jobs_past_their_deadline_and_only_those(core: PipelineContext, tmp_path: Path) -> None:
    never_uploaded = create_scan(core, "frank", "video/mp4").job_id
    upload = _upload(core, "frank", video_bytes(tmp_path, head_frames(4)))
    split_scan_into_batches(core, upload)
    assert fail_overdue_jobs(core).failed == ()
    now = core.clock()
    core.clock = lambda: now + core.config.upload_url_seconds + core.config.job_deadline_seconds + 1
    result = fail_overdue_jobs(core)
    assert set(result.failed) == {never_uploaded, upload.job_id}
    stuck = core.store.require(upload.job_id)
    assert stuck.error_code == "deadline_exceeded" and "SEGMENTING, 0/4 slices" in (stuck.error_reason or "")
    assert core.store.require(never_uploaded).error_reason == "no upload arrived before the deadline"
    assert fail_overdue_jobs(core).failed == ()


def test_an_upload_under_another_users_job_id_is_ignored(core: PipelineContext, tmp_path: Path) -> None:
    ticket = create_scan(core, "grace", "video/mp4")
    key = layout.upload_key("mallory", ticket.job_id)
    core.s3.put_object(Bucket=core.config.bucket, Key=key, Body=video_bytes(tmp_path, head_frames(2)))
    upload = UploadRef.from_object(core.config.bucket, key, "etag", 1)
    assert split_scan_into_batches(core, upload).outcome == "foreign"
    job = core.store.require(ticket.job_id)
    assert job.state == JobState.RECEIVED and job.owner == "grace" and job.source == JobSource.APP


def test_an_upload_over_the_size_limit_is_refused_before_it_is_downloaded(
    core: PipelineContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICHSEG_LIMIT_MAX_BYTES", "1000")
    ticket = create_scan(core, "carol", "video/mp4")
    key = layout.upload_key("carol", ticket.job_id)  # never written: the split must not try to read it
    oversized = UploadRef.from_object(core.config.bucket, key, "e", 5000)
    assert split_scan_into_batches(core, oversized).outcome == "rejected"
    job = core.store.require(ticket.job_id)
    assert job.state == JobState.FAILED and job.error_code == "too_large" and "limit is" in (job.error_reason or "")


def test_a_done_hospital_job_is_announced_on_the_delivery_queue_and_an_app_job_is_not(
    core: PipelineContext, tmp_path: Path
) -> None:
    """The DICOM gateway learns of a DONE ingest job from the delivery queue (sent just before DONE)."""
    queue = core.sqs.create_queue(QueueName=f"{core.config.table}-delivery")["QueueUrl"]
    ctx = dataclasses.replace(core, config=dataclasses.replace(core.config, delivery_queue_url=queue))
    data = video_bytes(tmp_path, head_frames(3))
    key = layout.gateway_ingest_key("SITEA", hashlib.sha256(data).hexdigest())
    etag = ctx.s3.put_object(Bucket=ctx.config.bucket, Key=key, Body=data)["ETag"]
    hospital = UploadRef.from_object(ctx.config.bucket, key, etag, len(data))
    app = _upload(ctx, "dave", data)
    for upload in (hospital, app):
        _run_to_assembly(ctx, upload)
        [final] = _assemble_messages(ctx)
        assert assemble_results(ctx, final).outcome == "done"
    assert [json.loads(m["Body"]) for m in receive_all(ctx, queue)] == [{"job_id": hospital.job_id}]
    assert hospital.job_id == layout.ingest_job_id(key, "any etag")  # the key alone names the job


def _work_keys(ctx: PipelineContext, job_id: str) -> list[str]:
    listed = ctx.s3.list_objects_v2(Bucket=ctx.config.bucket, Prefix=layout.WORK_PREFIX + job_id)
    return [o["Key"] for o in listed.get("Contents", [])]


def test_a_deleted_jobs_upload_event_delivered_again_does_not_bring_it_back(
    core: PipelineContext, tmp_path: Path
) -> None:
    upload = _upload(core, "ivan", b"this is not a scan at all" * 10)
    assert split_scan_into_batches(core, upload).outcome == StageOutcome.REJECTED
    delete_scan(core, "ivan", upload.job_id)
    # The same S3 event again (SQS is at-least-once), on its queue's last delivery: consumed, not
    # raised (no retries into the dead-letter queue), and nothing is created.
    last = core.config.max_receive_count
    assert split_scan_into_batches(core, upload, receive_count=last).outcome == StageOutcome.DELETED
    # Even with a scan back at the key (the presigned POST was still valid): still deleted, nothing split.
    data = video_bytes(tmp_path, head_frames(4))
    core.s3.put_object(Bucket=core.config.bucket, Key=upload.key, Body=data)
    again = dataclasses.replace(upload, size=len(data))
    assert split_scan_into_batches(core, again, receive_count=1).outcome == StageOutcome.DELETED
    assert core.store.get(upload.job_id) is None
    with pytest.raises(JobDeleted):
        core.store.require(upload.job_id)
    with pytest.raises(ApiError) as refused:
        scan_status(core, "ivan", upload.job_id)
    assert refused.value.status == 404
    assert list_scans(core, "ivan").scans == []
    assert _work_keys(core, upload.job_id) == []
    assert receive_all(core, core.config.segment_queue_url, wait=0.3) == []
    # The object is left for the uploads/ lifecycle rule (the split may only read uploads).
    assert core.s3.head_object(Bucket=core.config.bucket, Key=upload.key)["ContentLength"] == len(data)


def test_stale_segment_and_assemble_messages_of_a_deleted_job_are_consumed(
    core: PipelineContext, tmp_path: Path
) -> None:
    upload = _upload(core, "judy", video_bytes(tmp_path, head_frames(8)))
    split_scan_into_batches(core, upload)
    first, second = _segment_messages(core)
    segment_batch(core, first)
    segment_batch(core, second)
    [final] = _assemble_messages(core)
    assert assemble_results(core, final).outcome == StageOutcome.DONE
    delete_scan(core, "judy", upload.job_id)
    # Late copies of every message (SQS is at-least-once), even on their last delivery: nothing to
    # do, nothing raised (no retries into the dead-letter queues), nothing written.
    last = core.config.max_receive_count
    assert segment_batch(core, first, receive_count=last).outcome == StageOutcome.DELETED
    assert assemble_results(core, final, receive_count=last).outcome == StageOutcome.DELETED
    assert core.store.get(upload.job_id) is None and _work_keys(core, upload.job_id) == []
    assert receive_all(core, core.config.assemble_queue_url, wait=0.3) == []


def test_an_app_upload_for_a_job_the_api_never_created_is_refused(core: PipelineContext, tmp_path: Path) -> None:
    job_id = layout.new_job_id()  # well formed, never given out by the API
    key = layout.upload_key("mallory", job_id)
    data = video_bytes(tmp_path, head_frames(4))
    etag = core.s3.put_object(Bucket=core.config.bucket, Key=key, Body=data)["ETag"]
    stray = UploadRef.from_object(core.config.bucket, key, etag, len(data))
    for attempt in (1, core.config.max_receive_count):
        assert split_scan_into_batches(core, stray, receive_count=attempt).outcome == StageOutcome.UNKNOWN
    assert core.store.get(job_id) is None
    assert list_scans(core, "mallory").scans == []
    assert _work_keys(core, job_id) == []
    assert receive_all(core, core.config.segment_queue_url, wait=0.3) == []


def _killed_split_attempt(ctx: PipelineContext, upload: UploadRef, receive_count: int) -> None:
    """What a split killed mid-decode (the OOM killer, the time limit) leaves behind: its attempt
    noted on the row as started, and nothing else (no except clause, no finally ever ran)."""
    from ichseg.pipeline.failures import attempt_noted
    from ichseg.pipeline.jobs import Stage

    attempt_noted(ctx, upload.job_id, Stage.SPLIT, receive_count).__enter__()


def test_a_split_killed_on_every_delivery_fails_its_job_saying_so(core: PipelineContext, tmp_path: Path) -> None:
    from ichseg.pipeline.failures import AttemptsDied
    from ichseg.pipeline.jobs import Stage

    upload = _upload(core, "judy", video_bytes(tmp_path, head_frames(4)))
    for delivery in range(1, core.config.max_receive_count):
        _killed_split_attempt(core, upload, delivery)
    attempts = core.store.attempts(upload.job_id, Stage.SPLIT)
    assert attempts is not None and attempts.running and attempts.died == core.config.max_receive_count - 2

    # The last delivery: every earlier one died, so the job fails with the true reason, not "stuck".
    with pytest.raises(AttemptsDied):
        split_scan_into_batches(core, upload, receive_count=core.config.max_receive_count)
    job = core.store.require(upload.job_id)
    killed = core.config.max_receive_count - 1
    assert job.state == JobState.FAILED and job.error_code == "split_failed"
    assert f"ran out of memory or was killed {killed} time(s)" in (job.error_reason or "")
    assert receive_all(core, core.config.segment_queue_url, wait=0.3) == []


def test_a_split_killed_once_is_counted_and_the_next_delivery_splits(core: PipelineContext, tmp_path: Path) -> None:
    from ichseg.pipeline.jobs import Stage

    upload = _upload(core, "judy", video_bytes(tmp_path, head_frames(4)))
    _killed_split_attempt(core, upload, 1)
    assert split_scan_into_batches(core, upload, receive_count=2).outcome == StageOutcome.SPLIT
    attempts = core.store.attempts(upload.job_id, Stage.SPLIT)
    assert attempts is not None and not attempts.running and attempts.died == 1
    assert core.store.require(upload.job_id).state == JobState.SEGMENTING


def test_the_watchdog_names_a_split_that_was_killed_rather_than_stuck(core: PipelineContext, tmp_path: Path) -> None:
    upload = _upload(core, "judy", video_bytes(tmp_path, head_frames(4)))
    core.store.mark_received(upload.job_id, core.config.job_deadline_seconds)  # the killed split got this far
    _killed_split_attempt(core, upload, 1)
    finished = _upload(core, "judy", video_bytes(tmp_path, head_frames(4)))
    assert split_scan_into_batches(core, finished).outcome == StageOutcome.SPLIT
    now = core.clock()
    core.clock = lambda: now + core.config.upload_url_seconds + core.config.job_deadline_seconds + 1
    assert set(fail_overdue_jobs(core).failed) == {upload.job_id, finished.job_id}
    killed = core.store.require(upload.job_id)
    assert killed.error_code == "deadline_exceeded"
    assert "the split ran out of memory or was killed 1 time(s)" in (killed.error_reason or "")
    # A split that ended (here: SEGMENTING, never segmented) is stuck for another reason.
    assert "stuck in SEGMENTING" in (core.store.require(finished.job_id).error_reason or "")


def test_a_dicom_split_stores_the_readers_headers_for_the_seg(core: PipelineContext, tmp_path: Path) -> None:
    from ichseg.limits import ScanLimits
    from ichseg.pipeline.messages import ScanManifest
    from ichseg.writers.dicom_seg import capture_headers
    from tests.scan_fixtures import dicom_bytes, dicom_series, zip_files

    series = dicom_series(12, rows=64, cols=64, step_mm=5.0, attributes={"ConvolutionKernel": "STANDARD"})
    archive = zip_files(tmp_path / "s.zip", {f"{i}.dcm": dicom_bytes(ds) for i, ds in enumerate(series)})
    upload = _upload(core, "judy", archive.read_bytes())
    assert split_scan_into_batches(core, upload).outcome == StageOutcome.SPLIT
    stored = json.loads(core.get(layout.dicom_headers_key(upload.job_id)))
    manifest = ScanManifest.from_json(core.get(layout.manifest_key(upload.job_id)))
    assert manifest.dicom is not None and manifest.dicom.seg_unavailable is None
    assert stored == capture_headers(archive.read_bytes(), manifest.dicom.series, ScanLimits())
    assert len(stored) == 12 and all("7FE00010" not in h["dataset"] for h in stored)


def test_the_assembly_reads_the_scan_with_the_head_paired_with_the_endpoint_s_model(
    core: PipelineContext, tiny_model: Path, tmp_path: Path
) -> None:
    from ichseg.inference import OnnxSegmenter, read_in_context, segment_scan
    from ichseg.model_file import read_metadata
    from ichseg.readers import read_scan
    from ichseg.scan_context import ScanHead, slice_features
    from tests.onnx_fixtures import pair_scan_head

    head_path = pair_scan_head(tmp_path / "head.onnx", read_metadata(tiny_model))
    ctx = dataclasses.replace(core, config=dataclasses.replace(core.config, scan_head_path=str(head_path)))
    data = video_bytes(tmp_path, head_frames(9, bleed_from=5))
    upload = _upload(ctx, "carol", data)
    _run_to_assembly(ctx, upload)
    assert assemble_results(ctx, _assemble_messages(ctx)[-1]).outcome == "done"
    report = json.loads(ctx.get(f"results/{upload.job_id}/report.json"))

    head = ScanHead(head_path)
    parts = [BatchPart.decode(ctx.get(layout.part_key(upload.job_id, f"b000{i}"))) for i in range(3)]
    attributes = [p.attributes for p in parts]
    features = slice_features(
        np.array([q for a in attributes for q in a.slice_probabilities]),
        np.array([row for a in attributes for row in a.subtype_probabilities]),
        np.concatenate([p.outlined for p in parts]),
        np.concatenate([p.peaks for p in parts]),
    )
    context = head(features)
    assert report["scan_model"] == {"name": head.metadata.name, "version": head.metadata.version}
    assert report["hemorrhage_probability"] == round(context.scan_probability, 4)
    assert report["thresholds"]["scan"] == head.metadata.scan_threshold
    assert report["finding"] == ("Hemorrhage detected" if context.detected else "Normal")
    assert [s["context_probability"] for s in report["slices"]] == [
        round(float(q), 4) for q in context.slice_probabilities
    ]
    # The head reads what the mask head outlines before the gate: the blob adds to it on frames 5-8.
    outlined = np.concatenate([p.outlined for p in parts])
    assert outlined[5:].min() > outlined[:5].max()

    # `ichseg segment` gives the head the same answers (subtypes cross the wire to two decimals).
    segmenter = OnnxSegmenter(tiny_model)
    _, segmentation = segment_scan(read_scan(data), segmenter)
    local = read_in_context(segmentation, segmenter.metadata, head)
    assert local is not None and abs(local.scan_probability - context.scan_probability) <= 0.02
