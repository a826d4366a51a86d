"""Assemble: the results of a segmented scan, built batch by batch while the endpoint still works.

Two steps, so that almost nothing is left to do once the last batch is segmented:

1. **Render a batch** (:func:`ichseg.pipeline.parts.render_batch`, run by the segment stage the moment the endpoint
   answers, with the frames and probabilities still in memory): masks, overlays, the batch's
   H.264 video segment, contact-sheet thumbnails, mask PNGs and plain frame JPEGs. The segment
   stage writes the per-slice files at once (``results/{job}/masks/<slice id>.png`` and the plain
   windowed slice ``results/{job}/frames/<slice id>.jpg``, what the viewer draws its outline on;
   its IAM policy may write only those two prefixes of ``results/``), so masks appear while the job
   runs, and stores the rest with the endpoint's attributes as one object, the batch's
   :class:`BatchPart` (``work/{job}/parts/{batch}.npz``). One object per batch makes it atomic: a
   redelivered message that renders again replaces the whole part, never half of it, with the same
   content for the same endpoint answer; the per-slice files are written once (``If-None-Match``).
   A job that fails later keeps the files written: what counts is the job record, which lists
   results only once it is DONE.
2. **Final assembly** (:func:`assemble_results`, the job's message): the report from the
   parts' attributes and mask areas (:func:`ichseg.writers.report.report_from_areas`, the same
   document ``ichseg segment`` writes), the video segments joined without re-encoding, the contact
   sheet from the thumbnails, any per-slice file not written yet (none, unless a batch was
   segmented by an older version during a deploy), the DICOM SEG and SR for DICOM input; an app
   job's video and report are mirrored to Firebase Storage. Only then does the job become DONE
   (ASSEMBLING -> DONE is conditional, so a duplicate final message finds the job DONE and does
   nothing). A duplicate that arrives while the job is still ASSEMBLING finds the assembly claimed
   (:meth:`~ichseg.pipeline.jobs.JobStore.claim_assembly`, a lease as long as the function may run)
   and does nothing either: its twin is still in flight, and if that one crashes, SQS redelivers it
   and it takes its own claim again. So results are written, the job logged DONE and counted once.
3. **The mirror's retries** (:func:`retry_mirror`, the mirror function). The final assembly's copy
   to Firebase Storage has a budget (``ICHSEG_MIRROR_BUDGET_SECONDS``), so a Firebase outage never
   holds a job back from DONE. If the copy misses it, the assembly sends ``{"job_id"}`` to the mirror
   queue (with a delay: Firebase has just failed for a whole budget) and the job is DONE with its
   mirror PENDING; the app shows the presigned S3 links meanwhile. Each receive uploads the video and
   the report again, read back from ``results/``, under the same names (an upload replaces the
   object, so a retry after a half-done attempt leaves one copy, not two); a failure raises, so SQS
   redelivers after a backoff that doubles per receive, and the last receive marks the mirror FAILED
   (the message goes on to the alarmed dead-letter queue). The job stays DONE throughout: the S3
   results are the record. A duplicate message after MIRRORED, one for a deleted job (a tombstone)
   and one for a job that has no copy to make are consumed and change nothing.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ichseg.errors import ErrorCode
from ichseg.media_types import MIRRORED_FILES, media_type_of
from ichseg.model_metadata import ModelMetadata
from ichseg.pipeline import keys
from ichseg.pipeline.config import PipelineConfig
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.failures import fail_job, last_attempt_fails_job
from ichseg.pipeline.jobs import Job, JobDeleted, JobNotFound, JobSource, JobState, MirrorState, Stage, StageOutcome
from ichseg.pipeline.messages import AssembleMessage, MirrorMessage, ScanManifest
from ichseg.pipeline.mirror import MirrorFile, mirror_files
from ichseg.pipeline.parts import BatchPart, ModelChanged, model_of, result_files
from ichseg.pipeline.push import JobEnded, notify_job_ended
from ichseg.pipeline.retry import AUTOMATIC_RETRIES, retries_by_itself, retry_job
from ichseg.scan_context import load_scan_head, scan_context
from ichseg.writers.outputs import joined_contact_sheet, joined_video, report_json
from ichseg.writers.report import Report, headline, report_from_areas

log = logging.getLogger("ichseg.pipeline.assemble")

STAGE = Stage.ASSEMBLE
UPLOAD_THREADS = 8
"""S3 requests in flight at once when writing many small objects (masks)."""
MAX_MESSAGE_DELAY_SECONDS = 900
"""SQS's longest per-message delay."""
MAX_VISIBILITY_SECONDS = 43_200
"""SQS's longest visibility timeout (12 h): the mirror retries' backoff stops growing there."""


