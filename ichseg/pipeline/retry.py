"""Bring a FAILED job back: run it again from its stored upload, with its effects still once.

Three ways in, one function (:func:`retry_job`):

- ops: ``ichseg admin jobs retry <job_id>`` (``infrastructure/admin.py``);
- a dead-letter redrive: a stage that receives a message of its job's current generation for a job
  FAILED with a retryable code (:data:`RETRYABLE`) retries it instead of dropping the message;
- ``model_changed``: a job caught by a model swap is retried by itself, on the new model.

The last two are automatic, and so bounded: a job is retried by itself :data:`AUTOMATIC_RETRIES`
time(s) at most (a later sibling message of a batch that failed counts as a redrive too, and an
endpoint that is down would otherwise be retried for as long as messages arrive); ops retry as
often as they like.

A retry (1) checks the job is FAILED with a code a retry can change (an input refused for what it
is, ``bad_scan`` and the like, fails the same way again; ``force`` overrides), and that its upload
is still stored; (2) deletes what the failed attempt left under ``work/`` and ``results/`` (the
results are written once per object, so a stale part must not be mistaken for the new one); (3)
moves the job FAILED -> RECEIVED in the next *generation*, conditionally on the generation it
failed in, so two concurrent retries make one; (4) sends the upload's event to the ingest queue,
as S3 did the first time. Every stage message carries its generation, and a stage consumes one of
an earlier generation without work: the failed attempt's leftovers in the queues can touch nothing.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote_plus

from ichseg.errors import ErrorCode
from ichseg.pipeline import keys
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import Job, JobState

log = logging.getLogger("ichseg.pipeline.retry")

RETRYABLE = frozenset(
    {
        ErrorCode.SPLIT_FAILED,
        ErrorCode.SEGMENT_FAILED,
        ErrorCode.ASSEMBLE_FAILED,
        ErrorCode.DEADLINE_EXCEEDED,
        ErrorCode.MODEL_CHANGED,
    }
)
"""Failures of ichseg, not of the input: a retry can end them DONE."""
AUTOMATIC_RETRIES = 1
"""Retries a job gets by itself (a redriven message, a model swap); beyond, ops decide."""


class RetryRefused(ValueError):
    """The job cannot be retried; ``str()`` says why and what to do."""


def retryable(job: Job) -> bool:
    """FAILED for a reason of ichseg's own, not of the input."""
    return job.state == JobState.FAILED and job.error_code in RETRYABLE


def retries_by_itself(job: Job) -> bool:
    """Retryable, and not yet retried :data:`AUTOMATIC_RETRIES` times."""
    return retryable(job) and job.generation < AUTOMATIC_RETRIES


def retry_job(ctx: PipelineContext, job_id: str, *, force: bool = False) -> Job:
    """Run a FAILED job again from its upload (see the module doc); the job as it now stands."""
    config = ctx.config
    config.require("bucket", "ingest_queue_url")
    job = ctx.store.require(job_id)
    if job.state != JobState.FAILED:
        raise RetryRefused(f"job {job_id} is {job.state.value}: only a FAILED job is retried")
    if not retryable(job) and not force:
        raise RetryRefused(
            f"job {job_id} failed with {job.error_code}: the input itself was refused, and a retry would fail "
            "the same way (upload a corrected scan, or force the retry)"
        )
    from botocore.exceptions import ClientError

    try:
        head = ctx.s3.head_object(Bucket=config.bucket, Key=job.upload_key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise RetryRefused(
                f"job {job_id}'s upload is no longer stored ({job.upload_key}): upload it again"
            ) from None
        raise
    for prefix in (f"{keys.WORK_PREFIX}{job_id}/", keys.results_prefix(job_id)):
        ctx.delete_prefix(prefix)
    if not ctx.store.reset_for_retry(job_id, job.generation, config.job_deadline_seconds):
        raise RetryRefused(f"job {job_id} changed while it was being retried (retried by someone else?)")
    ctx.sqs.send_message(
        QueueUrl=config.ingest_queue_url, MessageBody=upload_event(config.bucket, job.upload_key, head)
    )
    ctx.metrics.add_metric("JobsRetried", "Count", 1)
    log.warning(
        "job retried from its upload: generation %d, after %s",
        job.generation + 1,
        job.error_code,
        extra={"job_id": job_id},
    )
    return ctx.store.require(job_id)


def upload_event(bucket: str, key: str, head: dict[str, object]) -> str:
    """The S3 ``ObjectCreated`` notification for a stored upload, as the split reads it from the
    ingest queue (the same ETag, so a hospital upload's job id, derived from it, is the same)."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Retry",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key), "eTag": str(head["ETag"]).strip('"'), "size": head["ContentLength"]},
        },
    }
    return json.dumps({"Records": [record]})
