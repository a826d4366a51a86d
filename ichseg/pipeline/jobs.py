"""The job model: one row per scan in DynamoDB, moved through its states by conditional updates.

    RECEIVED -> SPLIT -> SEGMENTING (done/total) -> ASSEMBLING -> DONE
        \\___________\\______________\\_______________\\____________> FAILED (code, reason)

Every transition is a conditional write on the current state, so duplicate S3 events, duplicate
SQS deliveries and concurrent workers cannot move a job backwards or twice: the writer whose
condition holds wins, the others learn they lost and do nothing. Batch completion is a string set
of batch ids (``ADD`` on a set is idempotent per id), so a redelivered segment message never counts
twice, and the one update that sees the last batch done is the one that starts assembly.

Who creates a job: the API, for an app upload (``POST /v1/scans`` writes the row before it hands
out the presigned POST); the split, for a hospital upload under ``ingest/`` (the upload event is
the first news of it). Nothing else does: an app upload event whose row is missing names a job the
API never created, and the split refuses it.

A deleted job stays deleted. ``DELETE /v1/scans/{id}`` does not remove the row: it replaces it,
in one conditional write, by a *tombstone* (``job_id``, ``deleted_at``, ``expires_at``): no
``state``, so no stage's conditional write can match it and :meth:`JobStore.get` reads it as no
job; no ``owner``, so the ``by_owner`` index drops it from every list; no keys, names or results.
The create's ``attribute_not_exists(job_id)`` refuses the spent id, so a late copy of the job's
upload event (S3 and SQS are at-least-once) or a redrive from a dead-letter queue cannot bring the
job back, and the split can tell "deleted" from "never created" in what it logs. The tombstone
expires by TTL with the jobs' retention, and never before any queue could still hold a message
naming the job (:data:`TOMBSTONE_MIN_SECONDS`). Its expiry cannot revive the job either way: an app
upload event that finds no row at all is refused too.

Table layout (``ICHSEG_TABLE``): partition key ``job_id`` (S); GSI ``by_owner`` on ``owner`` (S) +
``created_at`` (S, ISO-8601 UTC, sorts by time) lists a user's jobs (hospital jobs have no owner,
so the index stays sparse); ``expires_at`` (N, epoch seconds) is the TTL attribute. Many natural
attribute names are DynamoDB reserved words (``state`` is not, but ``status``, ``total``,
``source`` ... are), so every expression uses placeholders.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from itertools import pairwise
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from ichseg.errors import ErrorCode


class JobState(StrEnum):
    """Where a job is. ``DONE`` and ``FAILED`` are terminal."""

    RECEIVED = "RECEIVED"
    """The job exists (API call, or an upload event); its upload has not been split yet."""
    SPLIT = "SPLIT"
    """Frames are in S3 in batches; segment messages are being enqueued."""
    SEGMENTING = "SEGMENTING"
    """Batches are at the endpoint; ``done_batches``/``total_batches`` is the progress."""
    ASSEMBLING = "ASSEMBLING"
    """Every batch is segmented; the results are being written."""
    DONE = "DONE"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED)


ACTIVE_STATES = tuple(s for s in JobState if not s.terminal)


class Stage(StrEnum):
    """The part of the pipeline that failed a job (``failed_stage``)."""

    SPLIT = "split"
    SEGMENT = "segment"
    ASSEMBLE = "assemble"
    WATCHDOG = "watchdog"

    @property
    def gave_up(self) -> ErrorCode:
        """The code of a job this stage fails after its last attempt."""
        return {
            Stage.SPLIT: ErrorCode.SPLIT_FAILED,
            Stage.SEGMENT: ErrorCode.SEGMENT_FAILED,
            Stage.ASSEMBLE: ErrorCode.ASSEMBLE_FAILED,
            Stage.WATCHDOG: ErrorCode.DEADLINE_EXCEEDED,
        }[self]


class StageOutcome(StrEnum):
    """What one delivery of a stage's message did (logged by every function, returned to tests)."""

    SPLIT = "split"
    """The upload was read and its batches enqueued."""
    SEGMENTED = "segmented"
    """A batch came back from the endpoint; its masks and frames are in results/ and its part is stored."""
    DONE = "done"
    """The final assembly wrote every result; the job is DONE."""
    DUPLICATE = "duplicate"
    """Already done by an earlier delivery, or being done by another one right now."""
    SKIPPED = "skipped"
    """The job had ended (DONE or FAILED) before this message arrived; for a mirror retry, the job
    has no Firebase copy to make (FAILED, or not an app job)."""
    REJECTED = "rejected"
    """The upload is not a scan ichseg can read; the job FAILED with the reason."""
    FOREIGN = "foreign"
    """The upload's key names a job of another owner or source; nothing was done."""
    UNKNOWN = "unknown"
    """The upload's key names an app job the API never created; nothing was done."""
    DELETED = "deleted"
    """The upload's key names a job its owner deleted (a tombstone); nothing was done."""
    FAILED = "failed"
    """The stage failed the job (e.g. the model changed between batches)."""
    MIRRORED = "mirrored"
    """A retry made a DONE job's Firebase Storage copy (its state is MIRRORED now)."""
    STALE = "stale"
    """The message belongs to an attempt before the job was retried: consumed without work."""
    RETRIED = "retried"
    """The message (redriven from a dead-letter queue) found its job FAILED for a retryable
    reason: the job runs again from its upload (:mod:`ichseg.pipeline.retry`)."""


