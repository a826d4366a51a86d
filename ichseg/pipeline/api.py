"""The mobile app's API, as plain functions: start a scan (presigned POST), read a scan's status.

Authorisation happens before these run (the Lambda authorizer verifies the Firebase ID token and
passes the uid); here the uid decides everything: uploads go under ``uploads/{uid}/``, and a job
is visible only to its owner (anyone else, hospital jobs included, gets "not found" rather than
"forbidden", so job ids cannot be probed).

The presigned POST's policy is what S3 enforces on the upload (exact key, exact Content-Type,
content-length-range, expiry). moto does not enforce policies; AWS does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ichseg.pipeline import keys
from ichseg.pipeline.config import ALLOWED_UPLOAD_TYPES
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import Job, JobSource, JobState

_JOB_ID = re.compile(r"^(?:[0-9a-f]{32}|ingest-[0-9a-f]{24})$")
RESULT_FILES = {
    "overlay": "overlay.mp4",
    "report": "report.json",
    "contact_sheet": "contact_sheet.png",
    "seg": "seg.dcm",
}


class ApiError(Exception):
    """A request the API refuses; ``status`` is the HTTP status, ``str()`` the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadTicket:
    """What ``POST /v1/scans`` returns: the job and how to upload its scan."""

    job_id: str
    url: str
    fields: dict[str, str]
    expires_in: int
    max_bytes: int
    content_type: str

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": JobState.RECEIVED.value,
            "upload": {"url": self.url, "fields": self.fields, "method": "POST", "file_field": "file"},
            "content_type": self.content_type,
            "max_bytes": self.max_bytes,
            "expires_in": self.expires_in,
            "status_url": f"/v1/scans/{self.job_id}",
        }


def create_scan(ctx: PipelineContext, uid: str, content_type: str, size_bytes: int | None = None) -> UploadTicket:
    """Create a job for ``uid`` and a presigned POST for its scan."""
    config = ctx.config
    config.require("bucket", "table")
    content_type = (content_type or "").strip().lower()
    if content_type not in ALLOWED_UPLOAD_TYPES:
        accepted = ", ".join(ALLOWED_UPLOAD_TYPES)
        raise ApiError(400, f"content_type {content_type!r} is not accepted; use one of {accepted}")
    if size_bytes is not None and not 0 < size_bytes <= config.upload_max_bytes:
        raise ApiError(413, f"size_bytes must be between 1 and {config.upload_max_bytes} bytes")
    if not keys.is_valid_uid(uid):
        raise ApiError(403, "this account id cannot be used for uploads")
    job_id = keys.new_job_id()
    key = keys.upload_key(uid, job_id)
    # The deadline covers the upload window too: a job whose upload never comes is failed by the watchdog.
    ctx.store.create(
        job_id,
        JobSource.APP,
        uid,
        key,
        config.upload_url_seconds + config.job_deadline_seconds,
        content_type=content_type,
    )
    low, high = upload_size_range(config.upload_max_bytes, size_bytes)
    post = presigned_post(ctx, key, content_type, low, high)
    return UploadTicket(job_id, post["url"], post["fields"], config.upload_url_seconds, high, content_type)


UPLOAD_SIZE_SLACK = 1024
"""Bytes an upload may exceed its declared size by (a client that counted a little short still passes)."""


def upload_size_range(upload_max_bytes: int, size_bytes: int | None) -> tuple[int, int]:
    """The sizes S3 will accept for the upload: the declared size (never shorter, which would be a
    truncated file, and at most :data:`UPLOAD_SIZE_SLACK` longer), or anything up to the limit."""
    if size_bytes is None:
        return 1, upload_max_bytes
    return size_bytes, min(upload_max_bytes, size_bytes + UPLOAD_SIZE_SLACK)


def presigned_post(ctx: PipelineContext, key: str, content_type: str, min_bytes: int, max_bytes: int) -> dict[str, Any]:
    """A SigV4 presigned POST for exactly this key and Content-Type and size range, short-lived."""
    config = ctx.config
    return ctx.s3.generate_presigned_post(
        Bucket=config.bucket,
        Key=key,
        Fields={"Content-Type": content_type},
        Conditions=[
            {"Content-Type": content_type},
            ["content-length-range", min_bytes, max_bytes],
        ],
        ExpiresIn=config.upload_url_seconds,
    )


def scan_status(ctx: PipelineContext, uid: str, job_id: str) -> dict[str, Any]:
    """The job as its owner sees it; :class:`ApiError` 404 for unknown jobs and other people's."""
    job = ctx.store.get(job_id) if _JOB_ID.match(job_id or "") else None
    if job is None or job.owner is None or job.owner != uid:
        raise ApiError(404, f"no scan {job_id!r}")
    return status_view(ctx, job)


def status_view(ctx: PipelineContext, job: Job) -> dict[str, Any]:
    """The JSON document of ``GET /v1/scans/{job_id}``."""
    done, total = job.progress
    view: dict[str, Any] = {
        "job_id": job.job_id,
        "state": job.state.value,
        "progress": {
            "done": done,
            "total": total,
            "batches_done": len(job.done_batches),
            "batches_total": job.total_batches or 0,
        },
        "created_at": job.created_at,
        "error": {"code": job.error_code, "reason": job.error_reason} if job.state == JobState.FAILED else None,
        "scan": dict(job.scan) or None,
        "result": dict(job.summary) or None,
        "results": None,
        "timings": job.stage_seconds(),
        "mirror": None,
    }
    if job.state == JobState.DONE:
        expires = ctx.config.result_url_seconds
        view["results"] = {
            name: ctx.s3.generate_presigned_url(
                "get_object", Params={"Bucket": ctx.config.bucket, "Key": job.results[name]}, ExpiresIn=expires
            )
            for name in RESULT_FILES
            if name in job.results
        }
        view["results_expire_in"] = expires
        view["slices"] = slice_links(ctx, job, expires)
        if job.mirror_prefix:
            view["mirror"] = {
                "prefix": job.mirror_prefix,
                "files": [job.mirror_prefix + "overlay.mp4", job.mirror_prefix + "report.json"],
                "error": job.mirror_error,
            }
    return view


def slice_links(ctx: PipelineContext, job: Job, expires: int) -> list[dict[str, str]] | None:
    """Each slice's id with presigned links to its mask and plain frame (the viewer's data), in key
    order (``report.json``'s ``slices`` give the scan's order); None for jobs assembled before the
    frames existed.

    The slice ids come from listing the masks (one request per 1,000 slices), so the job record
    stays small; presigning is local computation.
    """
    frames_prefix = job.results.get("frames")
    masks_prefix = job.results.get("masks")
    if not frames_prefix or not masks_prefix:
        return None
    bucket = ctx.config.bucket
    ids = [
        item["Key"][len(masks_prefix) : -len(".png")]
        for page in ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=masks_prefix)
        for item in page.get("Contents", [])
    ]

    def link(key: str) -> str:
        return ctx.s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)

    return [{"id": i, "frame": link(f"{frames_prefix}{i}.jpg"), "mask": link(f"{masks_prefix}{i}.png")} for i in ids]