@dataclass(frozen=True)
class AssembleResult:
    job_id: str
    outcome: StageOutcome
    """``done``, ``duplicate`` (the job is not waiting for this any more) or ``failed`` (model
    changed mid-job)."""
    slices: int = 0
    seconds: float = 0.0
    end_to_end_seconds: float | None = None
    mirror_error: str | None = None


# ------------------------------------------------------------------------------ the stage


@dataclass(frozen=True)
class AssemblyClaim:
    """Who runs a final assembly (the SQS message id: its redelivery is the same claimant) and how
    long it may take (the function's remaining time)."""

    claimant: str = field(default_factory=lambda: uuid.uuid4().hex)
    lease_seconds: float = 900.0


def assemble_results(
    ctx: PipelineContext, message: AssembleMessage, receive_count: int = 1, claim: AssemblyClaim | None = None
) -> AssembleResult:
    """Write every result of a fully segmented job and mark it DONE (see the module doc)."""
    with last_attempt_fails_job(ctx, message.job_id, STAGE, receive_count):
        try:
            job = ctx.store.require(message.job_id)
            if message.generation != job.generation:  # the leftover of an attempt before a retry
                return AssembleResult(message.job_id, StageOutcome.STALE)
            if retries_by_itself(job):  # redriven from the dead-letter queue
                retry_job(ctx, job.job_id)
                return AssembleResult(message.job_id, StageOutcome.RETRIED)
            return _assemble(ctx, job, claim or AssemblyClaim())
        except JobDeleted:  # its owner deleted it while a message was queued: consumed, never retried
            log.info("assemble message for a deleted job: nothing to do")
            return AssembleResult(message.job_id, StageOutcome.DELETED)