class DeliveryState(StrEnum):
    """How a DONE hospital job's results (SEG, SR) are getting back to its PACS (the DICOM gateway).

    No state at all: the gateway has not tried yet. ``PENDING``: tried, failed, will retry (the
    queue redelivers); ``DELIVERED``: every result object was stored; ``FAILED``: given up (the last
    receive of the delivery message, or no destination configured for the site).
    """

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


class MirrorState(StrEnum):
    """How a DONE app job's Firebase Storage copy (video and report) is getting there.

    No state: the job has no copy to make (a hospital job, no Firebase bucket configured).
    ``MIRRORED``: the copy is in Firebase Storage. ``PENDING``: the assembly's attempt (within its
    budget) or a later retry failed; the mirror queue retries with a growing backoff, so the app
    waits for it or uses the presigned S3 links meanwhile. ``FAILED``: given up (the mirror
    message's last receive; the message is in the dead-letter queue, alarmed, and a redrive may
    still make it ``MIRRORED``). Whatever the state, the job stays DONE: the S3 results are the record.
    """

    PENDING = "PENDING"
    MIRRORED = "MIRRORED"
    FAILED = "FAILED"


class JobSource(StrEnum):
    """Who sent the scan: the mobile app (a Firebase user) or the hospital DICOM router (IAM)."""

    APP = "app"
    INGEST = "ingest"


@dataclass(frozen=True)
class AttemptLog:
    """A stage's attempts on one job, as the last one left them (see
    :func:`ichseg.pipeline.failures.attempt_noted`: a killed worker leaves ``running`` true)."""

    receive_count: int
    """The delivery that wrote this (SQS's ``ApproximateReceiveCount``)."""
    running: bool
    """True from the start of the attempt's work until it returned or raised: still true after a kill."""
    died: int
    """Earlier attempts that started and never ended."""


