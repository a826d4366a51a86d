"""Mirror function: a DONE app job's Firebase Storage copy that missed the assembly's budget, retried
off the mirror queue with a backoff that grows per receive (see :func:`ichseg.pipeline.assemble.retry_mirror`).

A failed attempt raises: the record is reported in ``batchItemFailures`` and SQS shows it again once
the backoff the stage set (its visibility timeout) is over; the last receive marks the mirror FAILED
and the message goes on to the dead-letter queue.
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
from ichseg.pipeline import MirrorMessage, retry_mirror

logger = handler_logger()
tracer = Tracer()
metrics = Metrics()


class MirrorRecord(SqsRecordModel):
    """An SQS record whose body pydantic parses as a
    :class:`~ichseg.pipeline.messages.MirrorMessage`: a body that is not one
    fails its record before the stage runs (retried, then the dead-letter queue)."""

    body: Json[MirrorMessage]


processor = BatchProcessor(event_type=EventType.SQS, model=MirrorRecord)


@tracer.capture_method
def record_handler(record: MirrorRecord) -> None:
    logger.thread_safe_clear_keys()
    message = record.body
    logger.thread_safe_append_keys(job_id=message.job_id)
    with stage_latency(metrics, "mirror"):
        result = retry_mirror(pipeline_context(metrics), message, receive_count(record), record.receiptHandle)
    logger.info("mirror outcome", extra={"outcome": result.outcome, "attempts": result.attempts})


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
