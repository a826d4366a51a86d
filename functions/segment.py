"""Segment function: one batch of frames per message -> the endpoint -> the batch's rendered part in S3
(masks, video segment, thumbnails; see :mod:`ichseg.pipeline.segment`).

Failed records are reported individually (``batchItemFailures``), so one bad batch does not make
SQS redeliver its neighbours.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Json

from functions import handler_logger, pipeline_context, receive_count, stage_latency
from ichseg.pipeline import SegmentMessage, segment_batch

logger = handler_logger()
tracer = Tracer()
metrics = Metrics()


class SegmentRecord(SqsRecordModel):
    """An SQS record whose body pydantic parses as a
    :class:`~ichseg.pipeline.messages.SegmentMessage`: a body that is not one
    fails its record before the stage runs (retried, then the dead-letter queue)."""

    body: Json[SegmentMessage]


processor = BatchProcessor(event_type=EventType.SQS, model=SegmentRecord)


@tracer.capture_method
def record_handler(record: SegmentRecord) -> None:
    logger.thread_safe_clear_keys()
    message = record.body
    logger.thread_safe_append_keys(job_id=message.job_id, batch_id=message.batch_id)
    with stage_latency(metrics, "segment"):
        result = segment_batch(pipeline_context(metrics), message, receive_count(record))
    logger.info(
        "segment outcome",
        extra={
            "outcome": result.outcome,
            "slices": result.slices,
            "endpoint_attempts": result.endpoint_attempts,
            "started_assembly": result.started_assembly,
        },
    )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