@dataclass(frozen=True)
class Job:
    """One job as stored. Timestamps ``*_at`` are epoch seconds (float); ``created_at`` is ISO-8601."""

    job_id: str
    state: JobState
    source: JobSource
    created_at: str
    owner: str | None = None
    """The Firebase uid for app jobs; ``None`` for hospital ingest jobs."""
    upload_key: str = ""
    content_type: str | None = None
    total_batches: int | None = None
    total_slices: int | None = None
    done_batches: frozenset[str] = frozenset()
    done_slices: int = 0
    error_code: ErrorCode | None = None
    error_reason: str | None = None
    failed_stage: Stage | None = None
    results: Mapping[str, str] = field(default_factory=dict)
    """Result name -> S3 key under ``results/{job_id}/``."""
    summary: Mapping[str, Any] = field(default_factory=dict)
    """The report's headline (finding, probability, volume, model) for the status API."""
    scan: Mapping[str, Any] = field(default_factory=dict)
    """What the split saw: format, slices, height, width, spacing."""
    mirror_prefix: str | None = None
    mirror_error: str | None = None
    """Why the last mirror attempt failed (None once the copy is there)."""
    mirror_state: MirrorState | None = None
    """App jobs: the Firebase Storage copy's progress (None: no copy is made)."""
    mirror_attempts: int = 0
    """Mirror attempts so far: the assembly's (within its budget), then one per retry."""
    assembly_enqueued: bool = False
    deadline_at: float | None = None
    expires_at: int | None = None
    stamps: Mapping[str, float] = field(default_factory=dict)
    """State name (lower case) -> when the job entered it, plus ``created``."""
    delivery_state: DeliveryState | None = None
    """Hospital jobs: the results' way back to the PACS (None: not attempted yet)."""
    delivery_attempts: int = 0
    delivery_reason: str | None = None
    """Why the last delivery attempt failed (network and DICOM status only: never patient data)."""
    delivered_objects: frozenset[str] = frozenset()
    """Result names (``seg``, ``sr``) a PACS has stored: a retry sends only the others."""
    multipart_upload_id: str | None = None
    """The S3 multipart upload the app is sending the scan in (large uploads), until it is complete."""
    upload_size: int | None = None
    """A multipart upload's declared size (its parts are planned from it)."""
    generation: int = 0
    """How many times the job was retried (:mod:`ichseg.pipeline.retry`). Every stage message
    carries the generation it was sent for; a message of an earlier one is consumed without work."""

    @property
    def progress(self) -> tuple[int, int]:
        """(done, total) slices; (0, 0) before the split knows the total."""
        return self.done_slices, self.total_slices or 0

    def stage_seconds(self) -> dict[str, float]:
        """Seconds spent between consecutive recorded states (the per-stage timing)."""
        order = ["created", "received", "split", "segmenting", "assembling", "done"]
        seen = [(name, self.stamps[name]) for name in order if name in self.stamps]
        return {f"{a}->{b}": round(tb - ta, 3) for (a, ta), (b, tb) in pairwise(seen)}


STAMP_ATTRIBUTES = {
    "created": "created_ts",
    "received": "received_at",
    "split": "split_at",
    "segmenting": "segmenting_at",
    "assembling": "assembling_at",
    "done": "done_at",
    "failed": "failed_at",
}


TOMBSTONE_MIN_SECONDS = 14 * 86400
"""SQS's longest message retention (the dead-letter queues keep theirs 14 days): a tombstone
outlives every message that could still name its job, whatever ``ICHSEG_JOB_TTL_DAYS`` says."""


class JobNotFound(LookupError):
    """No job with this id."""


class JobDeleted(JobNotFound):
    """The job with this id was deleted: its row is a tombstone, and the id is never used again."""


