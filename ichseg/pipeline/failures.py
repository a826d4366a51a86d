"""Failure is a state: how jobs end FAILED, with a reason a person can read.

Three ways in, one function (:func:`fail_job`) for all of them:

- the upload is not a readable scan: the split fails the job with the scan library's message and
  consumes the event (retrying cannot fix a file);
- a message keeps failing (endpoint down, a poisoned message): each failure raises so SQS
  redelivers it; on the delivery that is the queue's last (``ApproximateReceiveCount`` reaches
  ``maxReceiveCount``) :func:`last_attempt_fails_job` fails the job before re-raising, and SQS then
  moves the message to the dead-letter queue for an operator to inspect or redrive;
- a job that simply stops moving (a lost message, a crashed worker): the watchdog fails it once
  its deadline passes (:func:`fail_overdue_jobs`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ichseg.errors import ErrorCode
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import JobSource, JobState, Stage

log = logging.getLogger("ichseg.pipeline.failures")


def fail_job(
    ctx: PipelineContext,
    job_id: str,
    code: ErrorCode,
    reason: str,
    stage: Stage,
    source: JobSource | None = None,
    owner: str | None = None,
    upload_key: str = "",
) -> bool:
    """End a job FAILED unless it already ended; True if this call failed it."""
    failed = ctx.store.fail(job_id, code, reason, stage, source=source, owner=owner, upload_key=upload_key)
    if failed:
        log.warning("job failed in %s: %s (%s)", stage, reason, code, extra={"job_id": job_id})
        ctx.metrics.add_metric("JobsFailed", "Count", 1)
        job = ctx.store.get(job_id) if source is None else None
        if (source or (job.source if job else None)) == JobSource.INGEST:
            # A hospital job that fails sends nothing back: the PACS and the radiologist wait for a
            # result that will not come, so ops hear of each one (HospitalJobsFailedAlarm).
            ctx.metrics.add_metric("HospitalJobsFailed", "Count", 1)
    return failed


@contextmanager
def last_attempt_fails_job(
    ctx: PipelineContext,
    job_id: str,
    stage: Stage,
    receive_count: int,
    source: JobSource | None = None,
    owner: str | None = None,
    upload_key: str = "",
) -> Iterator[None]:
    """Run a stage; if it raises on the queue's last delivery, fail the job first, then re-raise.

    Re-raising keeps the message: SQS sends it to the dead-letter queue, where it stays available
    for diagnosis and redrive. Earlier deliveries just raise, and SQS retries after the visibility
    timeout (exceptions are the retry signal, not a failure verdict).
    """
    try:
        yield
    except Exception as exc:
        if receive_count >= ctx.config.max_receive_count:
            reason = (
                f"{stage} failed {receive_count} time(s); last error: {type(exc).__name__}: {exc}. "
                "The message is in the dead-letter queue."
            )
            stage = Stage(stage)
            fail_job(ctx, job_id, stage.gave_up, reason, stage, source=source, owner=owner, upload_key=upload_key)
        raise


@dataclass(frozen=True)
class WatchdogResult:
    """What one watchdog tick did."""

    failed: tuple[str, ...]
    checked: int


def fail_overdue_jobs(ctx: PipelineContext) -> WatchdogResult:
    """Fail every job that is still running past its deadline (the scheduled watchdog)."""
    now = ctx.clock()
    failed = []
    checked = 0
    for job in ctx.store.overdue(now):
        checked += 1
        done, total = job.progress
        progress = f", {done}/{total} slices segmented" if total else ""
        reason = (
            f"the job did not finish within its deadline ({ctx.config.job_deadline_seconds} s); "
            f"it was stuck in {job.state.value}{progress}"
        )
        if job.state == JobState.RECEIVED and "received" not in job.stamps:
            reason = "no upload arrived before the deadline"
        if fail_job(ctx, job.job_id, ErrorCode.DEADLINE_EXCEEDED, reason, Stage.WATCHDOG):
            failed.append(job.job_id)
    return WatchdogResult(tuple(failed), checked)
