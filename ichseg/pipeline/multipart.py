"""Resumable uploads: a large scan goes to S3 part by part (an S3 multipart upload), so a mobile
connection that drops costs one part, not the whole file.

``POST /v1/scans`` with a declared size over ``ICHSEG_MULTIPART_THRESHOLD_BYTES`` starts one
(:func:`start_multipart`): the job row keeps its upload id and size, and the ticket lists every
part (number, offset, size) with a presigned ``UploadPart`` URL. The app PUTs the parts, in any
order and any number at once, then calls ``POST /v1/scans/{job}/upload/complete``
(:func:`complete_multipart`): the parts S3 holds are checked against the plan (all there, each of
its planned size, so the total is the declared size and within the limit), and the upload is
completed into the job's upload key, whose S3 event starts the split as for a presigned POST.
After an interruption, ``GET /v1/scans/{job}/upload`` (:func:`multipart_status`) says which parts
S3 has and gives fresh URLs for the others.

Completing is idempotent: a second call (a retry after a lost answer) finds the upload id gone from
the row and answers as the first did. An upload never completed is aborted by the bucket's
lifecycle rule after a day, and its job failed by the watchdog at its deadline (a day too).
"""

from __future__ import annotations

from ichseg.pipeline.access import ApiError, owned_job, status_url
from ichseg.pipeline.api_models import MultipartUpload, ProblemCode, UploadPart
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import Job, JobState

MULTIPART_WINDOW_SECONDS = 86400
"""How long a multipart upload may take (the lifecycle rule aborts incomplete ones after a day)."""


def part_plan(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, offset, size) of every part of a ``size``-byte file."""
    return [(n + 1, offset, min(part_size, size - offset)) for n, offset in enumerate(range(0, size, part_size))]


def start_multipart(ctx: PipelineContext, job_id: str, key: str, content_type: str, size: int) -> MultipartUpload:
    """Open the S3 multipart upload of a new job's scan and record it on the job's row."""
    bucket = ctx.config.bucket
    upload_id = ctx.s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)["UploadId"]
    ctx.store.update_if(
        job_id,
        "SET #multipart_upload_id = :id, #upload_size = :size",
        "#state = :received",
        {":id": upload_id, ":size": size, ":received": JobState.RECEIVED},
    )
    return _upload(ctx, job_id, key, upload_id, size, {})


def multipart_status(ctx: PipelineContext, uid: str, job_id: str) -> MultipartUpload:
    """The caller's upload in progress: the parts S3 has, fresh URLs for the others."""
    job = owned_job(ctx, uid, job_id)
    upload_id, size = _in_progress(job)
    return _upload(ctx, job_id, job.upload_key, upload_id, size, _received(ctx, job.upload_key, upload_id))


def complete_multipart(ctx: PipelineContext, uid: str, job_id: str) -> Job:
    """Complete the caller's upload if every part is there at its planned size; the job."""
    job = owned_job(ctx, uid, job_id)
    if job.multipart_upload_id is None and job.upload_size is not None:
        return job  # completed already: this is a retry of a call whose answer was lost
    upload_id, size = _in_progress(job)
    received = _received(ctx, job.upload_key, upload_id)
    plan = part_plan(size, ctx.config.multipart_part_bytes)
    wrong = [number for number, _, part in plan if received.get(number, (None, -1))[1] != part]
    if wrong:
        shown = ", ".join(map(str, wrong[:20])) + (" ..." if len(wrong) > 20 else "")
        raise ApiError(
            ProblemCode.UPLOAD_INCOMPLETE,
            f"{len(wrong)} of {len(plan)} parts are missing or not of their planned size: {shown} "
            f"(GET {status_url(job_id)}/upload for their URLs)",
        )
    parts = [{"PartNumber": number, "ETag": received[number][0]} for number, _, _ in plan]
    ctx.s3.complete_multipart_upload(
        Bucket=ctx.config.bucket, Key=job.upload_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    # The object is in place (its S3 event is on its way to the split): the row forgets the upload.
    ctx.store.update_if(job_id, "REMOVE #multipart_upload_id", "#multipart_upload_id = :id", {":id": upload_id})
    return ctx.store.require(job_id)


def _in_progress(job: Job) -> tuple[str, int]:
    """The job's multipart upload id and declared size; 409 if no upload in parts is in progress."""
    if job.multipart_upload_id is None or job.state != JobState.RECEIVED or job.upload_size is None:
        raise ApiError(ProblemCode.NOT_A_MULTIPART_UPLOAD, f"scan {job.job_id!r} has no upload in parts in progress")
    return job.multipart_upload_id, job.upload_size


def _received(ctx: PipelineContext, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
    """Part number -> (ETag, size) of the parts S3 holds."""
    parts: dict[int, tuple[str, int]] = {}
    pages = ctx.s3.get_paginator("list_parts").paginate(Bucket=ctx.config.bucket, Key=key, UploadId=upload_id)
    for page in pages:
        parts.update({p["PartNumber"]: (p["ETag"], int(p["Size"])) for p in page.get("Parts", [])})
    return parts


def _upload(
    ctx: PipelineContext, job_id: str, key: str, upload_id: str, size: int, received: dict[int, tuple[str, int]]
) -> MultipartUpload:
    config = ctx.config
    plan = part_plan(size, config.multipart_part_bytes)
    done = sorted(n for n, _, part in plan if received.get(n, (None, -1))[1] == part)

    def url(number: int) -> str:
        params = {"Bucket": config.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number}
        return str(ctx.s3.generate_presigned_url("upload_part", Params=params, ExpiresIn=config.upload_url_seconds))

    return MultipartUpload(
        part_size=config.multipart_part_bytes,
        parts_total=len(plan),
        parts=[UploadPart(part_number=n, url=url(n), offset=o, size=z) for n, o, z in plan if n not in done],
        parts_received=done,
        expires_in=config.upload_url_seconds,
        status_url=f"{status_url(job_id)}/upload",
        complete_url=f"{status_url(job_id)}/upload/complete",
    )
