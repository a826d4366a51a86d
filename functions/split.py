"""Split function: S3 ObjectCreated events (ingest SQS queue) -> frame batches + segment messages.

The queue receives S3 notifications for ``uploads/`` (the app's presigned POSTs) and ``ingest/``
(the hospital router). ``s3:TestEvent`` messages (sent when the notification is configured) and
keys outside the layout are acknowledged and ignored.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions import handler_logger, pipeline_context, receive_count, stage_latency
from ichseg.pipeline import UploadRef, split_scan_into_batches
from ichseg.pipeline.keys import UnexpectedKey

logger = handler_logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    logger.thread_safe_clear_keys()
    body: dict[str, Any] = record.json_body
    if body.get("Event") == "s3:TestEvent":
        logger.info("s3:TestEvent ignored")
        return
    for s3_record in S3Event(body).records:
        obj = s3_record.s3.get_object
        key = unquote_plus(obj.key)  # notifications carry keys URL-encoded ('+' for spaces)
        try:
            upload = UploadRef.from_object(s3_record.s3.bucket.name, key, obj.etag, obj.size)
        except UnexpectedKey as exc:
            logger.warning("ignored object outside the upload prefixes", extra={"reason": str(exc)})
            continue
        logger.thread_safe_append_keys(job_id=upload.job_id, source=upload.source.value)
        with stage_latency(metrics, "split"):
            result = split_scan_into_batches(pipeline_context(metrics), upload, receive_count(record))
        logger.info(
            "split outcome", extra={"outcome": result.outcome, "slices": result.slices, "batches": result.batches}
        )


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
