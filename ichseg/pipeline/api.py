"""The mobile app's API, as plain functions: start a scan (presigned POST), read a scan's status,
list a user's scans, delete a scan.

Authorisation happens before these run (the Lambda authorizer verifies the Firebase ID token and
passes the uid); here the uid decides everything: uploads go under ``uploads/{uid}/``, and a job
is visible only to its owner (anyone else, hospital jobs included, gets "not found" rather than
"forbidden", so job ids cannot be probed).

The presigned POST's policy is what S3 enforces on the upload (exact key, exact Content-Type,
content-length-range, expiry). moto does not enforce policies; AWS does.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ichseg.media_types import MIRRORED_FILES
from ichseg.pipeline import keys
from ichseg.pipeline.access import JOB_ID, ApiError, owned_job, status_url
from ichseg.pipeline.api_models import (
    Headline,
    JobError,
    Mirror,
    MultipartUpload,
    ProblemCode,
    Progress,
    RegisteredDevice,
    ResultLinks,
    ScanList,
    ScanStatus,
    ScanSummary,
    SliceLinks,
    UploadForm,
    UploadTicket,
)
from ichseg.pipeline.config import ALLOWED_UPLOAD_TYPES
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.devices import MAX_DEVICES, DeviceRegistry, Platform
from ichseg.pipeline.jobs import Job, JobSource, JobState
from ichseg.pipeline.multipart import MULTIPART_WINDOW_SECONDS, start_multipart

RESULT_FILES = {
    "overlay": "overlay.mp4",
    "report": "report.json",
    "contact_sheet": "contact_sheet.png",
    "seg": "seg.dcm",
    "sr": "sr.dcm",
}
VIEWER_PATH = "/viewer/"
"""The static results viewer, relative to the API's base URL (``?job=<id>`` names the job)."""
LIST_LIMIT_DEFAULT = 20


def create_scan(ctx: PipelineContext, uid: str, content_type: str, size_bytes: int | None = None) -> UploadTicket:
    """Create a job for ``uid`` and a presigned POST for its scan."""
    config = ctx.config
    content_type = (content_type or "").strip().lower()
    if content_type not in ALLOWED_UPLOAD_TYPES:
        accepted = ", ".join(ALLOWED_UPLOAD_TYPES)
        raise ApiError(
            ProblemCode.UNSUPPORTED_UPLOAD_TYPE, f"content_type {content_type!r} is not accepted; use one of {accepted}"
        )
    if size_bytes is not None and not 0 < size_bytes <= config.upload_max_bytes:
        raise ApiError(
            ProblemCode.UPLOAD_TOO_LARGE, f"size_bytes must be between 1 and {config.upload_max_bytes} bytes"
        )
    if not keys.is_valid_uid(uid):
        raise ApiError(ProblemCode.ACCOUNT_NOT_USABLE, "this account id cannot be used for uploads")
    config.require("bucket", "table")  # after the request's own checks: refusing one needs no storage
    job_id = keys.new_job_id()
    key = keys.upload_key(uid, job_id)
    multipart = size_bytes is not None and size_bytes > config.multipart_threshold_bytes
    # The deadline covers the upload window too: a job whose upload never comes is failed by the
    # watchdog (a multipart upload may take a day, as long as S3 keeps its parts).
    window = MULTIPART_WINDOW_SECONDS if multipart else config.upload_url_seconds
    ctx.store.create(job_id, JobSource.APP, uid, key, window + config.job_deadline_seconds, content_type=content_type)

    def ticket(upload: UploadForm | None, parts: MultipartUpload | None, max_bytes: int) -> UploadTicket:
        return UploadTicket(
            job_id=job_id,
            state=JobState.RECEIVED.value,
            upload=upload,
            multipart=parts,
            content_type=content_type,
            max_bytes=max_bytes,
            expires_in=config.upload_url_seconds,
            status_url=status_url(job_id),
        )

    if multipart:
        assert size_bytes is not None
        return ticket(None, start_multipart(ctx, job_id, key, content_type, size_bytes), size_bytes)
    low, high = upload_size_range(config.upload_max_bytes, size_bytes)
    post = presigned_post(ctx, key, content_type, low, high)
    return ticket(UploadForm(url=post["url"], fields=post["fields"], method="POST", file_field="file"), None, high)


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


def scan_status(ctx: PipelineContext, uid: str, job_id: str) -> ScanStatus:
    """The job as its owner sees it; :class:`ApiError` 404 for unknown jobs and other people's."""
    return status_view(ctx, owned_job(ctx, uid, job_id))


def viewer_link(job_id: str) -> str:
    """The viewer page for a job, relative to the API base (the page fetches the status itself)."""
    return f"{VIEWER_PATH}?job={job_id}"


def list_scans(ctx: PipelineContext, uid: str, limit: int = LIST_LIMIT_DEFAULT, cursor: str | None = None) -> ScanList:
    """The caller's jobs, newest first, one page; ``next`` is an opaque cursor for the following page."""
    start = _decode_cursor(cursor, uid) if cursor else None
    jobs, following = ctx.store.page_for_owner(uid, limit, start)
    return ScanList(
        scans=[
            ScanSummary(
                job_id=job.job_id,
                state=job.state,
                created_at=job.created_at,
                error=_error(job),
                result=_headline(job),
                status_url=status_url(job.job_id),
            )
            for job in jobs
        ],
        next=_encode_cursor(following) if following else None,
    )


