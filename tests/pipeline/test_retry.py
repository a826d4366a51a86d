"""Retries that bring jobs back (issue 21, item 4): from the stored upload, in a new generation,
with the failed attempt's leftovers consumed without work and the job ending DONE once.

Real peers: the ``core`` context's bucket, table and queues in the stack's moto and the stack's
inference server; each stage is driven by hand, message by message, as the functions would.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

from ichseg.cli import main as ichseg_main
from ichseg.errors import ErrorCode
from ichseg.pipeline import AssembleMessage, UploadRef, assemble_results, create_scan, segment_batch
from ichseg.pipeline import keys as layout
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.failures import fail_job
from ichseg.pipeline.jobs import JobState, Stage, StageOutcome
from ichseg.pipeline.messages import SegmentMessage
from ichseg.pipeline.parts import BatchPart
from ichseg.pipeline.retry import RetryRefused, retry_job
from ichseg.pipeline.split import split_scan_into_batches
from infrastructure.local_stack import LocalStack
from tests.stack_fixtures import head_frames, receive_all, video_bytes


def _uploaded(ctx: PipelineContext, uid: str, tmp_path: Path, frames: int = 6) -> str:
    """An app job whose upload is stored and split (its segment messages on the queue); its id."""
    data = video_bytes(tmp_path, head_frames(frames, bleed_from=frames // 2))
    ticket = create_scan(ctx, uid, "video/mp4", len(data))
    key = layout.upload_key(uid, ticket.job_id)
    etag = ctx.s3.put_object(Bucket=ctx.config.bucket, Key=key, Body=data)["ETag"]
    assert split_scan_into_batches(ctx, UploadRef.from_object(ctx.config.bucket, key, etag, len(data))).outcome
    return ticket.job_id


def _split_from_ingest_queue(ctx: PipelineContext) -> None:
    """What the split function does with the retry's upload event (one S3 record)."""
    (message,) = receive_all(ctx, ctx.config.ingest_queue_url)
    (record,) = json.loads(message["Body"])["Records"]
    obj = record["s3"]["object"]
    upload = UploadRef.from_object(record["s3"]["bucket"]["name"], unquote_plus(obj["key"]), obj["eTag"], obj["size"])
    assert split_scan_into_batches(ctx, upload).outcome == StageOutcome.SPLIT


def _segment_all(ctx: PipelineContext) -> list[StageOutcome]:
    return [
        segment_batch(ctx, SegmentMessage.from_json(m["Body"])).outcome
        for m in receive_all(ctx, ctx.config.segment_queue_url)
    ]


def _assemble_all(ctx: PipelineContext) -> list[StageOutcome]:
    return [
        assemble_results(ctx, AssembleMessage.from_json(m["Body"])).outcome
        for m in receive_all(ctx, ctx.config.assemble_queue_url)
    ]


@pytest.fixture
def small_batches(core: PipelineContext) -> PipelineContext:
    """``core`` with two slices per batch: a 6-slice scan is three batches."""
    return dataclasses.replace(core, config=dataclasses.replace(core.config, batch_slices=2))


def test_a_failed_job_runs_again_from_its_upload_and_ends_done_once(
    small_batches: PipelineContext, tmp_path: Path
) -> None:
    ctx = small_batches
    job_id = _uploaded(ctx, "rita", tmp_path)
    first, *rest = receive_all(ctx, ctx.config.segment_queue_url)
    assert segment_batch(ctx, SegmentMessage.from_json(first["Body"])).outcome == StageOutcome.SEGMENTED
    # The endpoint then failed the job (the batch's last delivery); two batches' messages are still queued.
    assert fail_job(ctx, job_id, ErrorCode.SEGMENT_FAILED, "the endpoint answered 503 five times", Stage.SEGMENT)
    for message in rest:  # back on the queue, as SQS would still hold them
        ctx.sqs.send_message(QueueUrl=ctx.config.segment_queue_url, MessageBody=message["Body"])

    job = retry_job(ctx, job_id)
    assert (job.state, job.generation, job.error_code, job.done_batches) == (JobState.RECEIVED, 1, None, frozenset())
    assert not ctx.s3.list_objects_v2(Bucket=ctx.config.bucket, Prefix=f"work/{job_id}/").get("Contents")
    with pytest.raises(RetryRefused, match="only a FAILED job"):
        retry_job(ctx, job_id)  # a second retry of the same failure: nothing to do

    _split_from_ingest_queue(ctx)
    outcomes = _segment_all(ctx)
    assert outcomes.count(StageOutcome.STALE) == 2  # the first attempt's leftovers: consumed, no work
    assert outcomes.count(StageOutcome.SEGMENTED) == 3
    assemble = _assemble_all(ctx)
    assert assemble == [StageOutcome.DONE]  # the first attempt's batch wrote its masks itself: no message
    done = ctx.store.require(job_id)
    assert (done.state, done.generation, done.progress) == (JobState.DONE, 1, (6, 6))
    assert len(ctx.s3.list_objects_v2(Bucket=ctx.config.bucket, Prefix=f"results/{job_id}/masks/")["Contents"]) == 6


