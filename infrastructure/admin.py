"""``ichseg admin jobs list|show|retry``: the ops engineer's view of jobs, through the AWS APIs.

    ichseg admin --stack ichseg-prod jobs list --state FAILED --source hospital --site st-mary --hours 24
    ichseg admin --stack ichseg-prod jobs show <job_id>
    ichseg admin --stack ichseg-prod jobs retry <job_id> [--force]

``--stack`` reads the table, bucket and ingest queue from the CloudFormation stack's outputs (with
the caller's own AWS credentials and region); without it, from the pipeline's environment variables
(``ICHSEG_TABLE``, ``ICHSEG_BUCKET``, ``ICHSEG_INGEST_QUEUE_URL``), as on the local stack. Job rows
hold no patient data; ``show`` prints the row as stored (owner uids included, for ops only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from ichseg.pipeline.config import PipelineConfig
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import Job, JobNotFound, JobSource, JobState

SOURCES = {"app": JobSource.APP, "hospital": JobSource.INGEST}
STACK_OUTPUTS = {
    "TableName": "ICHSEG_TABLE",
    "BucketName": "ICHSEG_BUCKET",
    "IngestQueueUrl": "ICHSEG_INGEST_QUEUE_URL",
}
"""The stack outputs ``--stack`` reads, and the variable each stands for."""


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``admin`` to the ``ichseg`` command line."""
    admin = commands.add_parser("admin", help="ops: list, show and retry jobs through the AWS APIs")
    admin.add_argument("--stack", help="the CloudFormation stack (default: the ICHSEG_* environment)")
    groups = admin.add_subparsers(dest="group", required=True)
    jobs = groups.add_parser("jobs", help="the jobs table").add_subparsers(dest="action", required=True)

    listing = jobs.add_parser("list", help="jobs, newest first, filtered")
    listing.add_argument("--state", choices=[s.value for s in JobState], help="only jobs in this state")
    listing.add_argument("--source", choices=sorted(SOURCES), help="app (mobile) or hospital (DICOM) jobs")
    listing.add_argument("--site", help="hospital jobs of this site (the ingest/<site>/ prefix)")
    listing.add_argument("--hours", type=float, help="created in the last N hours")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=_list)

    show = jobs.add_parser("show", help="one job's row")
    show.add_argument("job_id")
    show.set_defaults(handler=_show)

    retry = jobs.add_parser("retry", help="run a FAILED job again from its stored upload")
    retry.add_argument("job_id")
    retry.add_argument("--force", action="store_true", help="also a job whose input was refused")
    retry.set_defaults(handler=_retry)


def admin_context(stack: str | None, env: Mapping[str, str] | None = None) -> PipelineContext:
    """The pipeline context ops act through: the stack's outputs, else the environment."""
    import os

    variables = dict(os.environ if env is None else env)
    if stack:
        import boto3

        (described,) = boto3.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
        variables.update({name: outputs[key] for key, name in STACK_OUTPUTS.items() if key in outputs})
    return PipelineContext(PipelineConfig.from_env(variables))


def site_of(job: Job) -> str | None:
    """A hospital job's site: the folder under ``ingest/`` its router writes to."""
    parts = job.upload_key.split("/")
    return parts[1] if job.source == JobSource.INGEST and len(parts) > 2 else None


def job_row(job: Job) -> dict[str, Any]:
    """The job as JSON: every field, enums as their values, sets sorted."""
    row = dataclasses.asdict(job)
    for name, value in row.items():
        if isinstance(value, frozenset):
            row[name] = sorted(value)
    row["site"] = site_of(job)
    return json.loads(json.dumps(row, default=str))


def _list(args: argparse.Namespace) -> int:
    ctx = admin_context(args.stack)
    since = time.time() - args.hours * 3600 if args.hours else None
    state = JobState(args.state) if args.state else None
    jobs = [
        job
        for job in ctx.store.find(state, SOURCES.get(args.source or ""), since)
        if args.site is None or site_of(job) == args.site
    ]
    jobs.sort(key=lambda job: job.stamps.get("created", 0.0), reverse=True)
    for job in jobs[: args.limit]:
        if args.json:
            print(json.dumps(job_row(job), sort_keys=True))
        else:
            error = f"{job.error_code}: {(job.error_reason or '')[:80]}" if job.error_code else ""
            source = "hospital" if job.source == JobSource.INGEST else "app"
            print("\t".join([job.job_id, job.state.value, source, site_of(job) or "-", job.created_at, error]))
    if len(jobs) > args.limit:
        print(f"({len(jobs) - args.limit} more: raise --limit)", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        job = admin_context(args.stack).store.require(args.job_id)
    except JobNotFound:
        print(f"no job {args.job_id}", file=sys.stderr)
        return 1
    print(json.dumps(job_row(job), indent=2, sort_keys=True))
    return 0


def _retry(args: argparse.Namespace) -> int:
    from ichseg.pipeline.retry import RetryRefused, retry_job

    try:
        job = retry_job(admin_context(args.stack), args.job_id, force=args.force)
    except (RetryRefused, JobNotFound) as exc:
        print(f"not retried: {exc}", file=sys.stderr)
        return 1
    print(f"{job.job_id}: {job.state.value} again (attempt {job.generation + 1}); its upload is being split")
    return 0