def _assemble(ctx: PipelineContext, job: Job, claim: AssemblyClaim) -> AssembleResult:
    """Step 3: join the parts into the results, mirror, DONE (``job`` as just read: the claim below
    is the conditional write that settles any race)."""
    started = time.perf_counter()
    job_id = job.job_id
    if job.state != JobState.ASSEMBLING:
        log.info("assembly skipped: job is %s", job.state.value)
        return AssembleResult(job_id, StageOutcome.DUPLICATE)
    if not ctx.store.claim_assembly(job_id, claim.claimant, claim.lease_seconds):
        log.info("assembly skipped: another delivery of the job's message is assembling it")
        ctx.metrics.add_metric("DuplicateMessages", "Count", 1)
        return AssembleResult(job_id, StageOutcome.DUPLICATE)
    manifest = ScanManifest.from_json(ctx.get(keys.manifest_key(job_id)))
    parts = _load_parts(ctx, manifest)
    try:
        model = model_of([p.attributes for p in parts])
    except ModelChanged as exc:
        # Not the input's fault: the next attempt runs on the new model from its first batch. Once
        # by itself; a second swap during that attempt fails the job for ops to look at.
        retried = job.generation < AUTOMATIC_RETRIES
        fail_job(ctx, job_id, ErrorCode.MODEL_CHANGED, f"{exc}; {'retried' if retried else 'resubmit the scan'}", STAGE)
        if retried:
            retry_job(ctx, job_id)
            return AssembleResult(job_id, StageOutcome.RETRIED)
        return AssembleResult(job_id, StageOutcome.FAILED)
    attributes = [p.attributes for p in parts]
    slice_probabilities = np.array([q for a in attributes for q in a.slice_probabilities], dtype=np.float32)
    subtypes = (
        np.array([row for a in attributes for row in a.subtype_probabilities], dtype=np.float32)
        if model.subtypes
        else None
    )
    context = scan_context(
        load_scan_head(ctx.config.scan_head_path),
        model,
        slice_probabilities,
        subtypes,
        np.concatenate([p.outlined for p in parts]),
        np.concatenate([p.peaks for p in parts]),
    )
    report = report_from_areas(
        manifest.slice_ids,
        slice_probabilities,
        subtypes,
        np.concatenate([p.areas for p in parts]),
        model,
        manifest.pixel_spacing_mm,
        manifest.slice_thickness_mm,
        manifest.slice_extents_mm,
        manifest.series,
        context,
    )
    labels = [label for p in parts for label in p.labels]
    rendered = [p.rendered for p in parts]
    prefix = keys.results_prefix(job_id)
    results = {
        "overlay": prefix + "overlay.mp4",
        "report": prefix + "report.json",
        "contact_sheet": prefix + "contact_sheet.png",
        "masks": keys.masks_prefix(job_id),
        "frames": keys.slice_frames_prefix(job_id),
    }
    # The files are made and written side by side: joining the video and encoding the contact
    # sheet (both in C, outside the GIL) overlap with the S3 and Firebase requests on the way to DONE.
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        video = pool.submit(joined_video, rendered)
        sheet = pool.submit(joined_contact_sheet, rendered, labels)
        dicom = pool.submit(_dicom_seg, ctx, manifest, parts, model, report)
        # The segment stage wrote every batch's masks and frames before counting it done. Checked,
        # not assumed: a batch segmented by a version before that (in flight across a deploy)
        # gets its files here, so a DONE job has every slice's results whoever wrote them.
        written = set(_list_keys(ctx, keys.masks_prefix(job_id))) | set(
            _list_keys(ctx, keys.slice_frames_prefix(job_id))
        )
        files = {"report.json": report_json(report)}
        uploads = [
            pool.submit(_put, ctx, key, data)
            for part in parts
            for key, data in result_files(job_id, part).items()
            if key not in written
        ]
        uploads.append(pool.submit(_put, ctx, prefix + "report.json", files["report.json"]))
        files["overlay.mp4"] = video.result()
        uploads.append(pool.submit(_put, ctx, prefix + "overlay.mp4", files["overlay.mp4"]))
        mirrored = {name: files[name] for name in MIRRORED_FILES}
        mirror = pool.submit(_mirror, ctx, job, mirrored) if _mirrored(ctx, job) else None
        uploads.append(pool.submit(_put, ctx, prefix + "contact_sheet.png", sheet.result()))
        for name, data in dicom.result().items():  # seg.dcm, sr.dcm, overlay_series.zip: results by stem
            uploads.append(pool.submit(_put, ctx, prefix + name, data))
            results[Path(name).stem] = prefix + name
        for upload in uploads:
            upload.result()  # the first failed PUT raises: SQS redelivers, the assembly runs again
        mirror_prefix, mirror_error = mirror.result() if mirror is not None else (None, None)
    mirror_state = _mirror_outcome(ctx, job_id, mirror_prefix, mirror_error)

    if job.source == JobSource.INGEST and ctx.config.delivery_queue_url:
        # The DICOM gateway sends the SEG (and SR) back to the site's PACS. Sent before DONE so a
        # crash in between cannot lose it (the gateway retries a job not DONE yet); a duplicate
        # from a redelivered assembly is harmless (delivery is idempotent per job).
        ctx.sqs.send_message(QueueUrl=ctx.config.delivery_queue_url, MessageBody=json.dumps({"job_id": job_id}))
    if not ctx.store.mark_done(job_id, results, headline(report), mirror_prefix, mirror_error, mirror_state):
        # Only after a lease ran out mid-assembly: the other assembler finished first and counted it.
        log.info("job already DONE (a concurrent assembly finished it)")
        return AssembleResult(job_id, StageOutcome.DUPLICATE)
    seconds = time.perf_counter() - started
    created = job.stamps.get("created")
    end_to_end = ctx.clock() - created if created else None
    ctx.metrics.add_metric("JobsCompleted", "Count", 1)
    # Once: only the assembly whose conditional write made the job DONE gets here.
    notify_job_ended(ctx, job.source, job.owner, JobEnded(job_id, JobState.DONE, finding=report["finding"]))
    if end_to_end is not None:
        ctx.metrics.add_metric("EndToEndLatency", "Seconds", round(end_to_end, 3))
    log.info("job DONE: %s, %d slices, assembled in %.2f s", report["finding"], manifest.num_slices, seconds)
    return AssembleResult(job_id, StageOutcome.DONE, manifest.num_slices, seconds, end_to_end, mirror_error)


