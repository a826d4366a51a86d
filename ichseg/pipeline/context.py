"""What every stage needs, built once per Lambda container from the configuration.

The stage functions take a :class:`PipelineContext` explicitly (no module globals), so the Lambda
handlers, the local stack, the benchmark and the tests compose the same functions with their own
clients, clock and metrics sink.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from ichseg.pipeline.config import PipelineConfig
from ichseg.pipeline.jobs import JobStore

PUT_THREADS = 8
"""Concurrent PUTs of one batch's per-slice files (boto3's pool holds 10 connections)."""


class MetricsSink(Protocol):
    """Where stages report numbers; Powertools' ``Metrics`` (EMF) satisfies it as is."""

    def add_metric(self, name: str, unit: Any, value: float) -> None: ...


class NullMetrics:
    """Discards metrics (CLI tools, unit tests)."""

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        return None


@dataclass
class PipelineContext:
    """Configuration, AWS clients, the job store, the endpoint and the Firebase mirror."""

    config: PipelineConfig
    metrics: MetricsSink = field(default_factory=NullMetrics)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    session: Any = None
    """A boto3 Session; default: a new one (reads credentials and region like any boto3 client)."""

    @classmethod
    def from_env(cls, metrics: MetricsSink | None = None) -> PipelineContext:
        return cls(PipelineConfig.from_env(), metrics or NullMetrics())

    def _client(self, service: str, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        session = self.session or boto3.session.Session()
        return session.client(service, config=Config(**config) if config else None)

    @cached_property
    def s3(self) -> Any:
        # SigV4 everywhere: presigned POSTs/GETs signed with SigV2 are refused by newer regions.
        return self._client("s3", signature_version="s3v4")

    @cached_property
    def sqs(self) -> Any:
        return self._client("sqs")

    @cached_property
    def dynamodb(self) -> Any:
        return self._client("dynamodb")

    @cached_property
    def store(self) -> JobStore:
        self.config.require("table")
        return JobStore(self.dynamodb, self.config.table, ttl_days=self.config.job_ttl_days, clock=self.clock)

    @cached_property
    def endpoint(self) -> Any:
        """The :class:`~ichseg.pipeline.endpoint.EndpointClient` for the configured endpoint."""
        from ichseg.pipeline.endpoint import EndpointClient, HttpTransport, RetryPolicy, SageMakerTransport

        config = self.config
        policy = RetryPolicy(attempts=config.endpoint_attempts, base_seconds=config.endpoint_backoff_seconds)

        def count_retry(attempt: int, error: Exception) -> None:
            self.metrics.add_metric("EndpointRetries", "Count", 1)

        if config.endpoint_url:
            transport: Any = HttpTransport(config.endpoint_url, config.endpoint_timeout_seconds)
        elif config.endpoint_name:
            client = self._client(
                "sagemaker-runtime",
                # One retry policy for both transports: ours (botocore's would multiply it).
                retries={"total_max_attempts": 1, "mode": "standard"},
                read_timeout=config.endpoint_timeout_seconds,
                connect_timeout=5,
            )
            transport = SageMakerTransport(client, config.endpoint_name)
        else:
            from ichseg.pipeline.config import ConfigError

            raise ConfigError("missing configuration: ICHSEG_ENDPOINT_NAME or ICHSEG_ENDPOINT_URL")
        return EndpointClient(transport, policy, sleep=self.sleep, on_retry=count_retry)

    @cached_property
    def mirror(self) -> Any:
        """The Firebase Storage mirror, or ``None`` when no Firebase bucket is configured."""
        if not self.config.firebase_bucket:
            return None
        from ichseg.pipeline.mirror import FirebaseMirror

        return FirebaseMirror(self.config, secrets=lambda: self._client("secretsmanager"))

    @cached_property
    def messenger(self) -> Any:
        """The FCM sender (:class:`~ichseg.pipeline.push.FirebaseMessenger`); used only when
        ``ICHSEG_PUSH_PROJECT_ID`` is set."""
        from ichseg.pipeline.push import FirebaseMessenger

        return FirebaseMessenger(self.config, secrets=lambda: self._client("secretsmanager"))

    # ------------------------------------------------------------------ small S3 helpers

    def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=body, ContentType=content_type)

    def put_once(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> bool:
        """PUT unless the object exists (S3's conditional write, ``If-None-Match: *``): False if it
        was already there. Results are written once however often a message is delivered; a
        result's content depends only on the job's parts, so the first copy is the copy."""
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                return False
            raise  # 409 ConditionalRequestConflict (a concurrent writer): SQS redelivers, then it exists
        return True

    @cached_property
    def _writers(self) -> ThreadPoolExecutor:
        """The threads :meth:`put_once_all` writes with: started once per warm context (a Lambda
        container keeps them between invocations), not for every batch."""
        return ThreadPoolExecutor(max_workers=PUT_THREADS, thread_name_prefix="ichseg-put")

    def put_once_all(self, objects: Mapping[str, bytes]) -> None:
        """:meth:`put_once` every object (key -> bytes, Content-Type from the key), :data:`PUT_THREADS`
        at a time; the first failure raises (the message is redelivered and the written ones are kept)."""
        from ichseg.media_types import media_type_of

        list(self._writers.map(lambda item: self.put_once(item[0], item[1], media_type_of(item[0])), objects.items()))

    def delete_prefix(self, prefix: str, every_version: bool = False) -> int:
        """Delete the objects under ``prefix``; how many. The bucket is versioned: by default only the
        current objects go (older versions stay for the lifecycle rules, and a write-once check sees
        the delete marker: a retried job writes its results again); with ``every_version``, every
        version and delete marker too (an owner's DELETE leaves nothing). A failed key raises."""
        bucket = self.config.bucket
        listing = "list_object_versions" if every_version else "list_objects_v2"
        deleted = 0
        for page in self.s3.get_paginator(listing).paginate(Bucket=bucket, Prefix=prefix):
            if every_version:
                entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
                objects = [{"Key": e["Key"], "VersionId": e["VersionId"]} for e in entries]
            else:
                objects = [{"Key": e["Key"]} for e in page.get("Contents", [])]
            for start in range(0, len(objects), 1000):  # DeleteObjects takes at most 1000 keys
                answer = self.s3.delete_objects(
                    Bucket=bucket, Delete={"Objects": objects[start : start + 1000], "Quiet": True}
                )
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise RuntimeError(
                        f"deleting {first.get('Key')} failed: {first.get('Code')} {first.get('Message')}"
                    )
            deleted += len(objects)
        return deleted

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.config.bucket, Key=key)["Body"].read()