def utc_iso(epoch: float) -> str:
    """Millisecond ISO-8601 in UTC: lexicographic order is time order (the GSI sort key)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(epoch * 1000) % 1000:03d}Z"


def _number(value: float | int) -> Decimal:
    return Decimal(str(round(value, 3))) if isinstance(value, float) else Decimal(value)


class JobStore:
    """Jobs in one DynamoDB table, through a boto3 ``dynamodb`` client."""

    def __init__(self, client: Any, table: str, ttl_days: int = 30, clock: Any = time.time) -> None:
        self.client = client
        self.table = table
        self.ttl_seconds = ttl_days * 86400
        self.clock = clock
        self._ser = TypeSerializer()
        self._de = TypeDeserializer()

    # ------------------------------------------------------------------ reading

    def get(self, job_id: str) -> Job | None:
        """The job, read consistently (a worker must see the write that just enqueued it); ``None``
        for an unknown or deleted job."""
        item = self._stored(job_id)
        return None if item is None or _is_tombstone(item) else self._job(item)

    def require(self, job_id: str) -> Job:
        """The job; :class:`JobDeleted` for a deleted one, :class:`JobNotFound` for an unknown one."""
        item = self._stored(job_id)
        if item is None:
            raise JobNotFound(job_id)
        if _is_tombstone(item):
            raise JobDeleted(job_id)
        return self._job(item)

    def _stored(self, job_id: str) -> dict[str, Any] | None:
        """The row as stored (a job or a tombstone), read consistently; ``None`` if there is none."""
        item = self.client.get_item(TableName=self.table, Key=self._key(job_id), ConsistentRead=True).get("Item")
        return item or None

    def page_for_owner(
        self, owner: str, limit: int = 20, start: Mapping[str, str] | None = None
    ) -> tuple[list[Job], dict[str, str] | None]:
        """One page of a user's jobs, newest first, and the key to continue from (``None``: last page).

        ``start`` is a key this method returned (``job_id``, ``owner``, ``created_at``); the index
        is eventually consistent, so a job created a moment ago may be missing from its first page.
        """
        request: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": "by_owner",
            "KeyConditionExpression": "#owner = :owner",
            "ExpressionAttributeNames": {"#owner": "owner"},
            "ExpressionAttributeValues": {":owner": {"S": owner}},
            "ScanIndexForward": False,
            "Limit": limit,
        }
        if start:
            request["ExclusiveStartKey"] = {name: {"S": value} for name, value in start.items()}
        response = self.client.query(**request)
        last = response.get("LastEvaluatedKey")
        following = {name: str(self._de.deserialize(value)) for name, value in last.items()} if last else None
        return [self._job(item) for item in response.get("Items", [])], following

    def find(
        self, state: JobState | None = None, source: JobSource | None = None, since: float | None = None
    ) -> Iterator[Job]:
        """Every job (tombstones and other rows left out) in ``state``, from ``source``, created at or
        after ``since`` (epoch seconds): ops' view (``ichseg admin jobs list``). A Scan, as for
        :meth:`overdue`: the table holds a month of jobs."""
        conditions, names, values = ["attribute_exists(#state)"], {"#state": "state"}, {}
        if state is not None:
            conditions.append("#state = :state")
            values[":state"] = {"S": state.value}
        if source is not None:
            conditions.append("#source = :source")
            names["#source"] = "source"
            values[":source"] = {"S": source.value}
        if since is not None:
            conditions.append("#created_ts >= :since")
            names["#created_ts"] = "created_ts"
            values[":since"] = {"N": str(_number(since))}
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": " AND ".join(conditions),
            "ExpressionAttributeNames": names,
        }
        if values:
            request["ExpressionAttributeValues"] = values
        for page in self.client.get_paginator("scan").paginate(**request):
            yield from (self._job(item) for item in page.get("Items", []))

    def overdue(self, now: float | None = None) -> Iterator[Job]:
        """Jobs not yet DONE/FAILED whose deadline has passed (the watchdog's work list).

        A Scan with a filter: the table holds one row per job and expires them by TTL, so it
        stays small; a sparse "active jobs" index would be the next step at high volume.
        """
        now = self.clock() if now is None else now
        names = {"#state": "state", "#deadline": "deadline_at"}
        values = {":now": {"N": str(_number(now))}}
        placeholders = []
        for index, state in enumerate(ACTIVE_STATES):
            values[f":s{index}"] = {"S": state.value}
            placeholders.append(f":s{index}")
        paginator = self.client.get_paginator("scan")
        for page in paginator.paginate(
            TableName=self.table,
            FilterExpression=f"#state IN ({', '.join(placeholders)}) AND #deadline < :now",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ConsistentRead=True,
        ):
            for item in page.get("Items", []):
                yield self._job(item)

    # ------------------------------------------------------------------ creating

    def create(
        self,
        job_id: str,
        source: JobSource,
        owner: str | None,
        upload_key: str,
        deadline_seconds: float,
        content_type: str | None = None,
    ) -> tuple[Job, bool]:
        """Create the job in RECEIVED unless it exists; returns (the stored job, created now?).

        :class:`JobDeleted` if the id belonged to a deleted job: the tombstone keeps it spent.
        """
        now = self.clock()
        item: dict[str, Any] = {
            "job_id": job_id,
            "state": JobState.RECEIVED.value,
            "source": source.value,
            "created_at": utc_iso(now),
            "updated_at": utc_iso(now),
            "created_ts": _number(now),
            "upload_key": upload_key,
            "done_slices": 0,
            "deadline_at": _number(now + deadline_seconds),
            "expires_at": int(now + self.ttl_seconds),
        }
        if owner is not None:
            item["owner"] = owner
        if content_type is not None:
            item["content_type"] = content_type
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self._item(item),
                ConditionExpression="attribute_not_exists(#job_id)",
                ExpressionAttributeNames=_names("#job_id"),
            )
        except ClientError as exc:
            if not _condition_failed(exc):
                raise
            return self.require(job_id), False  # JobDeleted for a tombstone
        return self._job(self._item(item)), True

    # ------------------------------------------------------------------ transitions

    def mark_received(self, job_id: str, deadline_seconds: float) -> bool:
        """The upload arrived: stamp it and restart the deadline clock (RECEIVED only, first time)."""
        now = self.clock()
        return self._update(
            job_id,
            "SET #received_at = :now, #deadline_at = :deadline, #updated_at = :iso",
            "#state = :received AND attribute_not_exists(#received_at)",
            {":now": now, ":deadline": now + deadline_seconds, ":iso": utc_iso(now), ":received": JobState.RECEIVED},
        )

    def mark_split(self, job_id: str, total_batches: int, total_slices: int, scan: Mapping[str, Any]) -> bool:
        """RECEIVED -> SPLIT with the totals that progress is measured against."""
        now = self.clock()
        return self._update(
            job_id,
            "SET #state = :split, #total_batches = :batches, #total_slices = :slices, #scan_info = :scan, "
            "#split_at = :now, #updated_at = :iso",
            "#state = :received",
            {
                ":split": JobState.SPLIT,
                ":received": JobState.RECEIVED,
                ":batches": total_batches,
                ":slices": total_slices,
                ":scan": dict(scan),
                ":now": now,
                ":iso": utc_iso(now),
            },
        )

    def mark_segmenting(self, job_id: str) -> bool:
        """SPLIT -> SEGMENTING once every batch message is on the queue."""
        now = self.clock()
        return self._update(
            job_id,
            "SET #state = :segmenting, #segmenting_at = :now, #updated_at = :iso",
            "#state = :split",
            {":segmenting": JobState.SEGMENTING, ":split": JobState.SPLIT, ":now": now, ":iso": utc_iso(now)},
        )

    def mark_batch_done(self, job_id: str, batch_id: str, slices: int) -> Job | None:
        """Record one segmented batch; the updated job, or ``None`` if it was already recorded.

        A batch can finish while the job is still SPLIT (the split enqueues before it moves the
        job to SEGMENTING), so both states accept it.
        """
        now = self.clock()
        try:
            response = self.client.update_item(
                TableName=self.table,
                Key=self._key(job_id),
                UpdateExpression="ADD #done_batches :batch, #done_slices :slices SET #updated_at = :iso",
                ConditionExpression="#state IN (:split, :segmenting) AND NOT contains(#done_batches, :id)",
                ExpressionAttributeNames=_names("#state #done_batches #done_slices #updated_at"),
                ExpressionAttributeValues={
                    ":batch": {"SS": [batch_id]},
                    ":id": {"S": batch_id},
                    ":slices": {"N": str(slices)},
                    ":split": {"S": JobState.SPLIT},
                    ":segmenting": {"S": JobState.SEGMENTING},
                    ":iso": {"S": utc_iso(now)},
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _condition_failed(exc):
                return None
            raise
        return self._job(response["Attributes"])

    def mark_assembling(self, job_id: str) -> bool:
        """(SPLIT | SEGMENTING) -> ASSEMBLING: exactly one caller wins, and it enqueues assembly."""
        now = self.clock()
        return self._update(
            job_id,
            "SET #state = :assembling, #assembling_at = :now, #updated_at = :iso",
            "#state IN (:split, :segmenting)",
            {
                ":assembling": JobState.ASSEMBLING,
                ":split": JobState.SPLIT,
                ":segmenting": JobState.SEGMENTING,
                ":now": now,
                ":iso": utc_iso(now),
            },
        )

    def claim_assembly(self, job_id: str, claimant: str, lease_seconds: float) -> bool:
        """Take the final assembly of an ASSEMBLING job for ``lease_seconds``; False while another
        delivery holds it. The holder (the same message redelivered) may take it again, and anyone
        may once its lease is over (a crashed assembler's)."""
        now = self.clock()
        return self._update(
            job_id,
            "SET #assembly_claim = :claimant, #assembly_claim_until = :until",
            "#state = :assembling AND (attribute_not_exists(#assembly_claim) OR #assembly_claim = :claimant "
            "OR #assembly_claim_until < :now)",
            {":claimant": claimant, ":until": now + lease_seconds, ":now": now, ":assembling": JobState.ASSEMBLING},
        )

    def mark_assembly_enqueued(self, job_id: str) -> bool:
        """Remember that the assemble message is on its queue (a redelivery then need not resend it)."""
        return self._update(job_id, "SET #assembly_enqueued = :yes", "attribute_exists(#state)", {":yes": True})

    def mark_done(
        self,
        job_id: str,
        results: Mapping[str, str],
        summary: Mapping[str, Any],
        mirror_prefix: str | None,
        mirror_error: str | None,
        mirror_state: MirrorState | None = None,
    ) -> bool:
        """ASSEMBLING -> DONE with the result keys, the report headline and the mirror outcome
        (``mirror_state`` with the assembly's attempt counted as the first)."""
        now = self.clock()
        values: dict[str, Any] = {
            ":done": JobState.DONE,
            ":assembling": JobState.ASSEMBLING,
            ":results": dict(results),
            ":summary": dict(summary),
            ":now": now,
            ":iso": utc_iso(now),
        }
        expression = "SET #state = :done, #results = :results, #summary = :summary, #done_at = :now, #updated_at = :iso"
        if mirror_prefix is not None:
            expression += ", #mirror_prefix = :mirror"
            values[":mirror"] = mirror_prefix
        if mirror_error is not None:
            expression += ", #mirror_error = :mirror_error"
            values[":mirror_error"] = mirror_error
        if mirror_state is not None:
            expression += ", #mirror_state = :mirror_state, #mirror_attempts = :one"
            values[":mirror_state"] = mirror_state
            values[":one"] = 1
        return self._update(job_id, expression, "#state = :assembling", values)

    def fail(
        self,
        job_id: str,
        code: ErrorCode,
        reason: str,
        stage: Stage,
        source: JobSource | None = None,
        owner: str | None = None,
        upload_key: str = "",
    ) -> bool:
        """Any non-terminal state -> FAILED with a reason; an unknown hospital (ingest) job gets a FAILED row.

        Returns False when the job had already ended (DONE or FAILED): the first reason stays.
        """
        now = self.clock()
        reason = reason[:2000]  # a reason is for people; keep rows small
        updated = self._update(
            job_id,
            "SET #state = :failed, #error_code = :code, #error_reason = :reason, #failed_stage = :stage, "
            "#failed_at = :now, #updated_at = :iso",
            # attribute_exists(state): a job, not a tombstone (a deleted job is not failed back to life).
            "attribute_exists(#state) AND NOT (#state IN (:done, :failed))",
            {
                ":failed": JobState.FAILED,
                ":done": JobState.DONE,
                ":code": code,
                ":reason": reason,
                ":stage": stage,
                ":now": now,
                ":iso": utc_iso(now),
            },
        )
        if updated or self._stored(job_id) is not None:  # an ended job, or a deleted one
            return updated
        # A hospital upload whose split failed before it could record the job never got a row:
        # leave a FAILED row (no owner) so ops see the failure. Anything else naming an unknown
        # job (an app key with no job behind it, a stale message) gets no row: a row would belong
        # to whoever wrote the message.
        if (
            (source or JobSource.INGEST) != JobSource.INGEST
            or owner is not None
            or not upload_key.startswith("ingest/")
        ):
            return False
        job, created = self.create(job_id, JobSource.INGEST, None, upload_key, 0)
        return self.fail(job_id, code, reason, stage) if created or not job.state.terminal else False

    def reset_for_retry(self, job_id: str, generation: int, deadline_seconds: float) -> bool:
        """FAILED (in ``generation``) -> RECEIVED in ``generation + 1``, as a new upload would leave it:
        the failure, the split's totals, the done batches, the claims and the attempt notes go; the
        owner, source, upload and creation stay. False unless the job is FAILED in that generation
        (so of two concurrent retries exactly one happens)."""
        now = self.clock()
        attempts = ", ".join(f"#{self._attempt_attribute(stage)}" for stage in Stage)
        return self._update(
            job_id,
            "SET #state = :received, #generation = :next, #deadline_at = :deadline, #updated_at = :iso, "
            "#done_slices = :zero "
            "REMOVE #error_code, #error_reason, #failed_stage, #failed_at, #received_at, #split_at, "
            "#segmenting_at, #assembling_at, #total_batches, #total_slices, #done_batches, #assembly_enqueued, "
            f"#assembly_claim, #assembly_claim_until, #results, #summary, #scan_info, {attempts}",
            "#state = :failed AND "
            + (
                "(attribute_not_exists(#generation) OR #generation = :generation)"
                if generation == 0
                else "#generation = :generation"
            ),
            {
                ":received": JobState.RECEIVED,
                ":failed": JobState.FAILED,
                ":generation": generation,
                ":next": generation + 1,
                ":deadline": now + deadline_seconds,
                ":iso": utc_iso(now),
                ":zero": 0,
            },
        )

    # ------------------------------------------------------------------ the Firebase mirror's retries
    #
    # The mirror message is at-least-once like every other; each write here is conditional on the
    # job being DONE (a tombstone has no state: a deleted job is never written back) and its copy
    # not yet MIRRORED, so a duplicate message after MIRRORED changes nothing and counts nothing.

    def mark_mirrored(self, job_id: str) -> bool:
        """The copy is in Firebase Storage: MIRRORED (attempts + 1, the last reason removed). False if
        it already was (a duplicate), or the job is not DONE (deleted meanwhile). A FAILED mirror may
        still become MIRRORED (its message redriven from the dead-letter queue)."""
        return self._mirror(job_id, MirrorState.MIRRORED, None)

    def record_mirror_failure(self, job_id: str, reason: str) -> bool:
        """One failed retry: PENDING, attempts + 1, the reason; False if MIRRORED or the job is not DONE."""
        return self._mirror(job_id, MirrorState.PENDING, reason)

    def fail_mirror(self, job_id: str, reason: str) -> bool:
        """Give up (the message's last receive): FAILED with the reason; False if MIRRORED or not DONE."""
        return self._mirror(job_id, MirrorState.FAILED, reason)

    def _mirror(self, job_id: str, state: MirrorState, reason: str | None) -> bool:
        now = self.clock()
        values: dict[str, Any] = {
            ":done": JobState.DONE,
            ":state": state,
            ":mirrored": MirrorState.MIRRORED,
            ":one": 1,
            ":iso": utc_iso(now),
        }
        expression = "SET #mirror_state = :state, #updated_at = :iso"
        if reason is not None:
            expression += ", #mirror_error = :reason"
            values[":reason"] = reason[:1000]
        expression += " ADD #mirror_attempts :one"
        if reason is None:
            expression += " REMOVE #mirror_error"
        condition = "#state = :done AND (attribute_not_exists(#mirror_state) OR #mirror_state <> :mirrored)"
        return self._update(job_id, expression, condition, values)

    # ------------------------------------------------------------------ attempts

    @staticmethod
    def _attempt_attribute(stage: Stage) -> str:
        return f"{stage}_attempt"

    def attempts(self, job_id: str, stage: Stage) -> AttemptLog | None:
        """The stage's attempt log on the job's row (read consistently); None before its first attempt."""
        attribute = self._attempt_attribute(stage)
        item = (
            self.client.get_item(
                TableName=self.table,
                Key=self._key(job_id),
                ConsistentRead=True,
                ProjectionExpression="#log",
                ExpressionAttributeNames={"#log": attribute},
            ).get("Item")
            or {}
        )
        entry = item.get(attribute, {}).get("M")
        if not entry:
            return None
        return AttemptLog(int(entry["receive_count"]["N"]), bool(entry["running"]["BOOL"]), int(entry["died"]["N"]))

    def note_attempt(self, job_id: str, stage: Stage, entry: AttemptLog) -> bool:
        """Write the stage's attempt log on the job's row; False (nothing written) on a deleted
        job's tombstone, which has no ``state`` and is never written back to life."""
        return self._update(
            job_id,
            f"SET #{self._attempt_attribute(stage)} = :log",
            "attribute_exists(#state)",
            {":log": {"receive_count": entry.receive_count, "running": entry.running, "died": entry.died}},
        )

    # ------------------------------------------------------------------ plumbing

    def delete_ended(self, job_id: str, owner: str) -> bool:
        """Replace the job's row by its tombstone (see the module doc) if it is ``owner``'s and DONE
        or FAILED; False if it is not (any more).

        Conditional, so a job that a stage is still moving is never deleted from under it, and of
        two concurrent deletes exactly one succeeds (the other finds a tombstone: no owner).
        """
        now = self.clock()
        expires = int(now + max(self.ttl_seconds, TOMBSTONE_MIN_SECONDS))
        tombstone = {"job_id": job_id, "deleted_at": _number(now), "expires_at": expires}
        try:
            self.client.put_item(
                TableName=self.table,
                Item=self._item(tombstone),
                ConditionExpression="#owner = :owner AND #state IN (:done, :failed)",
                ExpressionAttributeNames={"#owner": "owner", "#state": "state"},
                ExpressionAttributeValues={
                    ":owner": {"S": owner},
                    ":done": {"S": JobState.DONE.value},
                    ":failed": {"S": JobState.FAILED.value},
                },
            )
        except ClientError as exc:
            if _condition_failed(exc):
                return False
            raise
        return True

    def update_if(self, job_id: str, expression: str, condition: str, values: Mapping[str, Any]) -> bool:
        """One conditional update of a job's row (``#name`` placeholders are the attribute names);
        False when the condition does not hold. For records that ride on the row and are kept by
        their own deployable (the gateway's :class:`~ichseg.pipeline.delivery_record.DeliveryRecords`)."""
        return self._update(job_id, expression, condition, values)

    def _update(self, job_id: str, expression: str, condition: str, values: Mapping[str, Any]) -> bool:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "Key": self._key(job_id),
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": _names(expression + " " + condition),
            "ExpressionAttributeValues": {k: self._value(v) for k, v in values.items()},
        }
        try:
            self.client.update_item(**kwargs)
        except ClientError as exc:
            if _condition_failed(exc):
                return False
            raise
        return True

    def _key(self, job_id: str) -> dict[str, Any]:
        return {"job_id": {"S": job_id}}

    def _value(self, value: Any) -> dict[str, Any]:
        return self._ser.serialize(_to_dynamo(value))

    def _item(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._value(v) for k, v in values.items()}

    def _job(self, item: Mapping[str, Any]) -> Job:
        raw = {k: _from_dynamo(self._de.deserialize(v)) for k, v in item.items()}
        stamps = {name: float(raw[attr]) for name, attr in STAMP_ATTRIBUTES.items() if attr in raw}
        return Job(
            job_id=raw["job_id"],
            state=JobState(raw["state"]),
            source=JobSource(raw.get("source", JobSource.INGEST.value)),
            created_at=raw.get("created_at", ""),
            owner=raw.get("owner"),
            upload_key=raw.get("upload_key", ""),
            content_type=raw.get("content_type"),
            total_batches=_int_or_none(raw.get("total_batches")),
            total_slices=_int_or_none(raw.get("total_slices")),
            done_batches=frozenset(raw.get("done_batches", ())),
            done_slices=int(raw.get("done_slices", 0)),
            error_code=ErrorCode(raw["error_code"]) if raw.get("error_code") else None,
            error_reason=raw.get("error_reason"),
            failed_stage=Stage(raw["failed_stage"]) if raw.get("failed_stage") else None,
            results=raw.get("results", {}),
            summary=raw.get("summary", {}),
            scan=raw.get("scan_info", {}),
            mirror_prefix=raw.get("mirror_prefix"),
            mirror_error=raw.get("mirror_error"),
            mirror_state=MirrorState(raw["mirror_state"]) if raw.get("mirror_state") else None,
            mirror_attempts=int(raw.get("mirror_attempts", 0)),
            assembly_enqueued=bool(raw.get("assembly_enqueued", False)),
            deadline_at=float(raw["deadline_at"]) if "deadline_at" in raw else None,
            expires_at=_int_or_none(raw.get("expires_at")),
            stamps=stamps,
            delivery_state=DeliveryState(raw["delivery_state"]) if raw.get("delivery_state") else None,
            delivery_attempts=int(raw.get("delivery_attempts", 0)),
            delivery_reason=raw.get("delivery_reason"),
            delivered_objects=frozenset(raw.get("delivered_objects", ())),
            generation=int(raw.get("generation", 0)),
            multipart_upload_id=raw.get("multipart_upload_id"),
            upload_size=_int_or_none(raw.get("upload_size")),
        )


def _names(expression: str) -> dict[str, str]:
    """``#name`` placeholders for every attribute an expression names (reserved words: ``scan``,
    ``source``, ``status``... are everywhere, so no attribute name is ever written bare)."""
    return {f"#{name}": name for name in re.findall(r"#(\w+)", expression)}


def _is_tombstone(item: Mapping[str, Any]) -> bool:
    """A deleted job's row (see the module doc): it has ``deleted_at`` and no ``state``."""
    return "deleted_at" in item or "state" not in item


def _condition_failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _to_dynamo(value: Any) -> Any:
    """Python -> what TypeSerializer accepts (floats become Decimals; None inside maps is NULL)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, Mapping):
        return {str(k): _to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_dynamo(v) for v in value]
    return value


def _from_dynamo(value: Any) -> Any:
    """DynamoDB -> plain Python (Decimals become int or float, sets become sets of str)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_dynamo(v) for v in value]
    return value
