"""The API's request and response bodies as pydantic models: what the API validates and documents.

The OpenAPI document (``functions/openapi.json``) is generated from these and the routes of
``functions/api.py``, so the closed sets (states, error codes, content types, findings) come from
the code's own enums and tuples: there is no second list to keep in step.

Requests are strict (``strict=True``: ``"12"`` is not an integer, ``true`` is not a size) and
closed (``extra="forbid"``: a misspelt field is an error, not silently ignored), so a body the
schema does not allow is refused with 400 and a reason, never half-accepted.

Bodies are parsed by :func:`read_json_body`, which refuses what Python's JSON parser would turn
into a crash (an integer of more digits than ``int()`` converts: a 500) or into a value no schema
expects (``NaN``, ``Infinity``, or a number beyond a double, which becomes ``inf``).
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ichseg.errors import ErrorCode
from ichseg.findings import Finding
from ichseg.input_warnings import InputWarning
from ichseg.pipeline.config import ALLOWED_UPLOAD_TYPES
from ichseg.pipeline.devices import Platform
from ichseg.pipeline.jobs import JobState, MirrorState

UploadContentType = StrEnum("UploadContentType", {t: t for t in ALLOWED_UPLOAD_TYPES})  # type: ignore[misc]
"""The upload types the API accepts, as an enum so the schema lists them (one source: the config)."""

DEFAULT_UPLOAD_MAX_BYTES = 512 * 1024 * 1024
"""template.yaml's ``UploadMaxBytes`` default: the schema's ``maximum`` for ``size_bytes``. Documented,
not validated by the model: ``create_scan`` checks the deployment's own limit and answers 413
``upload_too_large`` (which a client can tell from a malformed request's 400)."""

LIST_LIMIT_MAX = 100
"""The most jobs one ``GET /v1/scans`` page holds."""


MAX_INTEGER_DIGITS = 100
"""The longest integer a request body may hold. No field takes more than 10 digits, and this is far
below Python's int-string conversion limit (4,300 digits by default, configurable down to 640):
longer ones are refused before ``int()`` is called, whatever the interpreter's setting."""


class UnreadableNumber(ValueError):
    """A number in a JSON body that this API refuses to read; ``str()`` says why (never the number)."""


def read_json_body(body: str) -> Any:
    """The JSON body as Python; :class:`UnreadableNumber` for a number that cannot be a value here."""
    return json.loads(body, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INTEGER_DIGITS:
        raise UnreadableNumber(f"an integer of {digits} digits; at most {MAX_INTEGER_DIGITS} are read")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnreadableNumber("a number beyond the range of a double")
    return value


def _no_constant(name: str) -> float:
    # json.loads accepts NaN, Infinity and -Infinity, which JSON (RFC 8259) does not have.
    raise UnreadableNumber(f"{name}, which is not JSON")


def _integral_float(value: object) -> object:
    # JSON Schema's "integer" includes 5.0 (JSON has one number type); strict pydantic would not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StartScanRequest(_Request):
    """``POST /v1/scans``: what the app will upload."""

    # strict=False here only: a strict enum field wants an enum instance, and JSON has only its value.
    content_type: UploadContentType = Field(
        strict=False, description="The Content-Type the upload will declare (the policy pins it)."
    )
    # Field before BeforeValidator: in that order pydantic writes JSON Schema's ``minimum`` (the other
    # way round it writes ``ge``, which no validator or generator reads).
    size_bytes: (
        Annotated[
            int, Field(ge=1, json_schema_extra={"maximum": DEFAULT_UPLOAD_MAX_BYTES}), BeforeValidator(_integral_float)
        ]
        | None
    ) = Field(
        default=None,
        description="The file's size in bytes, if known. Over the deployment's upload limit "
        f"({DEFAULT_UPLOAD_MAX_BYTES} bytes unless configured lower) it is refused at once: 413 `upload_too_large`.",
    )


class RegisterDeviceRequest(_Request):
    """``POST /v1/devices``: this app install's FCM registration token, to hear when a scan ends."""

    token: str = Field(
        min_length=20,
        max_length=4096,
        pattern=r"^[A-Za-z0-9_:\-]+$",
        description="The FCM registration token (`FirebaseMessaging.instance.getToken()`).",
    )
    # strict=False here only, as for content_type: JSON has the enum's value, not the enum.
    platform: Platform = Field(strict=False, description="Where the app runs.")


class RegisteredDevice(BaseModel):
    """A device that is told (one FCM notification) when each of the user's scans is DONE or FAILED.
    The token is not echoed back: ``device_id`` names the device."""

    device_id: str = Field(description="Pass to `DELETE /v1/devices/{device_id}` to stop notifications.")
    platform: Platform
    registered_at: str = Field(description="ISO-8601 UTC.")
    devices_max: int = Field(description="Devices a user may register; beyond it the oldest is dropped.")


class ProblemCode(StrEnum):
    """Why the API refused a request: the stable ``code`` of every problem it answers (branch on this,
    not on ``detail``, which is for people and may change)."""

    INVALID_REQUEST = "invalid_request"
    INVALID_CURSOR = "invalid_cursor"
    UNSUPPORTED_UPLOAD_TYPE = "unsupported_upload_type"
    UNAUTHENTICATED = "unauthenticated"
    ACCOUNT_NOT_USABLE = "account_not_usable"
    SCAN_NOT_FOUND = "scan_not_found"
    SCAN_IN_PROGRESS = "scan_in_progress"
    DEVICE_NOT_FOUND = "device_not_found"
    NOT_A_MULTIPART_UPLOAD = "not_a_multipart_upload"
    UPLOAD_INCOMPLETE = "upload_incomplete"
    UPLOAD_TOO_LARGE = "upload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    INTERNAL_ERROR = "internal_error"

    @property
    def status(self) -> int:
        """The HTTP status this problem is always answered with."""
        return _PROBLEMS[self][0]

    @property
    def phrase(self) -> str:
        """RFC 9457 ``title``: the same for every occurrence of the problem."""
        return _PROBLEMS[self][1]

    @property
    def type_uri(self) -> str:
        """RFC 9457 ``type``: a URI naming the problem (a URN: nothing to dereference)."""
        return f"urn:ichseg:problem:{self.value}"


_PROBLEMS: dict[ProblemCode, tuple[int, str]] = {
    ProblemCode.INVALID_REQUEST: (400, "The request does not match the API's schema"),
    ProblemCode.INVALID_CURSOR: (400, "The next cursor is not one this API returned to this user"),
    ProblemCode.UNSUPPORTED_UPLOAD_TYPE: (400, "The upload's content type is not one ichseg reads"),
    ProblemCode.UNAUTHENTICATED: (401, "No authenticated user"),
    ProblemCode.ACCOUNT_NOT_USABLE: (403, "This account cannot upload scans"),
    ProblemCode.SCAN_NOT_FOUND: (404, "No such scan of yours"),
    ProblemCode.SCAN_IN_PROGRESS: (409, "The scan is still being processed"),
    ProblemCode.DEVICE_NOT_FOUND: (404, "No such device of yours"),
    ProblemCode.NOT_A_MULTIPART_UPLOAD: (409, "The scan is not being uploaded in parts (any more)"),
    ProblemCode.UPLOAD_INCOMPLETE: (409, "Parts of the upload are missing or of the wrong size"),
    ProblemCode.UPLOAD_TOO_LARGE: (413, "The upload is over this deployment's size limit"),
    ProblemCode.UNSUPPORTED_MEDIA_TYPE: (415, "The request body must be application/json"),
    ProblemCode.INTERNAL_ERROR: (500, "ichseg failed to answer; the request may be retried"),
}

PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(BaseModel):
    """Every 4xx and 5xx the API itself answers: RFC 9457 problem details (``application/problem+json``)."""

    type: str = Field(description="A URI naming the problem: `urn:ichseg:problem:<code>`.")
    title: str = Field(description="The problem in a few words, the same for every occurrence.")
    status: int = Field(description="The HTTP status, repeated.")
    detail: str = Field(description="This occurrence, for people (for 400: each field and what was wrong).")
    code: ProblemCode = Field(description="Stable and machine-readable: branch on this.")

    @classmethod
    def of(cls, code: ProblemCode, detail: str) -> Problem:
        """The problem ``code``, with ``detail`` for this occurrence."""
        return cls(type=code.type_uri, title=code.phrase, status=code.status, detail=detail, code=code)


class GatewayError(BaseModel):
    """A refusal by API Gateway itself, before the API's code runs (401, 403): the status is the code.
    HTTP APIs do not let a deployment reshape these bodies."""

    message: str


class UploadForm(BaseModel):
    url: str = Field(description="Where to POST the multipart form.")
    fields: dict[str, str] = Field(
        description="Form fields to send verbatim before the file (key, policy, signature...)."
    )
    method: Literal["POST"]
    file_field: Literal["file"]


class UploadPart(BaseModel):
    """One part of a multipart upload: PUT its bytes to ``url`` (no other header is needed)."""

    part_number: int = Field(description="1-based.")
    url: str = Field(description="Presigned S3 UploadPart URL.")
    offset: int = Field(description="Where the part starts in the file.")
    size: int = Field(description="How many bytes it takes (the last part may be shorter).")


class MultipartUpload(BaseModel):
    """A large scan sent part by part (S3 multipart upload), which survives a dropped connection:
    PUT each part to its URL, then ``POST complete_url``. After an interruption,
    ``GET status_url`` lists the parts S3 has and fresh URLs for the missing ones."""

    part_size: int
    parts_total: int
    parts: list[UploadPart] = Field(description="The parts still to send (all of them at first).")
    parts_received: list[int] = Field(description="The part numbers S3 already holds.")
    expires_in: int = Field(description="Seconds the part URLs stay valid (ask status_url for new ones).")
    status_url: str
    complete_url: str


class UploadTicket(BaseModel):
    """``POST /v1/scans`` 201: the job (RECEIVED) and how to upload its scan: one presigned POST
    (``upload``), or for a declared size over the multipart threshold, a resumable ``multipart``."""

    job_id: str
    state: Literal["RECEIVED"]
    upload: UploadForm | None = Field(description="The presigned POST; null for a multipart upload.")
    multipart: MultipartUpload | None = Field(
        default=None, description="Set for a large upload: send it part by part (resumable)."
    )
    content_type: str
    max_bytes: int
    expires_in: int = Field(description="Seconds the presigned POST stays valid.")
    status_url: str


class Progress(BaseModel):
    done: int = Field(description="Slices segmented so far.")
    total: int = Field(description="Slices in the scan (0 until the upload is split).")
    batches_done: int
    batches_total: int


class JobError(BaseModel):
    code: ErrorCode | None = Field(description="Machine-readable; `reason` says it for people.")
    reason: str | None = Field(description="For people.")


class Subtypes(BaseModel):
    epidural: float | None = None
    subdural: float | None = None
    intraparenchymal: float | None = None
    intraventricular: float | None = None
    subarachnoid: float | None = None


class ModelInfo(BaseModel):
    name: str | None = None
    version: str | None = None


class ScanWarning(BaseModel):
    """Input the model reads poorly (too few slices, thin or thick slices, a scan that does not cover
    the brain): the answer stands, with less trust. Show ``message`` beside the finding."""

    code: InputWarning = Field(description="Machine-readable; `message` says it for people.")
    message: str


class Headline(BaseModel):
    """The report's headline when DONE."""

    finding: Finding | None = None
    hemorrhage_probability: float | None = None
    slices_with_hemorrhage: int | None = None
    subtypes: Subtypes | None = Field(
        default=None, description="Calibrated subtype probabilities; null without a subtype head."
    )
    volume_ml: float | None = None
    volume_note: str | None = Field(
        default=None, description="Why there is no volume, or why a detected hemorrhage measures 0 mL."
    )
    warnings: list[ScanWarning] = Field(
        default_factory=list, description="Why this answer deserves less trust than usual; empty when none."
    )
    model: ModelInfo | None = None


def _absent(value: object) -> bool:
    return value is None


class ResultLinks(BaseModel):
    """Short-lived presigned S3 GET links, when DONE. A result the job did not make (no SEG for a
    video) is left out rather than null: clients iterate the links they get."""

    overlay: str | None = Field(
        default=None, exclude_if=_absent, description="H.264 MP4 (yuv420p, faststart) with the hemorrhage outlined."
    )
    report: str | None = Field(
        default=None, exclude_if=_absent, description="report.json: per-slice probability, subtypes, area, volume."
    )
    contact_sheet: str | None = Field(default=None, exclude_if=_absent)
    seg: str | None = Field(default=None, exclude_if=_absent, description="DICOM SEG (DICOM input only).")
    sr: str | None = Field(
        default=None,
        exclude_if=_absent,
        description="DICOM SR: TID 1500 measurement report on the SEG (DICOM input only).",
    )


class SliceLinks(BaseModel):
    """One slice's viewer data: presigned links to its plain windowed frame and its mask."""

    id: str
    frame: str = Field(description="JPEG of the windowed slice.")
    mask: str = Field(description="PNG of the slice's hemorrhage mask.")


class Mirror(BaseModel):
    """The Firebase Storage copy of the video and report (app jobs). The job is DONE whatever its
    state: the `results` links are the record, and what to show while the copy is not there."""

    prefix: str
    files: list[str]
    state: MirrorState | None = Field(
        description="MIRRORED: the files are in Firebase Storage. PENDING: not yet; retried with a growing "
        "backoff (wait, or use the `results` links). FAILED: given up (use the `results` links). "
        "Null for jobs finished before the state was recorded."
    )
    attempts: int = Field(description="Copy attempts so far (the first within the assembly, then each retry).")
    error: str | None = Field(description="Why the last attempt failed; null once the copy is there.")


class ScanStatus(BaseModel):
    """``GET /v1/scans/{job_id}``: the job as its owner sees it."""

    job_id: str
    state: JobState = Field(
        description="RECEIVED -> SPLIT -> SEGMENTING -> ASSEMBLING -> DONE, or FAILED from any state."
    )
    progress: Progress
    created_at: str = Field(description="ISO-8601 UTC.")
    error: JobError | None = Field(description="Set when FAILED.")
    scan: dict[str, object] | None = Field(description="What was read (format, slices, height, width, spacing).")
    result: Headline | None
    results: ResultLinks | None
    results_expire_in: int | None = Field(default=None, description="Seconds the `results` links stay valid.")
    slices: list[SliceLinks] | None = Field(
        default=None, description="When DONE: every slice's frame and mask links (the viewer's data), in key order."
    )
    timings: dict[str, float] = Field(description='Seconds between states (e.g. "split->segmenting").')
    mirror: Mirror | None = Field(description="The Firebase Storage copy of the video and report.")
    viewer: str = Field(description="The results viewer for this job, relative to the API's base URL.")


class ScanSummary(BaseModel):
    """One job in ``GET /v1/scans``."""

    job_id: str
    state: JobState
    created_at: str
    error: JobError | None
    result: Headline | None
    status_url: str


class ScanList(BaseModel):
    """``GET /v1/scans``: the caller's jobs, newest first."""

    scans: list[ScanSummary]
    next: str | None = Field(description="Pass as `next` for the following page; null on the last page.")
