"""Split: an uploaded scan -> windowed frame batches in S3 -> one segment message per batch.

Idempotent at every step, because S3 events and SQS deliveries are at-least-once:

1. a hospital upload's job row is created (the event is the first news of it), an app upload's is
   found: only the API creates app jobs, so an app key naming no job (one the API never created)
   or a deleted job (a tombstone, :mod:`ichseg.pipeline.jobs`) is refused: logged, counted
   (``UploadsRefused``) and consumed, since no retry can make the job appear. The object stays
   where it is for the bucket's ``uploads/`` lifecycle rule to expire: this function may only read
   uploads, and whoever could write it there can write it again. A job already past SPLIT means
   this event is a duplicate: nothing to do;
2. the attempt is noted on the job's row (:func:`~ichseg.pipeline.failures.attempt_noted`: a
   split killed for its memory or time raises nothing, and the note is how the next delivery and
   the watchdog tell why the job stopped); the upload is decoded with the scan library, one zip
   member at a time, the DICOM headers for the SEG collected in the same pass (no second
   decompression); a :class:`~ichseg.errors.ScanError` fails the job with the library's message
   and consumes the event (the file will not get better);
3. the manifest goes to ``work/{job}/manifest.json`` (same bytes on a rerun), then RECEIVED ->
   SPLIT records the totals;
4. each batch's frames go to ``work/{job}/frames/`` and its segment message is sent right after
   (a few batches at a time), so the endpoint starts on the first batch while later ones are
   still being written; then SPLIT -> SEGMENTING. A job found in SPLIT (an earlier run died
   somewhere in this step) resumes here: the upload is decoded again, every batch's frames are
   written again (same bytes) and every message is sent again (a duplicate send is absorbed by
   the segment stage's done-set). A message is only ever sent once its frames are in S3.

Anything else that goes wrong (S3, DynamoDB, SQS trouble) raises: the event stays on the ingest
queue, is retried, and on its last delivery fails the job and lands in the dead-letter queue. An
accepted upload is never silently dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ichseg.endpoint_protocol import CONTEXT_SLICES, encode_slices
from ichseg.errors import ScanError, ScanTooLargeError
from ichseg.fitness import require_brain_window_ct
from ichseg.limits import ScanLimits
from ichseg.pipeline import keys
from ichseg.pipeline.config import REQUEST_BYTES_BUDGET
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.failures import attempt_noted, fail_job, last_attempt_fails_job
from ichseg.pipeline.jobs import Job, JobDeleted, JobNotFound, JobSource, JobState, Stage, StageOutcome
from ichseg.pipeline.keys import UploadRef
from ichseg.pipeline.messages import BatchRef, DicomSource, ScanManifest, SegmentMessage, plan_batches
from ichseg.readers import read_scan_and_headers
from ichseg.readers.archive import redact_member_names
from ichseg.scan import DicomSeriesRef, Scan
from ichseg.windowing import Window, apply_window, window_by_name, windowed_slices

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger("ichseg.pipeline.split")

STAGE = Stage.SPLIT
WRITERS = 2
"""Batches written and enqueued at once: enough to keep S3 busy without starving the endpoint
(which shares the machine in the local stack) of CPU."""


@dataclass(frozen=True)
class SplitResult:
    """What the split did with one upload event."""

    job_id: str
    outcome: StageOutcome
    """``split`` (batches enqueued), ``duplicate`` (already past SPLIT), ``rejected`` (bad scan:
    job FAILED), ``foreign`` (the job id belongs to another owner), ``unknown`` (no such app job)
    or ``deleted`` (its owner deleted the job)."""
    slices: int = 0
    batches: int = 0
    seconds: float = 0.0


def split_scan_into_batches(ctx: PipelineContext, upload: UploadRef, receive_count: int = 1) -> SplitResult:
    """Turn one uploaded object into frame batches and segment messages (see the module doc)."""
    with last_attempt_fails_job(
        ctx, upload.job_id, STAGE, receive_count, source=upload.source, owner=upload.owner, upload_key=upload.key
    ):
        return _split(ctx, upload, receive_count)


def _split(ctx: PipelineContext, upload: UploadRef, receive_count: int) -> SplitResult:
    started = time.perf_counter()
    config = ctx.config
    config.require("bucket", "segment_queue_url")
    try:
        job = _job_for_upload(ctx, upload)
    except JobNotFound as exc:
        return _refuse(ctx, upload, StageOutcome.DELETED if isinstance(exc, JobDeleted) else StageOutcome.UNKNOWN)
    if job.owner != upload.owner:
        # Only the API's presigned POST writes under uploads/{uid}/{job}; a mismatch means a key
        # not made by it. Never let one user's object touch another user's job.
        log.error("upload %s does not belong to job %s's owner; ignored", upload.key, job.job_id)
        return SplitResult(job.job_id, StageOutcome.FOREIGN)
    if job.state not in (JobState.RECEIVED, JobState.SPLIT):
        log.info("duplicate upload event: job is already %s", job.state.value)
        ctx.metrics.add_metric("DuplicateEvents", "Count", 1)
        return SplitResult(job.job_id, StageOutcome.DUPLICATE)

    # Noted before the heavy work: an attempt the OOM killer (or the time limit) ends never reaches
    # an except clause, so only the note it leaves behind can tell the next delivery and the
    # watchdog why the job did not move.
    with attempt_noted(
        ctx, job.job_id, STAGE, receive_count, source=upload.source, owner=upload.owner, upload_key=upload.key
    ):
        try:
            if job.state == JobState.RECEIVED:
                ctx.store.mark_received(job.job_id, config.job_deadline_seconds)
                manifest, slices = _decode(ctx, upload)
                ctx.store.mark_split(job.job_id, len(manifest.batches), manifest.num_slices, manifest.summary())
            else:  # an earlier run recorded the split but may have died before every batch was out: resume
                manifest = ScanManifest.from_json(ctx.get(keys.manifest_key(job.job_id)))
                slices = _read_slices(ctx, upload)[0].slices
        except ScanError as exc:
            fail_job(ctx, job.job_id, exc.code, str(exc), STAGE)
            return SplitResult(job.job_id, StageOutcome.REJECTED, seconds=time.perf_counter() - started)

        _store_and_enqueue(ctx, manifest, slices, job.generation)
        ctx.store.mark_segmenting(job.job_id)
    seconds = time.perf_counter() - started
    log.info("split %d slices into %d batches in %.2f s", manifest.num_slices, len(manifest.batches), seconds)
    ctx.metrics.add_metric("Frames", "Count", manifest.num_slices)
    ctx.metrics.add_metric("Batches", "Count", len(manifest.batches))
    return SplitResult(job.job_id, StageOutcome.SPLIT, manifest.num_slices, len(manifest.batches), seconds)


def _job_for_upload(ctx: PipelineContext, upload: UploadRef) -> Job:
    """The upload's job: created for a hospital upload, found for an app upload (only the API
    creates those); :class:`~ichseg.pipeline.jobs.JobNotFound` or its ``JobDeleted`` otherwise."""
    if upload.source == JobSource.INGEST:
        job, _ = ctx.store.create(
            upload.job_id, upload.source, upload.owner, upload.key, ctx.config.job_deadline_seconds
        )
        return job
    return ctx.store.require(upload.job_id)


def _refuse(ctx: PipelineContext, upload: UploadRef, outcome: StageOutcome) -> SplitResult:
    """Consume an upload event that names no job that may run (see the module doc, step 1)."""
    # The job id (random, chosen by the API) and the verdict: nothing read from the object.
    log.warning(
        "upload event refused: its key names %s job; the event is consumed and the object left to the lifecycle",
        "a deleted" if outcome == StageOutcome.DELETED else "no",
        extra={"job_id": upload.job_id, "outcome": outcome.value, "source": upload.source.value},
    )
    ctx.metrics.add_metric("UploadsRefused", "Count", 1)
    return SplitResult(upload.job_id, outcome)


def request_sized_limits(limits: ScanLimits) -> ScanLimits:
    """The limits with slices no larger than one endpoint request can carry (with their context):
    the readers check them from the file's headers, so an upload of huge frames is refused before a
    single frame is decoded (a few KB of video can declare gigabytes of pixels)."""
    request_pixels = REQUEST_BYTES_BUDGET // (1 + 2 * CONTEXT_SLICES)
    return dataclasses.replace(limits, max_pixels_per_slice=min(limits.max_pixels_per_slice, request_pixels))


WINDOW_CHUNK = 32
"""Slices windowed at a time: the uint8 output is allocated once and the float temporaries of the
windowing stay a few slices big instead of three copies of the volume."""


@dataclass(frozen=True)
class DecodedUpload:
    """An upload read and windowed for the endpoint."""

    slices: np.ndarray
    """(N, H, W) uint8, windowed."""
    scan: Scan
    dicom_headers: tuple[Dataset, ...]
    """DICOM: the source instances' headers in slice order, without pixel data (for the SEG)."""


