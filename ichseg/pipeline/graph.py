"""The pipeline's stage graph, stated once in code: which function reads which queue, and which
queues it sends to.

MONAI Deploy composes an application by its flows (``add_flow(loader, segmenter)``); ichseg's
stages are separate Lambda functions, so its flows are SQS queues. ``template.yaml`` wires the same
graph (each function's event source, each role's ``sqs:SendMessage`` grants), the local stack pumps
what the template says, and ``tests/infrastructure/test_template.py`` holds the template equal to
:data:`GRAPH`: a new edge is added here first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Queue(StrEnum):
    """The pipeline's queues (each with its dead-letter queue in the template)."""

    INGEST = "ingest"
    SEGMENT = "segment"
    ASSEMBLE = "assemble"
    MIRROR = "mirror"
    DELIVERY = "delivery"

    @property
    def logical_id(self) -> str:
        """The queue's resource in ``template.yaml`` (``SegmentQueue``)."""
        return f"{self.value.title()}Queue"


@dataclass(frozen=True)
class Step:
    """One function of the graph: the queue it is invoked from and the queues it feeds."""

    function: str
    reads: Queue
    sends: frozenset[Queue]
    does: str


GRAPH: tuple[Step, ...] = (
    Step("split", Queue.INGEST, frozenset({Queue.SEGMENT}), "an upload -> its frames in batches, one message each"),
    Step(
        "segment",
        Queue.SEGMENT,
        frozenset({Queue.ASSEMBLE, Queue.INGEST}),
        "a batch -> the endpoint -> its masks and part; the last batch -> the final assembly "
        "(ingest: a job retried by itself sends its upload's event again)",
    ),
    Step(
        "assemble",
        Queue.ASSEMBLE,
        frozenset({Queue.MIRROR, Queue.DELIVERY, Queue.INGEST}),
        "the parts -> the results, DONE; a Firebase copy that missed its budget -> mirror; a hospital "
        "job -> delivery (the DICOM gateway reads it); a model swap -> ingest",
    ),
    Step("mirror", Queue.MIRROR, frozenset(), "a DONE app job's Firebase copy, retried with backoff"),
)
"""Uploads reach ``ingest`` from the bucket's notifications; ``delivery`` is read by the DICOM
gateway (``gateway/``), not a function; the watchdog runs on a schedule and sends nothing."""
