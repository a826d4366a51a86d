"""The pipeline's configuration: environment variables only, identical names in the cloud and locally.

The cloud (template.yaml) and the local stack set the same variables; local mode differs only by
``AWS_ENDPOINT_URL`` (boto3 >= 1.28 sends every service there, i.e. to moto),
``AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME`` (the local inference server) and ``STORAGE_EMULATOR_HOST``
(the Firebase Storage emulator). Nothing in the code asks "am I local?".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ichseg.endpoint_protocol import CONTEXT_SLICES as _CONTEXT_SLICES
from ichseg.endpoint_protocol import MAX_SLICES_PER_REQUEST
from ichseg.endpoint_protocol import SAGEMAKER_MAX_PAYLOAD_BYTES as _SAGEMAKER_MAX_PAYLOAD_BYTES
from ichseg.limits import MiB
from ichseg.media_types import UPLOAD_TYPES

# ichseg.windowing's DEFAULT_WINDOW.name, repeated rather than imported: windowing imports numpy,
# and the API and authorizer images (infrastructure/lambda/Dockerfile.api) import this module
# without numpy installed. tests/pipeline/test_lean_functions.py checks that the copy equals the original.
_DEFAULT_WINDOW_NAME = "ct-ich-brain"

REQUEST_BYTES_BUDGET = _SAGEMAKER_MAX_PAYLOAD_BYTES - 64 * 1024
"""SageMaker's 6 MB request cap, less room for the .npy header and HTTP framing."""

ALLOWED_UPLOAD_TYPES = tuple(str(kind) for kind in UPLOAD_TYPES)
"""The upload Content-Types as strings (:data:`ichseg.media_types.UPLOAD_TYPES`)."""