def _mirrored(ctx: PipelineContext, job: Job) -> bool:
    """App jobs are mirrored to Firebase Storage when a bucket is configured; hospital jobs never."""
    return job.source == JobSource.APP and bool(job.owner) and ctx.mirror is not None


def _mirror(ctx: PipelineContext, job: Job, files: dict[str, bytes]) -> tuple[str, str | None]:
    """Upload the video and the report to the owner's Firebase folder: (prefix, error or None)."""
    assert job.owner is not None  # _mirrored said so
    prefix = keys.mirror_prefix(job.owner, job.job_id)
    error = mirror_files(
        ctx.mirror,
        prefix,
        [MirrorFile(name, files[name], media_type_of(name)) for name in MIRRORED_FILES],
        attempts=ctx.config.mirror_attempts,
        sleep=ctx.sleep,
        budget_seconds=ctx.config.mirror_budget_seconds,
    )
    if error:
        ctx.metrics.add_metric("MirrorFailures", "Count", 1)
    return prefix, error


def _mirror_outcome(ctx: PipelineContext, job_id: str, prefix: str | None, error: str | None) -> MirrorState | None:
    """The mirror state the job is DONE with; a copy that missed its budget is queued for retries.

    Sent before the job is DONE, like the hospital delivery: a crash in between cannot lose it (the
    assembly runs again and sends another, which finds the first one's work done: MIRRORED). A
    message that arrives before the DONE write is retried later (:func:`retry_mirror`).
    """
    if prefix is None:
        return None  # no copy to make (not an app job, or no Firebase bucket)
    if error is None:
        return MirrorState.MIRRORED
    if not ctx.config.mirror_queue_url:
        return MirrorState.FAILED  # nowhere to retry from: given up at once, the reason on the job
    ctx.sqs.send_message(
        QueueUrl=ctx.config.mirror_queue_url,
        MessageBody=MirrorMessage(job_id=job_id).to_json(),
        DelaySeconds=min(MAX_MESSAGE_DELAY_SECONDS, int(ctx.config.mirror_backoff_seconds)),
    )
    return MirrorState.PENDING


def _load_parts(ctx: PipelineContext, manifest: ScanManifest) -> list[BatchPart]:
    """Every batch's part, in slice order, checked against the manifest."""
    job_id = manifest.job_id
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        parts = list(pool.map(lambda b: BatchPart.decode(ctx.get(keys.part_key(job_id, b.batch_id))), manifest.batches))
    for batch, part in zip(manifest.batches, parts, strict=True):
        expected = manifest.slice_ids[batch.start : batch.start + batch.count]
        if part.start != batch.start or part.slice_ids != expected:
            raise ValueError(
                f"batch {batch.batch_id}'s part holds slices {part.slice_ids[:3]}..., not {expected[:3]}..."
            )
    return parts


def _put(ctx: PipelineContext, key: str, data: bytes) -> None:
    """Write a result object once: a redelivered message finds it written and leaves it."""
    ctx.put_once(key, data, media_type_of(key))