def decode_upload(data: bytes, source: JobSource, limits: ScanLimits, window: str) -> DecodedUpload:
    """Read and window an upload's bytes as the split does; ScanError for anything not a scan.

    Memory: the upload, the scan's volume and its windowed copy, plus one DICOM instance or a
    chunk of slices at a time (``bench/split_memory_bench.py``).
    """
    try:
        read = read_scan_and_headers(data, limits)
    except ScanError as exc:
        if source != JobSource.INGEST:
            raise
        # The reason reaches the job record, logs and ops: never a hospital's member paths.
        raise type(exc)(redact_member_names(str(exc), data)) from exc
    require_brain_window_ct(read.scan)  # a clipped series is refused here, before any frame is stored
    return DecodedUpload(_windowed(read.scan, window_by_name(window)), read.scan, read.dicom_headers)


def _windowed(scan: Scan, window: Window) -> np.ndarray:
    if not scan.hu:
        return windowed_slices(scan, window)  # 8-bit already: no copy
    out = np.empty(scan.slices.shape, dtype=np.uint8)
    for start in range(0, scan.num_slices, WINDOW_CHUNK):
        out[start : start + WINDOW_CHUNK] = apply_window(scan.slices[start : start + WINDOW_CHUNK], window)
    return out


def _read_slices(ctx: PipelineContext, upload: UploadRef) -> tuple[DecodedUpload, bool]:
    """Download and decode the upload (its bytes are dropped once it is read); and whether it asks
    for the overlay series (a hospital upload's metadata, :data:`~ichseg.pipeline.keys.OVERLAY_SERIES_METADATA`)."""
    limits = request_sized_limits(ScanLimits.from_env())
    if upload.size > limits.max_bytes:  # the event says how big it is: no need to download it first
        raise ScanTooLargeError(
            f"upload is {upload.size / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB"
        )
    response = ctx.s3.get_object(Bucket=upload.bucket, Key=upload.key)
    data = response["Body"].read()
    overlay = (
        upload.source == JobSource.INGEST and response.get("Metadata", {}).get(keys.OVERLAY_SERIES_METADATA) == "yes"
    )
    return decode_upload(data, upload.source, limits, ctx.config.window), overlay


