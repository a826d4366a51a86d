"""The DICOM gateway's record on a hospital job's row: whether its SEG and SR reached the PACS.

Delivery is at-least-once (an SQS message, redelivered until deleted) made idempotent: each
write is conditional on the job being DONE and its delivery not yet settled, result names a
PACS stored are a set (``ADD`` is idempotent per name, so a retry sends only the rest), and the
SEG/SR SOP Instance UIDs are deterministic, so an object stored twice (a crash between the
C-STORE and this write) replaces itself in the PACS instead of appearing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ichseg.pipeline.jobs import DeliveryState, JobState, JobStore, utc_iso


class DeliveryRecords:
    """Delivery state on the jobs table (``delivery_state``, attempts, last reason, stored objects)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def record_failure(self, job_id: str, reason: str, delivered: Iterable[str] = ()) -> bool:
        """One failed attempt (PENDING, attempts + 1, the reason, what did get stored); False if the
        delivery is already settled (DELIVERED or FAILED) or the job is not DONE."""
        return self._delivery(job_id, DeliveryState.PENDING, reason, delivered, settled_may_change=False)

    def mark_delivered(self, job_id: str, delivered: Iterable[str]) -> bool:
        """Every result stored: DELIVERED. False if it already was (a duplicate message). A FAILED
        delivery may still become DELIVERED (its message redriven from the dead-letter queue)."""
        return self._delivery(job_id, DeliveryState.DELIVERED, None, delivered, settled_may_change=True)

    def fail(self, job_id: str, reason: str, delivered: Iterable[str] = ()) -> bool:
        """Give up: FAILED with the reason; False if already DELIVERED or FAILED (counted once)."""
        return self._delivery(job_id, DeliveryState.FAILED, reason, delivered, settled_may_change=False)

    def _delivery(
        self, job_id: str, state: DeliveryState, reason: str | None, delivered: Iterable[str], settled_may_change: bool
    ) -> bool:
        now = self._store.clock()
        values: dict[str, Any] = {
            ":done": JobState.DONE,
            ":state": state,
            ":one": 1,
            ":now": now,
            ":iso": utc_iso(now),
        }
        expression = "SET #delivery_state = :state, #delivery_at = :now, #updated_at = :iso"
        if reason is not None:
            expression += ", #delivery_reason = :reason"
            values[":reason"] = reason[:500]
        expression += " ADD #delivery_attempts :one"
        names = set(delivered)
        if names:
            expression += ", #delivered_objects :objects"
            values[":objects"] = names
        if reason is None:
            expression += " REMOVE #delivery_reason"
        if settled_may_change:
            condition = "#state = :done AND (attribute_not_exists(#delivery_state) OR #delivery_state <> :state)"
        else:
            condition = "#state = :done AND (attribute_not_exists(#delivery_state) OR #delivery_state = :pending)"
            values[":pending"] = DeliveryState.PENDING
        return self._store.update_if(job_id, expression, condition, values)
