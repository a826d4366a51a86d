"""Who may touch which job through the API, and how a refusal is raised: shared by the API's
functions (:mod:`ichseg.pipeline.api`, :mod:`ichseg.pipeline.multipart`)."""

from __future__ import annotations

import re

from ichseg.pipeline.api_models import ProblemCode
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import Job

JOB_ID = re.compile(r"^(?:[0-9a-f]{32}|ingest-[0-9a-f]{24})$")
"""An app job id (32 hex digits) or a hospital one (``ingest-`` and 24)."""


class ApiError(Exception):
    """A request the API refuses: ``code`` says why (and fixes the HTTP status), ``str()`` the detail."""

    def __init__(self, code: ProblemCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code

    @property
    def status(self) -> int:
        return self.code.status


def owned_job(ctx: PipelineContext, uid: str, job_id: str) -> Job:
    """The caller's job; :class:`ApiError` 404 for unknown jobs and other people's (ids cannot be probed)."""
    job = ctx.store.get(job_id) if JOB_ID.match(job_id or "") else None
    if job is None or job.owner is None or job.owner != uid:
        raise ApiError(ProblemCode.SCAN_NOT_FOUND, f"no scan {job_id!r}")
    return job


def status_url(job_id: str) -> str:
    """The job's status route, relative to the API base."""
    return f"/v1/scans/{job_id}"