def _list_keys(ctx: PipelineContext, prefix: str) -> list[str]:
    paginator = ctx.s3.get_paginator("list_objects_v2")
    return [
        o["Key"]
        for page in paginator.paginate(Bucket=ctx.config.bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    ]


def _dicom_seg(
    ctx: PipelineContext, manifest: ScanManifest, parts: Sequence[BatchPart], model: ModelMetadata, report: Report
) -> dict[str, bytes]:
    """The DICOM SEG and SR for DICOM input by file name (``seg.dcm``, ``sr.dcm``, and
    ``overlay_series.zip`` where the site asked for it); none for other input.

    Neither is fatal (:func:`ichseg.writers.dicom_results.dicom_results`): the job is DONE either way,
    with a warning for what is missing. Their UIDs come from the job id, so a re-run of the assembly
    makes the very same instances.
    """
    if manifest.dicom is None or manifest.dicom.seg_unavailable:
        return {}
    import cv2

    from ichseg.writers.dicom_results import dicom_results

    headers = json.loads(ctx.get(keys.dicom_headers_key(manifest.job_id)))
    # The masks come back from their PNGs (lossless), the one copy of them the parts keep.
    masks = np.stack(
        [
            cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
            for part in parts
            for png in part.rendered.mask_pngs
        ]
    )
    # The overlay series draws on the plain windowed slices the viewer shows (JPEG, quality 90).
    overlay_slices = (
        [
            cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
            for p in parts
            for jpeg in p.rendered.frame_jpegs
        ]
        if manifest.dicom.overlay_series
        else None
    )
    results = dicom_results(headers, masks, report, model.name, model.version, manifest.job_id, overlay_slices)
    if results.unavailable:
        log.warning(results.unavailable)
    return results.files


# ------------------------------------------------------------------------------ the mirror's retries


@dataclass(frozen=True)
class MirrorResult:
    job_id: str
    outcome: StageOutcome
    """``mirrored``, ``duplicate`` (already MIRRORED), ``deleted``, ``unknown`` or ``skipped`` (no
    copy to make): the message is consumed. A failed attempt raises instead (:class:`MirrorFailed`)."""
    attempts: int = 0
    """The job's mirror attempts so far (the assembly's included), when this one made the copy."""


class MirrorFailed(RuntimeError):
    """This attempt did not make the copy: recorded on the job; SQS redelivers after the backoff."""


class MirrorNotReady(RuntimeError):
    """The job is not DONE yet (the message overtook the assembly's DONE write): retried later."""


def retry_delay(config: PipelineConfig, receive_count: int) -> int:
    """Seconds before the next receive after the ``receive_count``-th one failed: the first retry waits
    ``mirror_backoff_seconds`` (the message's delay), each failed one doubles it, up to SQS's 12 h."""
    return int(min(MAX_VISIBILITY_SECONDS, config.mirror_backoff_seconds * 2**receive_count))


def retry_mirror(
    ctx: PipelineContext, message: MirrorMessage, receive_count: int = 1, receipt_handle: str | None = None
) -> MirrorResult:
    """Make a DONE job's Firebase copy that the assembly could not (step 4 of the module doc).

    ``receipt_handle`` (the SQS record's) lets a failed attempt set its own backoff: the message's
    visibility timeout, doubled per receive; on the queue's last receive (``ICHSEG_MAX_RECEIVE_COUNT``,
    the mirror queue's redrive count) the mirror is FAILED and the message made visible at once, so
    SQS moves it to the dead-letter queue.
    """
    job_id = message.job_id
    try:
        job = ctx.store.require(job_id)
    except JobDeleted:  # its owner deleted it while the message waited: consumed, nothing uploaded
        log.info("mirror message for a deleted job: nothing to do")
        return MirrorResult(job_id, StageOutcome.DELETED)
    except JobNotFound:
        log.warning("mirror message for an unknown job: nothing to do")
        return MirrorResult(job_id, StageOutcome.UNKNOWN)
    if job.state == JobState.FAILED or not _mirrored(ctx, job):
        log.info("mirror message for a job without a copy to make (%s, %s)", job.state.value, job.source.value)
        return MirrorResult(job_id, StageOutcome.SKIPPED)
    if job.state != JobState.DONE:
        _retry_later(ctx, receipt_handle, receive_count)
        raise MirrorNotReady(f"job {job_id} is {job.state.value}, not DONE yet")
    if job.mirror_state == MirrorState.MIRRORED:
        ctx.metrics.add_metric("DuplicateMessages", "Count", 1)
        return MirrorResult(job_id, StageOutcome.DUPLICATE, job.mirror_attempts)
    assert job.owner is not None  # _mirrored said so
    prefix = job.mirror_prefix or keys.mirror_prefix(job.owner, job_id)
    try:
        # The same names as the assembly's attempt: an upload replaces its object, so whatever an
        # earlier attempt left half done, one copy of each file is what remains.
        files = [
            MirrorFile(name, ctx.get(job.results[Path(name).stem]), media_type_of(name)) for name in MIRRORED_FILES
        ]
        error = mirror_files(
            ctx.mirror,
            prefix,
            files,
            attempts=ctx.config.mirror_attempts,
            sleep=ctx.sleep,
            budget_seconds=ctx.config.mirror_budget_seconds,
        )
    except Exception as exc:  # reading results/ failed (throttled, or deleted under us): a failed attempt
        error = f"reading the results for the Firebase copy failed: {type(exc).__name__}: {exc}"[:1000]
    if error is None:
        return _mirrored_now(ctx, job, prefix)
    last = receive_count >= ctx.config.max_receive_count
    reason = f"{error} (retry {receive_count}{', the last' if last else ''})"
    recorded = ctx.store.fail_mirror(job_id, reason) if last else ctx.store.record_mirror_failure(job_id, reason)
    if not recorded:  # the row moved on meanwhile: deleted (consumed) or MIRRORED by a twin message
        settled = _settled(ctx, job_id)
        if settled is not None:
            return settled
    if last and recorded:
        ctx.metrics.add_metric("MirrorsGivenUp", "Count", 1)
    log.warning("Firebase copy of job %s failed (retry %d): %s", job_id, receive_count, error)
    _retry_later(ctx, receipt_handle, receive_count)
    raise MirrorFailed(reason)


def _mirrored_now(ctx: PipelineContext, job: Job, prefix: str) -> MirrorResult:
    """The upload worked: MIRRORED, counted once; a job deleted during the upload loses the copy again."""
    if ctx.store.mark_mirrored(job.job_id):
        ctx.metrics.add_metric("MirrorsRecovered", "Count", 1)
        log.info("Firebase copy made on retry (attempt %d)", job.mirror_attempts + 1)
        return MirrorResult(job.job_id, StageOutcome.MIRRORED, job.mirror_attempts + 1)
    settled = _settled(ctx, job.job_id)
    if settled is not None and settled.outcome == StageOutcome.DELETED:
        # Deleted while the files went up: its owner asked for no copy, so the one just made goes too.
        ctx.mirror.delete(prefix)
        return settled
    return settled or MirrorResult(job.job_id, StageOutcome.DUPLICATE)


def _settled(ctx: PipelineContext, job_id: str) -> MirrorResult | None:
    """Why a conditional mirror write found the row changed: deleted, or MIRRORED by a twin; None if neither."""
    current = ctx.store.get(job_id)
    if current is None:
        return MirrorResult(job_id, StageOutcome.DELETED)
    if current.mirror_state == MirrorState.MIRRORED:
        return MirrorResult(job_id, StageOutcome.DUPLICATE, current.mirror_attempts)
    return None


def _retry_later(ctx: PipelineContext, receipt_handle: str | None, receive_count: int) -> None:
    """Set when SQS shows the message again: after the backoff, or at once on the last receive (the
    next receive then moves it to the dead-letter queue)."""
    if receipt_handle is None or not ctx.config.mirror_queue_url:
        return  # the queue's own visibility timeout applies
    last = receive_count >= ctx.config.max_receive_count
    try:
        ctx.sqs.change_message_visibility(
            QueueUrl=ctx.config.mirror_queue_url,
            ReceiptHandle=receipt_handle,
            VisibilityTimeout=0 if last else retry_delay(ctx.config, receive_count),
        )
    except Exception as exc:  # an expired receipt handle: the queue's visibility timeout applies instead
        log.warning("could not set the mirror message's backoff: %s", exc)
