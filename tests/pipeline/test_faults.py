"""Faults the local stack must survive the way AWS does: a function's process dies, and the
stack starts a fresh one (Lambda's new execution environment) instead of stopping the queue."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ichseg.pipeline.jobs import JobState
from infrastructure.local_stack import LocalStack
from tests.pipeline.conftest import AppClient, head_frames, video_bytes


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
    assert all(thread.is_alive() for thread in stack._threads)
