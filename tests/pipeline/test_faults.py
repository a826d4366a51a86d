"""Faults the local stack must survive the way AWS does: a function's process dies, and the
stack starts a fresh one (Lambda's new execution environment) instead of stopping the queue; Firebase
Storage is down, and the results' copy arrives once it is back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from ichseg.pipeline.jobs import Job, JobState, MirrorState
from infrastructure.local_stack import LocalStack
from tests.stack_fixtures import AppClient, head_frames, video_bytes


def test_a_killed_function_worker_is_replaced_and_later_jobs_finish(
    alice: AppClient, stack: LocalStack, tmp_path: Path
) -> None:
    assemble = stack.functions["assemble"]
    restarts = assemble.restarts
    (killed,) = assemble.worker_pids()  # the assemble function runs one worker
    os.kill(killed, signal.SIGKILL)
    time.sleep(0.5)  # the executor notices the dead worker and marks itself broken

    job_id = alice.upload(video_bytes(tmp_path, head_frames(6, bleed_from=3)))
    job = alice.wait(job_id, timeout=120)

    assert job.state == JobState.DONE, job.error_reason
    assert assemble.restarts == restarts + 1
    assert killed not in assemble.worker_pids()
    # the pump thread that feeds the function is still alive, and so are the others
    assert stack.pump.alive()


def test_a_firebase_copy_that_missed_its_budget_arrives_once_firebase_is_back(
    alice: AppClient, stack: LocalStack, tmp_path: Path
) -> None:
    """Issue 19, item 11: Firebase Storage down for longer than the mirror's budget (and a retry)."""
    with stack.storage.down():
        job_id = alice.upload(video_bytes(tmp_path, head_frames(5, bleed_from=2)))
        job = alice.wait(job_id, timeout=120)
        assert job.state == JobState.DONE, job.error_reason  # the S3 results are the record
        assert job.mirror_state == MirrorState.PENDING and job.mirror_error
        status = alice.status(job_id).json()
        assert status["state"] == "DONE" and status["results"]["overlay"]  # what the app shows meanwhile
        assert status["mirror"]["state"] == "PENDING"
        # Still down when the mirror queue's first retry comes: it fails too, and the copy stays PENDING.
        job = _poll(stack, job_id, lambda j: j.mirror_attempts >= 2, "a failed retry")
        assert job.mirror_state == MirrorState.PENDING and "(retry 1)" in (job.mirror_error or "")

    # Firebase is back (empty): a later retry makes the copy, and the job shows it.
    job = _poll(stack, job_id, lambda j: j.mirror_state == MirrorState.MIRRORED, "MIRRORED")
    assert job.state == JobState.DONE and job.mirror_error is None and job.mirror_attempts >= 3
    prefix = f"users/alice/scans/{job_id}/"
    mirrored = {o["name"] for o in stack.inspect.firebase_objects(prefix)}
    assert mirrored == {prefix + "overlay.mp4", prefix + "report.json"}
    s3 = stack.aws("s3")
    overlay = s3.get_object(Bucket=stack.settings.bucket, Key=job.results["overlay"])["Body"].read()
    assert stack.inspect.firebase_download(prefix + "overlay.mp4") == overlay
    mirror = alice.status(job_id).json()["mirror"]
    assert (mirror["state"], mirror["error"]) == ("MIRRORED", None)
    retries = stack.inspect.invocations_of("mirror", job_id)
    assert retries and retries[0].failed_ids and not retries[-1].failed_ids  # failed, then made it
    assert not any(job_id in body for body in stack.inspect.dlq_bodies("mirror"))


def _poll(stack: LocalStack, job_id: str, done: Callable[[Job], bool], what: str, timeout: float = 90.0) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = stack.inspect.store.require(job_id)
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id}'s mirror is not {what} after {timeout:.0f} s: {job}")
        time.sleep(0.25)
