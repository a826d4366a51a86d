"""Watchdog function (EventBridge schedule): fails jobs still running past their deadline."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions import handler_logger, pipeline_context
from ichseg.pipeline import fail_overdue_jobs

logger = handler_logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_source(data_class=EventBridgeEvent)
def handler(event: EventBridgeEvent, context: LambdaContext) -> dict[str, Any]:
    result = fail_overdue_jobs(pipeline_context(metrics))
    logger.info(
        "watchdog tick",
        extra={"scheduled_at": event.time, "checked": result.checked, "failed_jobs": list(result.failed)},
    )
    return {"checked": result.checked, "failed": list(result.failed)}
