"""API function (HTTP API, payload v2): the mobile app starts scans and polls them.

    POST /v1/scans           {"content_type": "video/mp4", "size_bytes": 123}  -> 201 job + presigned POST
    GET  /v1/scans/{job_id}  -> 200 state, progress, error, result links; 404 if not the caller's

The Lambda authorizer (``functions/authorizer.py``) has verified the Firebase ID token; its uid
arrives in ``requestContext.authorizer.lambda.uid``. See ``functions/openapi.yaml``.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import BadRequestError, UnauthorizedError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions import pipeline_context
from ichseg.pipeline import create_scan, scan_status
from ichseg.pipeline.api import ApiError

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = APIGatewayHttpResolver()


def caller_uid() -> str:
    uid = app.current_event.request_context.authorizer.get_lambda.get("uid")
    if not uid:  # only reachable if the route was deployed without the authorizer
        raise UnauthorizedError("no authenticated user")
    logger.thread_safe_append_keys(uid=uid)
    return str(uid)


@app.post("/v1/scans")
@tracer.capture_method
def start_scan() -> Response:
    uid = caller_uid()
    try:
        body = app.current_event.json_body or {}
    except ValueError:
        raise BadRequestError("the body must be JSON") from None
    except RecursionError:  # nested deeper than Python's parser recurses: not a request, an attack
        raise BadRequestError("the JSON body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    size = body.get("size_bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        raise BadRequestError("size_bytes must be an integer")
    ticket = create_scan(pipeline_context(metrics), uid, str(body.get("content_type", "")), size)
    logger.thread_safe_append_keys(job_id=ticket.job_id)
    logger.info("scan started; upload presigned")
    metrics.add_metric("ScansStarted", "Count", 1)
    return _json(201, ticket.to_json(), {"Location": f"/v1/scans/{ticket.job_id}"})


@app.get("/v1/scans/<job_id>")
@tracer.capture_method
def get_scan(job_id: str) -> Response:
    logger.thread_safe_append_keys(job_id=job_id)
    return _json(200, scan_status(pipeline_context(metrics), caller_uid(), job_id))


@app.exception_handler(ApiError)
def api_error(error: ApiError) -> Response:
    return _json(error.status, {"message": str(error)})


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    # Job state changes every few seconds and links are short-lived: never cache.
    return Response(status, content_types.APPLICATION_JSON, body, {"Cache-Control": "no-store", **(headers or {})})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.thread_safe_clear_keys()
    return app.resolve(event, context)
