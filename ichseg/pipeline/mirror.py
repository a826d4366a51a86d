"""Mirroring results to Firebase Storage, where the mobile app reads them.

The S3 results are the record; the mirror is a convenience copy. Uploads are retried with
backoff within one time budget (``ICHSEG_MIRROR_BUDGET_SECONDS``), and if they still fail the job
is DONE anyway with ``mirror_error`` set (the app can fall back to the presigned S3 links the
status API returns). The retries are ichseg's alone: google-cloud-storage's own (a 120 s deadline
per call by default) are switched off, so the budget is the whole cost of an outage.

Credentials: with ``STORAGE_EMULATOR_HOST`` (local stack) the client is anonymous, as the emulator
expects; in the cloud a service-account JSON from Secrets Manager
(``ICHSEG_FIREBASE_CREDENTIALS_SECRET_ARN``), else Google application-default credentials.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ichseg.pipeline.config import PipelineConfig

log = logging.getLogger("ichseg.pipeline.mirror")

REQUEST_TIMEOUT_SECONDS = 10.0
"""One upload's connect/read timeout (a result file is a few MB)."""


@dataclass(frozen=True)
class MirrorFile:
    name: str
    data: bytes
    content_type: str


def anonymous_credential() -> Any:
    """A firebase-admin credential that signs nothing (the storage emulator; token verification)."""
    import google.auth.credentials
    from firebase_admin import credentials

    class _Anonymous(credentials.Base):
        def get_credential(self) -> Any:
            return google.auth.credentials.AnonymousCredentials()

    return _Anonymous()


def firebase_app(name: str, credential: Any, options: dict[str, Any]) -> Any:
    """The named firebase-admin app, created on first use (apps are process-wide singletons)."""
    import firebase_admin

    try:
        return firebase_admin.get_app(name)
    except ValueError:
        return firebase_admin.initialize_app(credential, options, name=name)


def firebase_credential(config: PipelineConfig, secrets: Callable[[], Any] | None) -> Any:
    """The credential firebase-admin signs with: anonymous for the storage emulator, else the
    service-account JSON in Secrets Manager, else Google application-default credentials."""
    from firebase_admin import credentials

    if config.storage_emulator_host:
        return anonymous_credential()
    if config.firebase_credentials_secret_arn and secrets is not None:
        secret = secrets().get_secret_value(SecretId=config.firebase_credentials_secret_arn)["SecretString"]
        return credentials.Certificate(json.loads(secret))
    return credentials.ApplicationDefault()


class FirebaseMirror:
    """Uploads to (and lists) the configured Firebase Storage bucket."""

    def __init__(self, config: PipelineConfig, secrets: Callable[[], Any] | None = None) -> None:
        self.config = config
        self._secrets = secrets

    @cached_property
    def bucket(self) -> Any:
        from firebase_admin import storage

        config = self.config
        credential = firebase_credential(config, self._secrets)
        options: dict[str, Any] = {"storageBucket": config.firebase_bucket}
        if config.firebase_project_id:
            options["projectId"] = config.firebase_project_id
        name = f"ichseg-mirror:{config.firebase_bucket}:{config.storage_emulator_host}"
        return storage.bucket(app=firebase_app(name, credential, options))

    def upload(self, path: str, data: bytes, content_type: str, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        # retry=None: one HTTP attempt per call; mirror_files owns the retries and their budget.
        self.bucket.blob(path).upload_from_string(data, content_type=content_type, timeout=timeout, retry=None)

    def delete(self, prefix: str, timeout: float = REQUEST_TIMEOUT_SECONDS) -> int:
        """Delete every object under ``prefix`` (a job's folder); how many there were.

        Deleting nothing is success (a job without a mirror, or a second delete), and an object
        that disappears between the listing and its delete counts as deleted.
        """
        from google.api_core.exceptions import NotFound

        deleted = 0
        for blob in list(self.bucket.list_blobs(prefix=prefix, timeout=timeout)):
            with contextlib.suppress(NotFound):  # gone since the listing: deleted either way
                blob.delete(timeout=timeout)
            deleted += 1
        return deleted

    def list(self, prefix: str) -> list[dict[str, Any]]:
        return [
            {"name": blob.name, "size": blob.size, "content_type": blob.content_type}
            for blob in self.bucket.list_blobs(prefix=prefix)
        ]


def mirror_files(
    mirror: FirebaseMirror,
    prefix: str,
    files: Sequence[MirrorFile],
    attempts: int,
    sleep: Callable[[float], None],
    backoff_seconds: float = 1.0,
    budget_seconds: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """Upload every file under ``prefix``, retrying each; ``None`` on success, else the last error.

    Everything (attempts, their timeouts, the waits between them) fits in ``budget_seconds``.
    """
    deadline = clock() + budget_seconds
    for item in files:
        for attempt in range(1, attempts + 1):
            remaining = deadline - clock()
            if remaining <= 0:
                return f"mirroring {item.name} to Firebase Storage stopped: its {budget_seconds:g} s budget is spent"
            try:
                mirror.upload(prefix + item.name, item.data, item.content_type, min(remaining, REQUEST_TIMEOUT_SECONDS))
                break
            except Exception as exc:  # any client/transport error: retry, then report (never lose S3)
                error = f"{type(exc).__name__}: {exc}"
                log.warning("mirror of %s failed (attempt %d/%d): %s", item.name, attempt, attempts, error)
                delay = backoff_seconds * 2 ** (attempt - 1)
                if attempt == attempts or clock() + delay >= deadline:
                    return f"mirroring {item.name} to Firebase Storage failed after {attempt} attempts: {error}"[:1000]
                sleep(delay)
    return None