_CURSOR_KEYS = {"job_id", "owner", "created_at"}


def _encode_cursor(key: dict[str, str]) -> str:
    # Opaque to the client (base64url of the index key); not secret: the owner in it is the caller.
    return base64.urlsafe_b64encode(json.dumps(key, sort_keys=True).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, uid: str) -> dict[str, str]:
    """The index key inside a cursor; 400 unless it is one this API gave this caller.

    Checked here, not left to DynamoDB: a forged key for another owner would be refused by the
    query (a 500), and a malformed one must be the client's error, not ours.
    """
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        key = None
    valid = (
        isinstance(key, dict)
        and set(key) == _CURSOR_KEYS
        and all(isinstance(value, str) and value for value in key.values())
        and key["owner"] == uid
        and JOB_ID.match(key["job_id"]) is not None
    )
    if not valid:
        raise ApiError(ProblemCode.INVALID_CURSOR, "next is not a cursor this API returned")
    return dict(key)


def delete_scan(ctx: PipelineContext, uid: str, job_id: str) -> None:
    """Delete the caller's ended job: its S3 objects (every version), its Firebase copy, its row.

    404 for unknown jobs, other people's and already deleted ones (a second DELETE is 404); 409
    while the job is still being processed (a stage could write results after the delete).
    The row goes last: if anything before it fails, the job is still listed and a retry finishes.
    It becomes a tombstone rather than nothing (:mod:`ichseg.pipeline.jobs`): a late copy of the
    job's upload event then finds the id spent instead of bringing the job back, and the
    tombstone is invisible here (no owner: 404, in no list).
    """
    job = owned_job(ctx, uid, job_id)
    if not job.state.terminal:
        raise ApiError(
            ProblemCode.SCAN_IN_PROGRESS, f"scan {job_id!r} is {job.state.value}: delete it once it is DONE or FAILED"
        )
    for prefix in (
        f"{keys.UPLOADS_PREFIX}{uid}/{job_id}/",
        f"{keys.WORK_PREFIX}{job_id}/",
        keys.results_prefix(job_id),
    ):
        ctx.delete_prefix(prefix, every_version=True)
    if ctx.mirror is not None:
        ctx.mirror.delete(keys.mirror_prefix(uid, job_id))
    if not ctx.store.delete_ended(job_id, uid):  # deleted concurrently by another request
        raise ApiError(ProblemCode.SCAN_NOT_FOUND, f"no scan {job_id!r}")


def register_device(ctx: PipelineContext, uid: str, token: str, platform: Platform) -> RegisteredDevice:
    """Register (or refresh) the caller's device for push notifications when their jobs end."""
    device = DeviceRegistry(ctx.store).register(uid, token, platform)
    return RegisteredDevice(
        device_id=device.device_id,
        platform=device.platform,
        registered_at=device.registered_at,
        devices_max=MAX_DEVICES,
    )


def remove_device(ctx: PipelineContext, uid: str, device_id: str) -> None:
    """Stop notifying one of the caller's devices; 404 if it is not registered (to them)."""
    if not DeviceRegistry(ctx.store).remove(uid, device_id):
        raise ApiError(ProblemCode.DEVICE_NOT_FOUND, f"no device {device_id!r}")


def _error(job: Job) -> JobError | None:
    return JobError(code=job.error_code, reason=job.error_reason) if job.state == JobState.FAILED else None


def _headline(job: Job) -> Headline | None:
    return Headline.model_validate(dict(job.summary)) if job.summary else None


def status_view(ctx: PipelineContext, job: Job) -> ScanStatus:
    """``GET /v1/scans/{job_id}``: the job as its owner sees it, with presigned links when DONE."""
    done, total = job.progress
    view = ScanStatus(
        job_id=job.job_id,
        state=job.state,
        progress=Progress(
            done=done, total=total, batches_done=len(job.done_batches), batches_total=job.total_batches or 0
        ),
        created_at=job.created_at,
        error=_error(job),
        scan=dict(job.scan) or None,
        result=_headline(job),
        results=None,
        timings=job.stage_seconds(),
        mirror=None,
        viewer=viewer_link(job.job_id),
    )
    if job.state != JobState.DONE:
        return view
    expires = ctx.config.result_url_seconds
    view.results = ResultLinks(
        **{
            name: ctx.s3.generate_presigned_url(
                "get_object", Params={"Bucket": ctx.config.bucket, "Key": job.results[name]}, ExpiresIn=expires
            )
            for name in RESULT_FILES
            if name in job.results
        }
    )
    view.results_expire_in = expires
    view.slices = slice_links(ctx, job, expires)
    if job.mirror_prefix:
        view.mirror = Mirror(
            prefix=job.mirror_prefix,
            files=[job.mirror_prefix + name for name in MIRRORED_FILES],
            state=job.mirror_state,
            attempts=job.mirror_attempts,
            error=job.mirror_error,
        )
    return view


def slice_links(ctx: PipelineContext, job: Job, expires: int) -> list[SliceLinks] | None:
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

    return [SliceLinks(id=i, frame=link(f"{frames_prefix}{i}.jpg"), mask=link(f"{masks_prefix}{i}.png")) for i in ids]
