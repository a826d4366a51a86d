"""Segment: one batch of frames -> the endpoint -> the batch's rendered part in S3 -> batch marked done.

With the frames and the endpoint's probabilities in memory, the stage also does the batch's share
of the assembly (:func:`ichseg.pipeline.parts.render_batch`: masks, the batch's video segment,
thumbnails, mask PNGs, plain frames). It writes the batch's per-slice results (its masks and
frames, ``results/{job}/masks|frames/``, each written once) and stores the rest as one object, the
part, so that the final assembly only joins parts. Both come before marking the batch done, so a
batch counted as done always has its results and its part; a message redelivered before that point
renders again, finds the results written and replaces the part as a whole.

The batch is marked done by adding its id to the job's string set under a condition that it is
not there yet (so a redelivered message never counts twice). The update returns the job as it now
is; if that shows every batch done, the caller tries SPLIT/SEGMENTING -> ASSEMBLING, a conditional
transition exactly one caller can win, and only the winner enqueues assembly.

A redelivered message whose batch is already done does no work, but it does repair the one gap a
crash can leave: a job whose batches are all done but whose assembly was never enqueued.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ichseg.endpoint_protocol import RequestAttributes, decode_slices, trim_context
from ichseg.pipeline import keys
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.failures import last_attempt_fails_job
from ichseg.pipeline.jobs import Job, JobDeleted, JobNotFound, JobState, Stage, StageOutcome
from ichseg.pipeline.messages import AssembleMessage, SegmentMessage
from ichseg.pipeline.retry import retries_by_itself, retry_job

log = logging.getLogger("ichseg.pipeline.segment")

STAGE = Stage.SEGMENT
ASSEMBLY_RESEND_AFTER_SECONDS = 60.0
"""A job in ASSEMBLING without a recorded enqueue is repaired only after this long, so a message
racing the winner (between its transition and its send) does not send a second copy."""


@dataclass(frozen=True)
class SegmentResult:
    """What happened to one segment message."""

    job_id: str
    batch_id: str
    outcome: StageOutcome
    """``segmented``, ``duplicate`` (batch already done) or ``skipped`` (job already ended)."""
    slices: int = 0
    endpoint_seconds: float = 0.0
    endpoint_attempts: int = 0
    started_assembly: bool = False


def segment_batch(ctx: PipelineContext, message: SegmentMessage, receive_count: int = 1) -> SegmentResult:
    """Segment one batch (see the module doc); raises to have SQS retry, fails the job on the last try."""
    with last_attempt_fails_job(ctx, message.job_id, STAGE, receive_count):
        return _segment(ctx, message)


def _segment(ctx: PipelineContext, message: SegmentMessage) -> SegmentResult:
    try:
        job = ctx.store.require(message.job_id)
    except JobDeleted:  # its owner deleted it while a message was queued: consumed, never retried
        log.info("segment message for a deleted job: nothing to do")
        return SegmentResult(message.job_id, message.batch_id, StageOutcome.DELETED)
    except JobNotFound:
        raise JobNotFound(f"segment message for unknown job {message.job_id}") from None
    if message.generation != job.generation:  # the leftover of an attempt before a retry
        return SegmentResult(job.job_id, message.batch_id, StageOutcome.STALE)
    if retries_by_itself(job):  # redriven from the dead-letter queue: run the job again
        retry_job(ctx, job.job_id)
        return SegmentResult(job.job_id, message.batch_id, StageOutcome.RETRIED)
    if job.state.terminal:
        return SegmentResult(job.job_id, message.batch_id, StageOutcome.SKIPPED)
    if message.batch_id in job.done_batches or job.state == JobState.ASSEMBLING:
        ctx.metrics.add_metric("DuplicateMessages", "Count", 1)
        return SegmentResult(
            job.job_id, message.batch_id, StageOutcome.DUPLICATE, started_assembly=_repair_assembly(ctx, job)
        )

    frames = decode_slices(ctx.get(message.frames_key))
    before, after = message.context_before, message.context_after
    if len(frames) != message.count + before + after:
        raise ValueError(
            f"{message.frames_key} holds {len(frames)} slices, the message says {message.count} "
            f"plus {before} + {after} context"
        )
    # The endpoint reads the context slices as neighbours only and answers for the batch's own.
    result = ctx.endpoint.segment(frames, RequestAttributes(before, after))
    ctx.metrics.add_metric("EndpointLatency", "Milliseconds", round(result.seconds * 1000, 1))
    # Only the batch's own slices are kept: the context slices belong to the neighbouring batches.
    # The attributes are the CustomAttributes as received (model identity, thresholds,
    # probabilities of the batch's slices); the part keeps them beside what was rendered from them.
    from ichseg.pipeline.parts import in_background, render_batch, result_files  # PyAV, OpenCV: on first use

    def render_and_write() -> bytes:
        part = render_batch(
            trim_context(frames, before, after),
            result.probabilities_u8,
            result.attributes,
            message.start,
            message.slice_ids,
            ctx.config.video_fps,
        )
        # The batch's masks and plain frames go to results/ now, once each (the viewer and the API
        # list them while the rest of the scan is segmented); the part keeps what the final
        # assembly joins. Nothing is read back to be copied.
        ctx.put_once_all(result_files(job.job_id, part))
        return part.encode()

    # At a lower priority than the endpoint segmenting the next batches.
    ctx.put(keys.part_key(job.job_id, message.batch_id), in_background(render_and_write))
    ctx.metrics.add_metric("FramesSegmented", "Count", message.count)

    updated = ctx.store.mark_batch_done(job.job_id, message.batch_id, message.count)
    if updated is None:  # a concurrent copy of this message recorded it first
        latest = ctx.store.require(job.job_id)
        return SegmentResult(
            job.job_id, message.batch_id, StageOutcome.DUPLICATE, started_assembly=_repair_assembly(ctx, latest)
        )
    done, total = len(updated.done_batches), updated.total_batches or 0
    log.info("batch %s done (%d/%d batches)", message.batch_id, done, total)
    started = done == total and start_assembly(ctx, job)
    return SegmentResult(
        job.job_id, message.batch_id, StageOutcome.SEGMENTED, message.count, result.seconds, result.attempts, started
    )


def start_assembly(ctx: PipelineContext, job: Job) -> bool:
    """Move the job to ASSEMBLING and enqueue its assembly, if this caller wins the transition."""
    if not ctx.store.mark_assembling(job.job_id):
        return False
    _send_assembly(ctx, job)
    return True


def _send_assembly(ctx: PipelineContext, job: Job) -> None:
    ctx.config.require("assemble_queue_url")
    message = AssembleMessage(job_id=job.job_id, generation=job.generation)
    ctx.sqs.send_message(QueueUrl=ctx.config.assemble_queue_url, MessageBody=message.to_json())
    ctx.store.mark_assembly_enqueued(job.job_id)
    log.info("all batches done; assembly enqueued")


def _repair_assembly(ctx: PipelineContext, job: Job) -> bool:
    """Finish what a crashed predecessor left: start or re-send the assembly if it is missing."""
    if job.state in (JobState.SPLIT, JobState.SEGMENTING):
        if job.total_batches and len(job.done_batches) == job.total_batches:
            return start_assembly(ctx, job)
        return False
    if job.state == JobState.ASSEMBLING and not job.assembly_enqueued:
        since = ctx.clock() - job.stamps.get("assembling", ctx.clock())
        if since >= ASSEMBLY_RESEND_AFTER_SECONDS:
            log.warning("job has been ASSEMBLING for %.0f s with no assembly enqueued; re-sending", since)
            _send_assembly(ctx, job)
            return True
    return False