def _decode(ctx: PipelineContext, upload: UploadRef) -> tuple[ScanManifest, np.ndarray]:
    """Decode and window the scan, plan its batches and store the manifest; ScanError for anything not a scan."""
    decoded, overlay_series = _read_slices(ctx, upload)
    scan = decoded.scan
    height, width = scan.original_size
    if height * width * (1 + 2 * CONTEXT_SLICES) > REQUEST_BYTES_BUDGET:  # one slice and its context
        raise ScanTooLargeError(
            f"slices of {width}x{height} pixels are too large to send to the model (6 MB per request); "
            "export the scan at a smaller size"
        )
    batches = plan_batches(scan.num_slices, ctx.config.slices_per_request(height, width), CONTEXT_SLICES)
    dicom = None
    if scan.dicom is not None:
        dicom = _store_dicom_headers(ctx, upload.job_id, decoded.dicom_headers, scan.dicom, overlay_series)
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
        slice_extents_mm=scan.slice_extents_mm,
        series=scan.series,
    )
    ctx.put(keys.manifest_key(upload.job_id), manifest.to_json().encode(), "application/json")
    return manifest, decoded.slices


def _store_dicom_headers(
    ctx: PipelineContext, job_id: str, headers: Sequence[Dataset], series: DicomSeriesRef, overlay_series: bool
) -> DicomSource:
    """Keep the source headers the reader collected for the DICOM SEG (and the overlay series, when
    asked for); a SEG problem is reported, never fatal to the job."""
    from ichseg.writers.dicom_seg import SegUnavailable, headers_to_json, source_headers

    try:
        captured = source_headers(headers, series)
    except SegUnavailable as exc:
        log.warning("no DICOM SEG possible: %s", exc)
        return DicomSource(series, seg_unavailable=str(exc))
    ctx.put(keys.dicom_headers_key(job_id), headers_to_json(captured), "application/json")
    return DicomSource(series, overlay_series=overlay_series)


def _store_and_enqueue(ctx: PipelineContext, manifest: ScanManifest, slices: np.ndarray, generation: int) -> None:
    """Each batch's frames, then its segment message, ``WRITERS`` batches at a time; failures raise."""
    if len(slices) != manifest.num_slices:
        raise ValueError(f"the upload decodes to {len(slices)} slices; its manifest says {manifest.num_slices}")

    def store(batch: BatchRef) -> None:
        # Each batch's object carries its context slices: the segment stage needs nothing else.
        ctx.put(keys.frames_key(manifest.job_id, batch.batch_id), encode_slices(slices[batch.stored]))
        message = SegmentMessage.for_batch(manifest.job_id, batch, manifest.slice_ids, generation)
        ctx.sqs.send_message(QueueUrl=ctx.config.segment_queue_url, MessageBody=message.to_json())

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(store, manifest.batches))  # the first failure raises here
