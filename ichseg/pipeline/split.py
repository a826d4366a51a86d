"""Split: an uploaded scan -> windowed frame batches in S3 -> one segment message per batch.

Idempotent at every step, because S3 events and SQS deliveries are at-least-once:

1. the job row is created if the upload event is the first news of it (hospital ingest), or found
   (the API created it); a job already past SPLIT means this is a duplicate: nothing to do;
2. the upload is decoded with the scan library; a :class:`~ichseg.errors.ScanError` fails the job
   with the library's message and consumes the event (the file will not get better);
3. frames go to ``work/{job}/frames/`` (same bytes on a rerun), then RECEIVED -> SPLIT records the
   totals; a job found in SPLIT (an earlier run died after this point) resumes here;
4. the batch messages are sent (a duplicate send is absorbed by the segment stage's done-set),
   then SPLIT -> SEGMENTING.

Anything else that goes wrong (S3, DynamoDB, SQS trouble) raises: the event stays on the ingest
queue, is retried, and on its last delivery fails the job and lands in the dead-letter queue. An
accepted upload is never silently dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ichseg.endpoint_protocol import CONTEXT_SLICES, encode_slices
from ichseg.errors import ScanError, ScanTooLargeError
from ichseg.limits import ScanLimits
from ichseg.pipeline import keys
from ichseg.pipeline.config import REQUEST_BYTES_BUDGET
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.failures import fail_job, last_attempt_fails_job
from ichseg.pipeline.jobs import JobState
from ichseg.pipeline.keys import UploadRef
from ichseg.pipeline.messages import ScanManifest, SegmentMessage, plan_batches
from ichseg.readers import read_scan
from ichseg.windowing import window_by_name, windowed_slices

log = logging.getLogger("ichseg.pipeline.split")

STAGE = "split"


@dataclass(frozen=True)
class SplitResult:
    """What the split did with one upload event."""

    job_id: str
    outcome: str
    """``split`` (batches enqueued), ``duplicate`` (already past SPLIT), ``rejected`` (bad scan:
    job FAILED), ``foreign`` (the job id belongs to another owner)."""
    slices: int = 0
    batches: int = 0
    seconds: float = 0.0


def split_scan_into_batches(ctx: PipelineContext, upload: UploadRef, receive_count: int = 1) -> SplitResult:
    """Turn one uploaded object into frame batches and segment messages (see the module doc)."""
    with last_attempt_fails_job(
        ctx, upload.job_id, STAGE, receive_count, source=upload.source, owner=upload.owner, upload_key=upload.key
    ):
        return _split(ctx, upload)


def _split(ctx: PipelineContext, upload: UploadRef) -> SplitResult:
    started = time.perf_counter()
    config = ctx.config
    config.require("bucket", "segment_queue_url")
    job, _ = ctx.store.create(upload.job_id, upload.source, upload.owner, upload.key, config.job_deadline_seconds)
    if job.owner != upload.owner:
        # Only the API's presigned POST writes under uploads/{uid}/{job}; a mismatch means a key
        # not made by it. Never let one user's object touch another user's job.
        log.error("upload %s does not belong to job %s's owner; ignored", upload.key, job.job_id)
        return SplitResult(job.job_id, "foreign")
    if job.state not in (JobState.RECEIVED, JobState.SPLIT):
        log.info("duplicate upload event: job is already %s", job.state.value)
        ctx.metrics.add_metric("DuplicateEvents", "Count", 1)
        return SplitResult(job.job_id, "duplicate")

    if job.state == JobState.RECEIVED:
        ctx.store.mark_received(job.job_id, config.job_deadline_seconds)
        try:
            manifest = _write_frames(ctx, upload)
        except ScanError as exc:
            fail_job(ctx, job.job_id, exc.code, str(exc), STAGE)
            return SplitResult(job.job_id, "rejected", seconds=time.perf_counter() - started)
        ctx.store.mark_split(job.job_id, len(manifest.batches), manifest.num_slices, manifest.summary())
    else:  # an earlier run wrote everything but died before (or while) enqueuing: resume
        manifest = ScanManifest.from_json(ctx.get(keys.manifest_key(job.job_id)))

    _enqueue(ctx, manifest)
    ctx.store.mark_segmenting(job.job_id)
    seconds = time.perf_counter() - started
    log.info("split %d slices into %d batches in %.2f s", manifest.num_slices, len(manifest.batches), seconds)
    ctx.metrics.add_metric("Frames", "Count", manifest.num_slices)
    ctx.metrics.add_metric("Batches", "Count", len(manifest.batches))
    return SplitResult(job.job_id, "split", manifest.num_slices, len(manifest.batches), seconds)


def _write_frames(ctx: PipelineContext, upload: UploadRef) -> ScanManifest:
    """Download, decode, window and store the scan in batches; ScanError for anything not a scan."""
    limits = ScanLimits.from_env()
    if upload.size > limits.max_bytes:  # the event says how big it is: no need to download it first
        raise ScanTooLargeError(
            f"upload is {upload.size / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB"
        )
    data = ctx.s3.get_object(Bucket=upload.bucket, Key=upload.key)["Body"].read()
    scan = read_scan(data, limits)
    slices = windowed_slices(scan, window_by_name(ctx.config.window))
    height, width = scan.original_size
    if height * width * (1 + 2 * CONTEXT_SLICES) > REQUEST_BYTES_BUDGET:  # one slice and its context
        raise ScanTooLargeError(
            f"slices of {width}x{height} pixels are too large to send to the model (6 MB per request); "
            "export the scan at a smaller size"
        )
    batches = plan_batches(scan.num_slices, ctx.config.slices_per_request(height, width), CONTEXT_SLICES)
    for batch in batches:
        # Each batch's object carries its context slices: the segment stage needs nothing else.
        ctx.put(keys.frames_key(upload.job_id, batch.batch_id), encode_slices(slices[batch.stored]))
    dicom = None
    if scan.dicom is not None:
        dicom = _store_dicom_headers(ctx, upload.job_id, data, scan.dicom, limits)
    manifest = ScanManifest(
        job_id=upload.job_id,
        format=scan.format,
        slice_ids=scan.slice_ids,
        height=height,
        width=width,
        hu=scan.hu,
        window=ctx.config.window,
        batches=batches,
        pixel_spacing_mm=scan.pixel_spacing_mm,
        slice_thickness_mm=scan.slice_thickness_mm,
        dicom=dicom,
    )
    ctx.put(keys.manifest_key(upload.job_id), manifest.to_json().encode(), "application/json")
    return manifest


def _store_dicom_headers(ctx: PipelineContext, job_id: str, data: bytes, series: object, limits: ScanLimits) -> dict:
    """Keep the source headers for the DICOM SEG; a SEG problem is reported, never fatal to the job."""
    from dataclasses import asdict

    from ichseg.pipeline.dicom_seg import SegUnavailable, capture_headers, headers_to_json

    ref = asdict(series)  # type: ignore[call-overload]
    try:
        headers = capture_headers(data, series, limits)  # type: ignore[arg-type]
    except SegUnavailable as exc:
        log.warning("no DICOM SEG possible: %s", exc)
        return {**ref, "seg_unavailable": str(exc)}
    ctx.put(keys.dicom_headers_key(job_id), headers_to_json(headers), "application/json")
    return ref


def _enqueue(ctx: PipelineContext, manifest: ScanManifest) -> None:
    """One message per batch, sent ten at a time (SQS's batch limit); failures raise."""
    messages = [SegmentMessage.for_batch(manifest.job_id, batch) for batch in manifest.batches]
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        response = ctx.sqs.send_message_batch(
            QueueUrl=ctx.config.segment_queue_url,
            Entries=[{"Id": m.batch_id, "MessageBody": m.to_json()} for m in chunk],
        )
        if response.get("Failed"):
            raise RuntimeError(f"SQS refused {len(response['Failed'])} segment message(s): {response['Failed'][:2]}")
