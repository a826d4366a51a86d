"""Study completion: every complete study becomes one content-addressed zip under ``ingest/``.

A study is complete once none of its series got an instance for ``idle_seconds`` (DICOM has no "end
of study" message). All its series go in one zip -- one job, whose split stage chooses the series to
segment (:mod:`ichseg.readers.series_selection`), so the PACS gets one SEG + SR per study -- to
``ingest/{site}/{sha256}.zip``; the pipeline names the job after that key alone
(:func:`ichseg.pipeline.keys.ingest_job_id`). A ``head_object`` comes first, so a study already
uploaded (a re-send of any part of it, or a gateway killed between the PUT and the move to
``sent/``) is not PUT again and starts no second S3 event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from gateway.spool import CLAIMED, Spool, StudyRef
from ichseg.pipeline import keys
from ichseg.pipeline.context import MetricsSink

log = logging.getLogger("gateway.uploader")

MULTIPART_THRESHOLD = 64 * 1024 * 1024
"""Study zips up to this size go in one PUT (a head CT study is often 50-500 MB: larger ones in parts)."""


@dataclass(frozen=True)
class Upload:
    """What became of one complete study."""

    study: StudyRef
    key: str
    series: int
    instances: int
    created: bool
    """False: the object was already there (a re-send of an uploaded study): no new job."""


class Uploader:
    """Uploads complete studies from the spool (:meth:`run_once` is one pass; :meth:`run` loops)."""

    def __init__(
        self,
        spool: Spool,
        s3: Any,
        bucket: str,
        idle_seconds: float,
        retention_seconds: float,
        metrics: MetricsSink,
        wants_overlay: Callable[[str], bool] = lambda site: False,
    ) -> None:
        self.wants_overlay = wants_overlay
        """Per site: ask the pipeline for the overlay series (the upload's ``overlay-series`` metadata)."""
        self.spool = spool
        self.s3 = s3
        self.bucket = bucket
        self.idle_seconds = idle_seconds
        self.retention_seconds = retention_seconds
        self.metrics = metrics

    def run(self, stop: threading.Event, interval: float) -> None:
        """Pass over the spool every ``interval`` seconds until ``stop`` is set; a failed pass is logged
        and retried after a backoff that doubles up to a minute (an S3 outage is not a log flood)."""
        failures = 0
        while not stop.is_set():
            try:
                self.run_once()
                failures = 0
            except Exception:  # S3 unreachable, disk trouble: the spool keeps everything, try again
                failures += 1
                log.exception("gateway upload pass failed (%d in a row); retrying", failures)
            stop.wait(interval if failures == 0 else min(60.0, interval * 2**failures))

    def run_once(self) -> list[Upload]:
        """Upload what an earlier run claimed, claim and upload the idle studies, expire old sent ones."""
        done = []
        for ref in self.spool.studies(CLAIMED):
            if self.spool.claimed_instances(ref) == 0:
                # Killed after its last instance moved to sent/ (so after S3 had it): only tidy up.
                self.spool.mark_sent(ref)
                continue
            done.append(self.upload(ref))
        for ref in self.spool.idle(self.idle_seconds):
            if self.spool.claim(ref):
                done.append(self.upload(ref))
        expired = self.spool.expire_sent(self.retention_seconds)
        if expired:
            log.info("spool: forgot %d sent studies past their retention", expired)
        return done

    def upload(self, ref: StudyRef) -> Upload:
        """Zip the claimed study with every series, PUT it unless S3 has it already, move it to ``sent/``."""
        packed = self.spool.pack(ref)
        try:
            key = keys.gateway_ingest_key(ref.site, packed.digest)
            created = not self._exists(key)
            if created:
                from boto3.s3.transfer import TransferConfig

                extra: dict[str, Any] = {"ContentType": "application/zip"}
                if self.wants_overlay(ref.site):
                    extra["Metadata"] = {keys.OVERLAY_SERIES_METADATA: "yes"}
                self.s3.upload_file(
                    str(packed.path),
                    self.bucket,
                    key,
                    ExtraArgs=extra,
                    Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD),
                )
        finally:
            packed.path.unlink(missing_ok=True)
        job_id = keys.ingest_job_id(key, "")
        self.spool.mark_sent(ref, {"key": key, "job_id": job_id})
        log.info(
            "study %s: %d series, %d instances %s",
            ref,
            packed.series,
            packed.instances,
            f"uploaded as job {job_id}" if created else f"already uploaded (job {job_id})",
        )
        self.metrics.add_metric("GatewayStudiesUploaded" if created else "GatewayStudiesResent", "Count", 1)
        return Upload(ref, key, packed.series, packed.instances, created)

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True
