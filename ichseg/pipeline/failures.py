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

A worker that is killed (out of memory, past its time limit) raises nothing: no ``except`` runs,
so :func:`last_attempt_fails_job` never sees it, and the job would only ever say it was stuck. So a
heavy stage notes each attempt on the job's row before its work (:func:`attempt_noted`: a
``{stage}_attempt`` map) and notes its end after; an attempt found started and never ended was
killed. The row, not S3, because the watchdog may read the table and nothing in the bucket. The
next delivery counts the dead attempt, and on the queue's last delivery, when every earlier one
died that way, fails the job saying so instead of being killed once more in silence; the
watchdog says so too when the last attempt died and nothing came after it (in AWS the ingest
queue's visibility timeout, 1800 s, outlasts the job's deadline, so the watchdog is first).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from botocore.exceptions import ClientError

from ichseg.errors import ErrorCode
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import AttemptLog, Job, JobSource, JobState, Stage
from ichseg.pipeline.push import JobEnded, notify_job_ended

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
        job = ctx.store.get(job_id) if source is None or owner is None else None
        source = source or (job.source if job else None)
        if source == JobSource.INGEST:
            # A hospital job that fails sends nothing back: the PACS and the radiologist wait for a
            # result that will not come, so ops hear of each one (HospitalJobsFailedAlarm).
            ctx.metrics.add_metric("HospitalJobsFailed", "Count", 1)
        # Once: only the call whose conditional write failed the job gets here.
        event = JobEnded(job_id, JobState.FAILED, error_code=code)
        notify_job_ended(ctx, source, owner or (job.owner if job else None), event)
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


class AttemptsDied(RuntimeError):
    """Every earlier attempt of a stage was killed; the job was failed instead of trying again."""


def killed_reason(stage: Stage, times: int) -> str:
    """What a job killed ``times`` times in ``stage`` says: the true reason, not "stuck"."""
    return (
        f"the {stage} ran out of memory or was killed {times} time(s): its process ended without finishing "
        "or raising an error (the function's memory or time limit); the upload is too large for it"
    )


@contextmanager
def attempt_noted(
    ctx: PipelineContext,
    job_id: str,
    stage: Stage,
    receive_count: int,
    source: JobSource | None = None,
    owner: str | None = None,
    upload_key: str = "",
) -> Iterator[None]:
    """Run a stage's heavy work with the attempt noted before it and its end noted after.

    An earlier attempt still noted as running when a later delivery of the message arrives (a
    higher receive count: a concurrent duplicate event is no death) died. On the queue's last
    delivery, if every earlier delivery died so, the job is failed with :func:`killed_reason` and
    :class:`AttemptsDied` raised (the message goes to the dead-letter queue) without running the
    work again: the same bytes in the same memory die the same way.
    """
    stage = Stage(stage)
    previous = ctx.store.attempts(job_id, stage)
    died = 0
    if previous is not None:
        died = previous.died + int(previous.running and receive_count > previous.receive_count)
    if died and died >= receive_count - 1 and receive_count >= ctx.config.max_receive_count:
        reason = f"{killed_reason(stage, died)}. The message is in the dead-letter queue."
        fail_job(ctx, job_id, stage.gave_up, reason, stage, source=source, owner=owner, upload_key=upload_key)
        raise AttemptsDied(reason)
    if died:
        log.warning("%d earlier %s attempt(s) died without finishing", died, stage, extra={"job_id": job_id})
    ctx.store.note_attempt(job_id, stage, AttemptLog(receive_count, running=True, died=died))
    try:
        yield
    except Exception:
        try:
            ctx.store.note_attempt(job_id, stage, AttemptLog(receive_count, running=False, died=died))
        except Exception:  # the attempt's own error is the one to report
            log.exception("could not note the end of a failed %s attempt", stage, extra={"job_id": job_id})
        raise
    ctx.store.note_attempt(job_id, stage, AttemptLog(receive_count, running=False, died=died))


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
        elif (killed := _split_died(ctx, job)) is not None:
            reason = f"{killed}; the job did not finish within its deadline"
        if fail_job(ctx, job.job_id, ErrorCode.DEADLINE_EXCEEDED, reason, Stage.WATCHDOG):
            failed.append(job.job_id)
    return WatchdogResult(tuple(failed), checked)


def _split_died(ctx: PipelineContext, job: Job) -> str | None:
    """The true reason of a job whose last split attempt never ended (past the deadline, longer
    than the function's time limit, it cannot still be running), else None."""
    if job.state not in (JobState.RECEIVED, JobState.SPLIT):
        return None
    try:
        attempts = ctx.store.attempts(job.job_id, Stage.SPLIT)
    except ClientError:  # the plain deadline reason is still true; one unreadable row must not stop the tick
        log.exception("could not read the split's attempts", extra={"job_id": job.job_id})
        return None
    if attempts is None or not attempts.running:
        return None
    return killed_reason(Stage.SPLIT, attempts.died + 1)