def test_input_failures_and_lost_uploads_are_not_retried(core: PipelineContext, tmp_path: Path) -> None:
    job_id = _uploaded(core, "sven", tmp_path, frames=3)
    assert fail_job(core, job_id, ErrorCode.BAD_SCAN, "not a head", Stage.SPLIT)
    with pytest.raises(RetryRefused, match="the input itself was refused"):
        retry_job(core, job_id)
    job = core.store.require(job_id)
    core.s3.delete_object(Bucket=core.config.bucket, Key=job.upload_key)
    with pytest.raises(RetryRefused, match="no longer stored"):
        retry_job(core, job_id, force=True)
    assert core.store.require(job_id).state == JobState.FAILED  # untouched
    assert not core.store.reset_for_retry(job_id, generation=1, deadline_seconds=60)  # not its generation


def test_a_redriven_message_reruns_its_failed_job_once_by_itself(core: PipelineContext, tmp_path: Path) -> None:
    job_id = _uploaded(core, "tove", tmp_path, frames=3)
    (message,) = receive_all(core, core.config.segment_queue_url)
    assert fail_job(core, job_id, ErrorCode.SEGMENT_FAILED, "endpoint down", Stage.SEGMENT)
    redriven = SegmentMessage.from_json(message["Body"])
    assert segment_batch(core, redriven).outcome == StageOutcome.RETRIED
    assert core.store.require(job_id).generation == 1
    _split_from_ingest_queue(core)
    (again,) = receive_all(core, core.config.segment_queue_url)
    # It fails again: a second redrive is left to ops (the job retries itself once).
    assert fail_job(core, job_id, ErrorCode.SEGMENT_FAILED, "endpoint still down", Stage.SEGMENT)
    assert segment_batch(core, SegmentMessage.from_json(again["Body"])).outcome == StageOutcome.SKIPPED
    assert segment_batch(core, redriven).outcome == StageOutcome.STALE
    assert core.store.require(job_id).state == JobState.FAILED
    assert receive_all(core, core.config.ingest_queue_url, wait=1.0) == []


def test_a_model_swap_mid_job_retries_it_on_the_new_model(small_batches: PipelineContext, tmp_path: Path) -> None:
    ctx = small_batches
    job_id = _uploaded(ctx, "uma", tmp_path)
    assert StageOutcome.SEGMENTED in _segment_all(ctx)
    # One batch was answered by another model version (a deploy landed between batches).
    key = layout.part_key(job_id, "b0001")
    part = BatchPart.decode(ctx.get(key))
    swapped = dataclasses.replace(part, attributes=dataclasses.replace(part.attributes, version="9.9.9"))
    ctx.s3.put_object(Bucket=ctx.config.bucket, Key=key, Body=swapped.encode())
    assert StageOutcome.RETRIED in _assemble_all(ctx)
    job = ctx.store.require(job_id)
    assert (job.state, job.generation) == (JobState.RECEIVED, 1)
    _split_from_ingest_queue(ctx)
    _segment_all(ctx)
    assert StageOutcome.DONE in _assemble_all(ctx)
    assert ctx.store.require(job_id).state == JobState.DONE


def test_ops_list_show_and_retry_jobs_from_the_command_line(
    core: PipelineContext,
    stack: LocalStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = _uploaded(core, "vera", tmp_path, frames=3)
    receive_all(core, core.config.segment_queue_url)
    assert fail_job(core, job_id, ErrorCode.DEADLINE_EXCEEDED, "no progress for 900 s", Stage.WATCHDOG)
    config = core.config
    environment = {
        "ICHSEG_TABLE": config.table,
        "ICHSEG_BUCKET": config.bucket,
        "ICHSEG_INGEST_QUEUE_URL": config.ingest_queue_url,
        "AWS_ENDPOINT_URL": stack.moto_url,  # the AWS APIs, here moto's
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    assert ichseg_main(["admin", "jobs", "list", "--state", "FAILED", "--source", "app", "--hours", "1"]) == 0
    (line,) = [row for row in capsys.readouterr().out.splitlines() if row.startswith(job_id)]
    assert line.split("\t")[1:3] == ["FAILED", "app"] and "deadline_exceeded" in line
    assert ichseg_main(["admin", "jobs", "list", "--source", "hospital"]) == 0
    assert job_id not in capsys.readouterr().out
    assert ichseg_main(["admin", "jobs", "show", job_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["error_code"], shown["generation"]) == ("FAILED", "deadline_exceeded", 0)
    assert ichseg_main(["admin", "jobs", "retry", job_id]) == 0
    assert "RECEIVED again (attempt 2)" in capsys.readouterr().out
    assert ichseg_main(["admin", "jobs", "retry", job_id]) == 1
    assert "only a FAILED job is retried" in capsys.readouterr().err
    assert ichseg_main(["admin", "jobs", "show", "0" * 32]) == 1
