"""The Lambda handlers: one page each, Powertools around one core call from :mod:`ichseg.pipeline`.

Every handler module has the same shape: module-level ``Logger``/``Tracer``/``Metrics``, a typed
``record_handler`` (or resolver routes) that parses its event and calls one stage function, and a
``handler`` that only wires the utilities together. What the handlers share lives here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.parser.models import SqsRecordModel

from ichseg.pipeline.config import PipelineConfig
from ichseg.pipeline.context import MetricsSink, PipelineContext

CORE_LOGGER = "ichseg"
"""The core package's logger, which the stages log under (``ichseg.pipeline.split``, ...)."""


def handler_logger() -> Logger:
    """The handler's Powertools Logger, named after the core package on purpose.

    The stages log through ``logging.getLogger("ichseg.pipeline....")``; their records propagate to
    the ``ichseg`` logger that this Logger configures, so they come out as the handler's JSON lines
    with its keys (``job_id``, ``batch_id``). Said here rather than left to the environment's
    ``POWERTOOLS_SERVICE_NAME``, which would otherwise have to equal the package name by chance.
    """
    return Logger(service=CORE_LOGGER)


_contexts: dict[int, PipelineContext] = {}
_lock = threading.Lock()


def pipeline_context(metrics: MetricsSink) -> PipelineContext:
    """The context for this container, built at the first invocation and reused while warm.

    Rebuilt only if the configuration changes (it never does in Lambda; a local stack may point a
    long-lived process at new addresses), so boto3 clients and the Firebase app are made once.
    """
    config = PipelineConfig.from_env()
    with _lock:
        current = _contexts.get(id(metrics))
        if current is None or current.config != config:
            current = _contexts[id(metrics)] = PipelineContext(config, metrics)
        return current


def receive_count(record: SQSRecord | SqsRecordModel) -> int:
    """How many times SQS has delivered this message (1 on the first delivery)."""
    if isinstance(record, SqsRecordModel):
        return int(record.attributes.ApproximateReceiveCount or 1)
    return int(record.attributes.approximate_receive_count or 1)


@contextmanager
def stage_latency(metrics: MetricsSink, stage: str) -> Iterator[None]:
    """Record ``<Stage>Latency`` in milliseconds around one record's work (also when it raises)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        metrics.add_metric(f"{stage.capitalize()}Latency", MetricUnit.Milliseconds, elapsed_ms)
