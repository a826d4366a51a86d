"""Assemble function: once every batch of a job is segmented, the joined H.264 overlay, report,
contact sheet, DICOM SEG and SR, Firebase mirror; job DONE (see :mod:`ichseg.pipeline.assemble`)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Json

from functions import handler_logger, pipeline_context, receive_count, stage_latency
from ichseg.pipeline import AssembleMessage, assemble_results
from ichseg.pipeline.assemble import AssemblyClaim

logger = handler_logger()
tracer = Tracer()
metrics = Metrics()


class AssembleRecord(SqsRecordModel):
    """An SQS record whose body pydantic parses as a
    :class:`~ichseg.pipeline.messages.AssembleMessage`: a body that is not one
    fails its record before the stage runs (retried, then the dead-letter queue)."""

    body: Json[AssembleMessage]


processor = BatchProcessor(event_type=EventType.SQS, model=AssembleRecord)


@tracer.capture_method
def record_handler(record: AssembleRecord, lambda_context: LambdaContext | None = None) -> None:
    logger.thread_safe_clear_keys()
    message = record.body
    logger.thread_safe_append_keys(job_id=message.job_id)
    # The message id claims the final assembly: a redelivery of this message may take it again, a
    # duplicate message may not; the lease lasts as long as this invocation may still run.
    remaining = lambda_context.get_remaining_time_in_millis() / 1000 if lambda_context else 900.0
    claim = AssemblyClaim(record.messageId, remaining + 5)
    with stage_latency(metrics, "assemble"):
        result = assemble_results(pipeline_context(metrics), message, receive_count(record), claim)
    logger.info(
        "assemble outcome",
        extra={
            "outcome": result.outcome,
            "slices": result.slices,
            "end_to_end_seconds": result.end_to_end_seconds,
            "mirror_error": result.mirror_error,
        },
    )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
