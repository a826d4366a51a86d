"""The pipeline under load and faults: every accepted upload ends, each result is written once.

    .venv/bin/python bench/fault_bench.py                 # 8 uploads, every fault below
    .venv/bin/python bench/fault_bench.py --uploads 16    # more load

Runs the local stack (127.0.0.1 only) with every queue message delivered twice (the pumps send a
copy of each one they receive) and short visibility timeouts, uploads ``--uploads`` copies of the
committed sample through the API at once, as the app does, and meanwhile:

1. kills a segment function's worker process (Lambda crash; the stack starts a fresh one);
2. stops the inference server for a few seconds, then starts it again;
3. stops the Firebase Storage emulator for a few seconds (a Firebase outage), then starts it empty;
4. kills the assemble function's worker process.

It stops by itself (bounded uploads, a deadline on waiting) and prints the accounting: every
accepted upload DONE or FAILED with a reason, no job stuck, each result object written once (the
bucket is versioned, as in template.yaml: a rewrite is a second version), latency p50/p95 and
jobs per minute. Figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pipeline_bench import run_job  # noqa: E402 - after the path set-up, like the other benches

FAULT_SECONDS = 4.0


def inject_faults(stack: Any, log: list[str], started: float) -> None:
    """The fault schedule, while the uploads run."""

    def note(text: str) -> None:
        log.append(f"{time.perf_counter() - started:6.1f} s  {text}")

    time.sleep(2.0)
    pid = sorted(stack.functions["segment"].worker_pids())[0]
    os.kill(pid, signal.SIGKILL)
    note(f"killed a segment worker (pid {pid})")
    time.sleep(2.0)
    with stack.endpoint_down():
        note("inference server stopped")
        time.sleep(FAULT_SECONDS)
    note("inference server running again")
    with stack.storage_down():
        note("Firebase Storage emulator stopped")
        time.sleep(FAULT_SECONDS)
    note("Firebase Storage emulator running again (empty)")
    (pid,) = stack.functions["assemble"].worker_pids()
    os.kill(pid, signal.SIGKILL)
    note(f"killed the assemble worker (pid {pid})")


def result_versions(stack: Any, job_id: str) -> collections.Counter[str]:
    """How many versions each result object of a job has (1: written once)."""
    s3 = stack.aws("s3")
    counts: collections.Counter[str] = collections.Counter()
    for page in s3.get_paginator("list_object_versions").paginate(
        Bucket=stack.settings.bucket, Prefix=f"results/{job_id}/"
    ):
        for version in page.get("Versions", []):
            counts[version["Key"]] += 1
    return counts


def main() -> int:
    from ichseg.paths import SAMPLE_VIDEO, SHIPPED_MODEL
    from infrastructure.local_stack import LocalStack, StackSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=300.0, help="job deadline (s): the watchdog fails later")
    args = parser.parse_args()

    sample = SAMPLE_VIDEO.read_bytes()
    settings = StackSettings(
        model=SHIPPED_MODEL,
        duplicate_deliveries=True,
        visibility_timeout={"ingest": 20, "segment": 15, "assemble": 30},
        watchdog_interval_seconds=10,
        environment={"ICHSEG_JOB_DEADLINE_SECONDS": str(int(args.deadline)), "ICHSEG_MIRROR_BUDGET_SECONDS": "5"},
    )
    with (
        tempfile.TemporaryDirectory(prefix="ichseg-fault-") as state,
        LocalStack(settings, state_dir=Path(state)) as stack,
    ):
        started = time.perf_counter()
        faults: list[str] = []
        outcomes: dict[int, tuple[float, dict[str, Any]] | str] = {}

        def upload(index: int) -> None:
            try:
                outcomes[index] = run_job(stack.api_url, stack.token(f"fault-{index}"), sample, args.deadline + 60)
            except Exception as exc:  # the accounting reports it
                outcomes[index] = f"{type(exc).__name__}: {exc}"

        chaos = threading.Thread(target=inject_faults, args=(stack, faults, started))
        uploads = [threading.Thread(target=upload, args=(i,)) for i in range(args.uploads)]
        chaos.start()
        for thread in uploads:
            thread.start()
            time.sleep(0.3)  # arrivals spread over a few seconds, across the faults
        for thread in [*uploads, chaos]:
            thread.join()
        wall = time.perf_counter() - started
        print(f"{args.uploads} uploads of the sample ({len(sample) // 1024} KB), every message delivered twice")
        print("faults:", *(f"  {line}" for line in faults), sep="\n")
        return 0 if account(stack, [outcomes.get(i, "no answer") for i in range(args.uploads)], wall) else 1


def account(stack: Any, outcomes: list[tuple[float, dict[str, Any]] | str], wall: float) -> bool:
    """Print what became of every upload; True when everything is accounted for."""
    from ichseg.pipeline.jobs import JobState

    states: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    rewritten: list[str] = []
    stuck: list[str] = []
    unexplained: list[str] = []
    errors = [outcome for outcome in outcomes if isinstance(outcome, str)]
    for outcome in outcomes:
        if isinstance(outcome, str):
            continue
        seconds, status = outcome
        job = stack.store.require(status["job_id"])
        states[status["state"]] += 1
        if job.state == JobState.DONE:
            latencies.append(seconds)
            states["DONE with a mirror error"] += bool(job.mirror_error)
        elif job.state == JobState.FAILED:
            if not (job.error_code and job.error_reason):
                unexplained.append(job.job_id)
        else:
            stuck.append(job.job_id)
        rewritten += [key for key, count in result_versions(stack, job.job_id).items() if count > 1]
    restarts = {name: f.restarts for name, f in stack.functions.items() if f.restarts}
    print("accounting:")
    print(f"  final states: {dict(states)}")
    print(f"  client errors (no status): {len(errors)} {errors[:3]}")
    print(f"  FAILED without a code and reason: {len(unexplained)}")
    print(f"  stuck (neither DONE nor FAILED): {len(stuck)}")
    print(f"  result objects written more than once: {len(rewritten)} {rewritten[:3]}")
    print(f"  function workers restarted: {restarts}")
    print(f"  dead-lettered messages: { {q: len(stack.dlq_bodies(q)) for q in stack.queues} }")
    if latencies:
        latencies.sort()
        p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
        print(
            f"  latency upload->DONE: p50 {statistics.median(latencies):.1f} s, p95 {p95:.1f} s; "
            f"{len(latencies) / wall * 60:.1f} jobs/minute over {wall:.0f} s"
        )
    ended = states[JobState.DONE] + states[JobState.FAILED]
    ok = not (errors or unexplained or stuck or rewritten) and ended == len(outcomes)
    print("all accounted for" if ok else "NOT all accounted for")
    return ok


if __name__ == "__main__":
    sys.exit(main())
