"""Where everything lives in the bucket, and how an upload's key names its job.

One bucket (``ICHSEG_BUCKET``), four prefixes:

- ``uploads/{uid}/{job_id}/scan``: the mobile app's presigned POST (the API chose the job id);
- ``ingest/{anything}``: the hospital DICOM router (IAM); the job id is derived from the key and
  the object's ETag, so a duplicated event names the same job while a re-sent series with new
  content starts a new one. The DICOM gateway writes content-addressed keys,
  ``ingest/{site}/{sha256 of the zip}.zip``: for those the key alone names the job (the ETag of a
  multipart or SSE-KMS upload is no content hash, and the key already is one);
- ``work/{job_id}/...``: frame batches, each segmented batch's rendered part, the manifest (expired
  by a lifecycle rule);
- ``results/{job_id}/...``: what people and PACS read.

Firebase Storage mirrors an app job's video and report under ``users/{uid}/scans/{job_id}/``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from ichseg.pipeline.jobs import JobSource

UPLOADS_PREFIX = "uploads/"
INGEST_PREFIX = "ingest/"
WORK_PREFIX = "work/"
RESULTS_PREFIX = "results/"
UPLOAD_NAME = "scan"

_UID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
"""Firebase uids are at most 128 characters; the ones Firebase generates are alphanumeric. Anything
else in a key is refused rather than trusted as a path segment."""
_APP_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_SITE = re.compile(r"^(?![._]*$)[A-Za-z0-9_.-]{1,64}$")
"""A site (the gateway's calling AE title made key-safe): never a path trick like ``..``."""
_CONTENT_ADDRESSED = re.compile(r"^ingest/(?P<site>[^/]+)/(?P<digest>[0-9a-f]{64})\.zip$")


class UnexpectedKey(ValueError):
    """An object key outside the layout (not written by a presigned POST or the router)."""


def new_job_id() -> str:
    """A fresh app job id (random: it is also the capability to nothing, ownership is checked)."""
    return uuid.uuid4().hex


def ingest_job_id(key: str, etag: str) -> str:
    """Deterministic id for a hospital upload: same object (key + content) -> same job.

    A content-addressed gateway key (:func:`gateway_ingest_key`) names its job by itself, whatever
    the ETag: the same series re-sent to the same site is the same job, another site's is not.
    """
    if is_content_addressed(key):
        return f"ingest-{hashlib.sha256(key.encode()).hexdigest()[:24]}"
    content = etag.strip('"')  # S3 quotes ETags in some APIs and not in events
    digest = hashlib.sha256(f"{key}\0{content}".encode()).hexdigest()
    return f"ingest-{digest[:24]}"


def is_valid_site(site: str) -> bool:
    return bool(_SITE.match(site))


OVERLAY_SERIES_METADATA = "overlay-series"
"""S3 user metadata on a gateway upload (``x-amz-meta-overlay-series: yes``): the site's PACS also
wants the overlay series (:mod:`ichseg.writers.dicom_sc`); the split records it in the manifest."""


def gateway_ingest_key(site: str, digest: str) -> str:
    """Where the DICOM gateway puts a complete study: ``ingest/{site}/{sha256 hex of the zip}.zip``."""
    key = f"{INGEST_PREFIX}{site}/{digest}.zip"
    if not is_valid_site(site) or not is_content_addressed(key):
        raise ValueError(f"site {site!r} / digest {digest!r} cannot name a gateway upload")
    return key


def is_content_addressed(key: str) -> bool:
    """Is this a gateway key (``ingest/{site}/{sha256}.zip`` with a valid site)?"""
    match = _CONTENT_ADDRESSED.match(key)
    return match is not None and is_valid_site(match["site"])


def ingest_site(key: str) -> str | None:
    """The site an ``ingest/{site}/...`` upload came from (where its results go back); None if none."""
    if not key.startswith(INGEST_PREFIX):
        return None
    site, sep, rest = key[len(INGEST_PREFIX) :].partition("/")
    return site if sep and rest and is_valid_site(site) else None


def is_valid_uid(uid: str) -> bool:
    return bool(_UID.match(uid))


def upload_key(uid: str, job_id: str) -> str:
    if not is_valid_uid(uid):
        raise ValueError(f"uid {uid!r} cannot be used in an object key")
    return f"{UPLOADS_PREFIX}{uid}/{job_id}/{UPLOAD_NAME}"


def manifest_key(job_id: str) -> str:
    return f"{WORK_PREFIX}{job_id}/manifest.json"


def dicom_headers_key(job_id: str) -> str:
    return f"{WORK_PREFIX}{job_id}/dicom-headers.json"


def frames_key(job_id: str, batch_id: str) -> str:
    return f"{WORK_PREFIX}{job_id}/frames/{batch_id}.npy"


def part_key(job_id: str, batch_id: str) -> str:
    """A segmented batch's share of the results (:class:`ichseg.pipeline.assemble.BatchPart`)."""
    return f"{WORK_PREFIX}{job_id}/parts/{batch_id}.npz"


def masks_prefix(job_id: str) -> str:
    return f"{RESULTS_PREFIX}{job_id}/masks/"


def mask_key(job_id: str, slice_id: str) -> str:
    return f"{masks_prefix(job_id)}{slice_id}.png"


def slice_frames_prefix(job_id: str) -> str:
    """The plain windowed slices as JPEGs (what the viewer shows under its own outline)."""
    return f"{RESULTS_PREFIX}{job_id}/frames/"


def slice_frame_key(job_id: str, slice_id: str) -> str:
    return f"{slice_frames_prefix(job_id)}{slice_id}.jpg"


def results_prefix(job_id: str) -> str:
    return f"{RESULTS_PREFIX}{job_id}/"


def mirror_prefix(uid: str, job_id: str) -> str:
    return f"users/{uid}/scans/{job_id}/"


@dataclass(frozen=True)
class UploadRef:
    """An uploaded object and the job it belongs to (parsed once, from the S3 event)."""

    bucket: str
    key: str
    etag: str
    size: int
    job_id: str
    source: JobSource
    owner: str | None

    @classmethod
    def from_object(cls, bucket: str, key: str, etag: str, size: int) -> UploadRef:
        """Classify an object by its (already URL-decoded) key; :class:`UnexpectedKey` if foreign."""
        if key.startswith(INGEST_PREFIX) and len(key) > len(INGEST_PREFIX) and not key.endswith("/"):
            return cls(bucket, key, etag, size, ingest_job_id(key, etag), JobSource.INGEST, None)
        if key.startswith(UPLOADS_PREFIX):
            parts = key[len(UPLOADS_PREFIX) :].split("/")
            if len(parts) == 3 and is_valid_uid(parts[0]) and _APP_JOB_ID.match(parts[1]) and parts[2] == UPLOAD_NAME:
                return cls(bucket, key, etag, size, parts[1], JobSource.APP, parts[0])
        raise UnexpectedKey(f"{key!r} is not an upload key (uploads/{{uid}}/{{job_id}}/scan or ingest/...)")
