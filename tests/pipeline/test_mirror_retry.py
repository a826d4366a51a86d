"""The Firebase copy's retries (issue 19, item 11), stage by stage: a copy that missed the assembly's
budget is queued, retried from the mirror queue into place, counted once, given up on the last
receive, and never made for a deleted job.

Real peers only: the ``core`` context's own bucket, table and mirror queue in the stack's moto, the
stack's Firebase Storage emulator for a working Firebase, and a refused port for one that is down.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from ichseg.pipeline import (
    AssembleMessage,
    UploadRef,
    assemble_results,
    create_scan,
    segment_batch,
    split_scan_into_batches,
)
from ichseg.pipeline import keys as layout
from ichseg.pipeline.api import delete_scan, scan_status
from ichseg.pipeline.assemble import MirrorFailed, retry_delay, retry_mirror
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import JobDeleted, JobState, MirrorState, StageOutcome
from ichseg.pipeline.messages import MirrorMessage, SegmentMessage
from ichseg.pipeline.mirror import FirebaseMirror
from infrastructure.local_stack import LocalStack
from tests.stack_fixtures import head_frames, receive_all, video_bytes

REFUSED = "http://127.0.0.1:9"
"""Nothing listens on the discard port: every upload is refused, as in a Firebase outage."""


def _firebase(ctx: PipelineContext, stack: LocalStack, host: str, monkeypatch: pytest.MonkeyPatch) -> FirebaseMirror:
    """The real mirror client for the Firebase Storage at ``host``. google-cloud-storage reads its
    endpoint from ``STORAGE_EMULATOR_HOST`` when the client is made (the local functions have it in
    their environment): set for this process while the client is made, which is at once."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    config = dataclasses.replace(
        ctx.config,
        firebase_bucket=stack.settings.firebase_bucket,
        firebase_project_id=stack.settings.firebase_project,
        storage_emulator_host=host,
    )
    mirror = FirebaseMirror(config)
    assert mirror.bucket is not None  # the client, bound to ``host`` from now on
    return mirror