class ConfigError(RuntimeError):
    """A required setting is missing or malformed: a deployment mistake, not a user's."""


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the functions read from their environment."""

    bucket: str = ""
    table: str = ""
    segment_queue_url: str = ""
    assemble_queue_url: str = ""
    delivery_queue_url: str = ""
    """The DICOM gateway's queue: a DONE hospital (ingest) job's id is sent here; empty: no gateway."""
    ingest_queue_url: str = ""
    """Where a retried job's upload event is sent again (:mod:`ichseg.pipeline.retry`)."""
    mirror_queue_url: str = ""
    """Where an app job whose Firebase copy missed the assembly's budget is sent to be retried (the
    mirror function); empty: no retries, such a copy is given up at once (FAILED)."""
    endpoint_name: str = ""
    """SageMaker real-time endpoint, called through boto3 ``sagemaker-runtime``."""
    endpoint_url: str = ""
    """Alternative: a plain HTTP endpoint (EC2), ``POST {endpoint_url}/invocations``."""
    batch_slices: int = 16
    job_deadline_seconds: int = 900
    upload_max_bytes: int = 512 * MiB
    upload_url_seconds: int = 300
    result_url_seconds: int = 600
    job_ttl_days: int = 30
    max_receive_count: int = 3
    """Must match the queues' redrive policy: the receive that is the last one fails the job."""
    endpoint_attempts: int = 5
    endpoint_backoff_seconds: float = 0.5
    endpoint_timeout_seconds: float = 60.0
    mirror_attempts: int = 3
    mirror_budget_seconds: float = 30.0
    """All the time mirroring one job may take, retries included: well inside the assemble function's
    timeout (300 s), so a Firebase outage delays a DONE by this much at most, never times it out."""
    mirror_backoff_seconds: float = 60.0
    """The wait before a failed copy's first retry; it doubles after each failed retry (the mirror
    message's visibility timeout), so the mirror queue's receives span hours of an outage."""
    scan_head_path: str = ""
    """The scan head's ONNX file (``ICHSEG_SCAN_HEAD``); empty: the one shipped beside the code
    (:data:`ichseg.scan_context.SCAN_HEAD`). A head for another model is not used (the report says so)."""
    window: str = _DEFAULT_WINDOW_NAME
    """Window for HU inputs (DICOM, NIfTI); must be the model's (model metadata ``window``)."""
    video_fps: float = 5.0
    firebase_bucket: str = ""
    firebase_project_id: str = ""
    firebase_credentials_secret_arn: str = ""
    multipart_threshold_bytes: int = 64 * MiB
    """Uploads declared larger than this are S3 multipart uploads (resumable, part by part)."""
    multipart_part_bytes: int = 16 * MiB
    """The part size of a multipart upload (S3's minimum is 5 MiB; at most 10,000 parts)."""
    push_project_id: str = ""
    """The Firebase project FCM pushes go through (:mod:`ichseg.pipeline.push`); empty: no push."""
    """Secrets Manager id of a service-account JSON for Firebase Storage (cloud); unused with the emulator."""
    storage_emulator_host: str = ""
    aws_endpoints: tuple[tuple[str, str], ...] = ()
    """The ``AWS_ENDPOINT_URL*`` overrides in force: part of the identity of the clients built."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PipelineConfig:
        env = os.environ if environ is None else environ

        def text(name: str, default: str = "") -> str:
            return env.get(name, default).strip()

        def number(name: str, default: float, kind: type = int) -> float:
            raw = text(name)
            if not raw:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None

        return cls(
            bucket=text("ICHSEG_BUCKET"),
            table=text("ICHSEG_TABLE"),
            segment_queue_url=text("ICHSEG_SEGMENT_QUEUE_URL"),
            assemble_queue_url=text("ICHSEG_ASSEMBLE_QUEUE_URL"),
            delivery_queue_url=text("ICHSEG_DELIVERY_QUEUE_URL"),
            ingest_queue_url=text("ICHSEG_INGEST_QUEUE_URL"),
            mirror_queue_url=text("ICHSEG_MIRROR_QUEUE_URL"),
            endpoint_name=text("ICHSEG_ENDPOINT_NAME"),
            endpoint_url=text("ICHSEG_ENDPOINT_URL").rstrip("/"),
            batch_slices=int(number("ICHSEG_BATCH_SLICES", 16)),
            job_deadline_seconds=int(number("ICHSEG_JOB_DEADLINE_SECONDS", 900)),
            upload_max_bytes=int(number("ICHSEG_UPLOAD_MAX_BYTES", 512 * MiB)),
            upload_url_seconds=int(number("ICHSEG_UPLOAD_URL_SECONDS", 300)),
            result_url_seconds=int(number("ICHSEG_RESULT_URL_SECONDS", 600)),
            job_ttl_days=int(number("ICHSEG_JOB_TTL_DAYS", 30)),
            max_receive_count=int(number("ICHSEG_MAX_RECEIVE_COUNT", 3)),
            endpoint_attempts=int(number("ICHSEG_ENDPOINT_ATTEMPTS", 5)),
            endpoint_backoff_seconds=float(number("ICHSEG_ENDPOINT_BACKOFF_SECONDS", 0.5, float)),
            endpoint_timeout_seconds=float(number("ICHSEG_ENDPOINT_TIMEOUT_SECONDS", 60.0, float)),
            mirror_attempts=int(number("ICHSEG_MIRROR_ATTEMPTS", 3)),
            mirror_budget_seconds=float(number("ICHSEG_MIRROR_BUDGET_SECONDS", 30.0, float)),
            mirror_backoff_seconds=float(number("ICHSEG_MIRROR_BACKOFF_SECONDS", 60.0, float)),
            scan_head_path=text("ICHSEG_SCAN_HEAD"),
            window=text("ICHSEG_WINDOW", _DEFAULT_WINDOW_NAME),
            video_fps=float(number("ICHSEG_VIDEO_FPS", 5.0, float)),
            firebase_bucket=text("ICHSEG_FIREBASE_BUCKET"),
            firebase_project_id=text("FIREBASE_PROJECT_ID"),
            firebase_credentials_secret_arn=text("ICHSEG_FIREBASE_CREDENTIALS_SECRET_ARN"),
            push_project_id=text("ICHSEG_PUSH_PROJECT_ID"),
            multipart_threshold_bytes=int(number("ICHSEG_MULTIPART_THRESHOLD_BYTES", 64 * MiB)),
            multipart_part_bytes=int(number("ICHSEG_MULTIPART_PART_BYTES", 16 * MiB)),
            storage_emulator_host=text("STORAGE_EMULATOR_HOST"),
            aws_endpoints=tuple(sorted((k, v) for k, v in env.items() if k.startswith("AWS_ENDPOINT_URL"))),
        )

    def require(self, *names: str) -> None:
        """Fail loudly, naming the environment variable, when a function lacks a setting it needs."""
        env_names = {
            "bucket": "ICHSEG_BUCKET",
            "table": "ICHSEG_TABLE",
            "segment_queue_url": "ICHSEG_SEGMENT_QUEUE_URL",
            "assemble_queue_url": "ICHSEG_ASSEMBLE_QUEUE_URL",
            "ingest_queue_url": "ICHSEG_INGEST_QUEUE_URL",
            "firebase_project_id": "FIREBASE_PROJECT_ID",
        }
        missing = [env_names.get(n, n) for n in names if not getattr(self, n)]
        if missing:
            raise ConfigError(f"missing configuration: {', '.join(missing)}")

    def slices_per_request(self, height: int, width: int) -> int:
        """Slices per endpoint request: the configured batch, capped by the payload budget.

        A 512x512 slice is 256 KiB, so 23 fit in 6 MB; a 650x650 video frame is 413 KiB, so 14 do
        (12 of the batch and its two context slices).
        """
        by_bytes = max(1, REQUEST_BYTES_BUDGET // max(1, height * width))
        # The request also carries CONTEXT_SLICES neighbours on each side of the batch.
        room = min(MAX_SLICES_PER_REQUEST, by_bytes) - 2 * _CONTEXT_SLICES
        return max(1, min(self.batch_slices, room))