def _done_with_copy_pending(
    ctx: PipelineContext, stack: LocalStack, uid: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """An app job taken to DONE while Firebase refuses every upload; its id."""
    ctx.mirror = _firebase(ctx, stack, REFUSED, monkeypatch)
    data = video_bytes(tmp_path, head_frames(5, bleed_from=2))
    ticket = create_scan(ctx, uid, "video/mp4", len(data))
    key = layout.upload_key(uid, ticket.job_id)
    etag = ctx.s3.put_object(Bucket=ctx.config.bucket, Key=key, Body=data)["ETag"]
    assert split_scan_into_batches(ctx, UploadRef.from_object(ctx.config.bucket, key, etag, len(data))).outcome
    for message in receive_all(ctx, ctx.config.segment_queue_url):
        segment_batch(ctx, SegmentMessage.from_json(message["Body"]))
    receive_all(ctx, ctx.config.assemble_queue_url)  # the batches' mask messages: the final assembly writes all
    assert assemble_results(ctx, AssembleMessage(job_id=ticket.job_id)).outcome == StageOutcome.DONE
    return ticket.job_id


def _receive_one(ctx: PipelineContext, timeout: float = 30.0) -> dict[str, Any]:
    """The next message on the core mirror queue (left there: its receipt handle is what a retry gets)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = ctx.sqs.receive_message(
            QueueUrl=ctx.config.mirror_queue_url, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
        ).get("Messages", [])
        if messages:
            return dict(messages[0])
    raise AssertionError(f"no mirror message within {timeout:.0f} s")


def test_a_copy_that_missed_its_budget_is_queued_then_retried_into_place_once(
    core: PipelineContext, stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _done_with_copy_pending(core, stack, "mia", tmp_path, monkeypatch)
    job = core.store.require(job_id)
    assert job.state == JobState.DONE  # the S3 results are the record: DONE whatever Firebase does
    assert (job.mirror_state, job.mirror_attempts) == (MirrorState.PENDING, 1)
    assert "Firebase Storage failed after 2 attempts" in (job.mirror_error or "")
    status = scan_status(core, "mia", job_id)
    assert (
        status.results and status.results.overlay and status.mirror and status.mirror.state == "PENDING"
    )  # the app uses the S3 links
    message = _receive_one(core)
    assert json.loads(message["Body"]) == {"job_id": job_id}
    assert receive_all(core, core.config.mirror_queue_url, wait=1.0) == []  # one message, no more

    core.mirror = _firebase(core, stack, stack.storage_url, monkeypatch)  # Firebase is back
    result = retry_mirror(core, MirrorMessage(job_id=job_id), 1, message["ReceiptHandle"])
    assert (result.outcome, result.attempts) == (StageOutcome.MIRRORED, 2)
    job = core.store.require(job_id)
    assert (job.state, job.mirror_state, job.mirror_attempts, job.mirror_error) == (
        JobState.DONE,
        MirrorState.MIRRORED,
        2,
        None,
    )
    prefix = layout.mirror_prefix("mia", job_id)
    mirrored = {o["name"] for o in stack.inspect.firebase_objects(prefix)}
    assert mirrored == {prefix + "overlay.mp4", prefix + "report.json"}
    assert stack.inspect.firebase_download(prefix + "overlay.mp4") == core.get(job.results["overlay"])
    assert stack.inspect.firebase_download(prefix + "report.json") == core.get(job.results["report"])
    mirror = scan_status(core, "mia", job_id).mirror
    assert mirror is not None and (mirror.state, mirror.attempts, mirror.error) == ("MIRRORED", 2, None)

    # A duplicate message after MIRRORED: nothing uploaded, nothing counted, the row unchanged.
    before = core.store.require(job_id)
    duplicate = retry_mirror(core, MirrorMessage(job_id=job_id), 1)
    assert (duplicate.outcome, duplicate.attempts) == (StageOutcome.DUPLICATE, 2)
    assert core.store.require(job_id) == before


def test_a_failed_retry_raises_backs_off_and_the_last_receive_gives_the_copy_up(
    core: PipelineContext, stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _done_with_copy_pending(core, stack, "noa", tmp_path, monkeypatch)
    core.config = dataclasses.replace(core.config, mirror_backoff_seconds=300)
    message = _receive_one(core)

    with pytest.raises(MirrorFailed, match="retry 1"):
        retry_mirror(core, MirrorMessage(job_id=job_id), 1, message["ReceiptHandle"])
    job = core.store.require(job_id)
    assert (job.state, job.mirror_state, job.mirror_attempts) == (JobState.DONE, MirrorState.PENDING, 2)
    assert "(retry 1)" in (job.mirror_error or "")
    # The failed receive set its own backoff (600 s after the first): the message stays hidden.
    assert retry_delay(core.config, 1) == 600
    assert core.sqs.receive_message(QueueUrl=core.config.mirror_queue_url, WaitTimeSeconds=1).get("Messages") is None

    last = core.config.max_receive_count
    with pytest.raises(MirrorFailed, match="the last"):
        retry_mirror(core, MirrorMessage(job_id=job_id), last, message["ReceiptHandle"])
    job = core.store.require(job_id)
    assert (job.state, job.mirror_state, job.mirror_attempts) == (JobState.DONE, MirrorState.FAILED, 3)
    assert f"(retry {last}, the last)" in (job.mirror_error or "") and "Firebase Storage" in (job.mirror_error or "")
    failed = scan_status(core, "noa", job_id).mirror
    assert failed is not None and failed.state == "FAILED"
    # ... and made it visible again at once, so SQS's next receive moves it to the dead-letter queue.
    assert json.loads(_receive_one(core)["Body"]) == {"job_id": job_id}

    # Redriven from the dead-letter queue once Firebase is back, the copy is still made.
    core.mirror = _firebase(core, stack, stack.storage_url, monkeypatch)
    assert retry_mirror(core, MirrorMessage(job_id=job_id), 1).outcome == StageOutcome.MIRRORED
    assert core.store.require(job_id).mirror_state == MirrorState.MIRRORED


def test_a_deleted_jobs_mirror_message_is_consumed_and_uploads_nothing(
    core: PipelineContext, stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _done_with_copy_pending(core, stack, "oli", tmp_path, monkeypatch)
    core.mirror = _firebase(core, stack, stack.storage_url, monkeypatch)
    delete_scan(core, "oli", job_id)  # the row becomes a tombstone
    result = retry_mirror(core, MirrorMessage(job_id=job_id), 1)  # returns: the handler reports no failure
    assert result.outcome == StageOutcome.DELETED
    assert stack.inspect.firebase_objects(layout.mirror_prefix("oli", job_id)) == []
    with pytest.raises(JobDeleted):  # still a tombstone: nothing was written back
        core.store.require(job_id)


def test_without_a_mirror_queue_a_missed_copy_is_given_up_at_once(
    core: PipelineContext, stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    core.config = dataclasses.replace(core.config, mirror_queue_url="")
    job_id = _done_with_copy_pending(core, stack, "pia", tmp_path, monkeypatch)
    job = core.store.require(job_id)
    assert (job.state, job.mirror_state, job.mirror_attempts) == (JobState.DONE, MirrorState.FAILED, 1)
