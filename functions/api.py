"""API function (HTTP API, payload v2): the mobile app starts, polls, lists and deletes scans.

    POST   /v1/scans            {"content_type": "video/mp4", "size_bytes": 123} -> 201 job + presigned POST
    GET    /v1/scans            ?limit=20&next=<cursor>  -> 200 the caller's jobs, newest first
    GET    /v1/scans/{job_id}   -> 200 state, progress, error, result links, viewer link; 404 if not the caller's
    DELETE /v1/scans/{job_id}   -> 204 deleted; 404 unknown/not the caller's/already deleted; 409 still running
    GET    /v1/openapi.json     -> 200 this API's OpenAPI document (generated from these routes and models)

The Lambda authorizer (``functions/authorizer.py``) has verified the Firebase ID token; its uid
arrives in ``requestContext.authorizer.lambda.uid``. The OpenAPI document is generated from this
module (``python -m functions.openapi`` writes ``functions/openapi.json``; tests check it is current).
"""
# No ``from __future__ import annotations``: Powertools reads the routes' annotations at run time
# to validate requests and generate the OpenAPI document, and string annotations defeat that.

import json
from typing import Annotated, Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import UnauthorizedError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Server
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions import handler_logger, pipeline_context
from ichseg.pipeline import create_scan, scan_status
from ichseg.pipeline.api import LIST_LIMIT_DEFAULT, ApiError, delete_scan, list_scans
from ichseg.pipeline.api_models import (
    LIST_LIMIT_MAX,
    Error,
    ScanList,
    ScanStatus,
    StartScanRequest,
    UnreadableNumber,
    UploadTicket,
    read_json_body,
)

logger = handler_logger()
tracer = Tracer()
metrics = Metrics()
# Bodies are read by read_json_body: json.loads with bounds on numbers (api_models' module doc).
app = APIGatewayHttpResolver(enable_validation=True, json_body_deserializer=read_json_body)

DESCRIPTION = """The API the ichseg mobile app uses to segment intracranial hemorrhage in a head CT scan.

**Not for clinical use.** ichseg is research software.

1. Sign in with Firebase Auth and get an ID token (`getIdToken()`); send it as `Authorization: Bearer <token>`.
2. `POST /v1/scans` with the upload's content type (and size): a job id and a presigned S3 POST.
3. Upload the scan as `multipart/form-data` to `upload.url`: every entry of `upload.fields`, then the
   file as the **last** field, named `file`. S3 enforces the policy (key, Content-Type, size, expiry).
4. Poll `GET /v1/scans/{job_id}` until `state` is `DONE` or `FAILED`; when DONE, `results` holds
   short-lived download links and `viewer` the results viewer (relative to this API's base URL).
5. `GET /v1/scans` lists your scans (newest first, `next` pages on); `DELETE /v1/scans/{job_id}`
   removes an ended scan and everything derived from it.

Without the `Authorization` header the API answers `401`; with a token that is invalid, expired, or
for another Firebase project, `403`. A job belongs to the user who created it: anyone else gets `404`.
A body the schema does not allow is refused with `400` and a `message` naming the field.
"""
app.configure_openapi(
    title="ichseg scans API",
    version="1.2.0",  # 1.2.0: mirror.state and mirror.attempts
    description=DESCRIPTION,
    servers=[Server(url="/", description="the deployed HTTP API or the local stack (`ichseg stack` prints its URL)")],
    security_schemes={
        "firebase": HTTPBearer(bearerFormat="Firebase ID token (RS256 JWT, aud = the Firebase project id)")
    },
    security=[{"firebase": []}],
)


def _refusal(description: str) -> OpenAPIResponse:
    return {"description": description, "content": {"application/json": {"model": Error}}}


def _ok(description: str, model: type[Any]) -> OpenAPIResponse:
    return {"description": description, "content": {"application/json": {"model": model}}}


AUTH_REFUSALS: dict[int, OpenAPIResponse] = {
    401: _refusal("No `Authorization` header (answered by API Gateway)."),
    403: _refusal("The token was refused (invalid signature, expired, wrong project, not RS256)."),
}
BAD_REQUEST = _refusal("The request does not match the schema (or names something invalid); `message` says why.")
NOT_FOUND = _refusal("No such scan of the caller's (unknown, someone else's, or deleted).")
JobId = Annotated[str, Path(description="The job id `POST /v1/scans` returned.", max_length=64)]


def caller_uid() -> str:
    uid = app.current_event.request_context.authorizer.get_lambda.get("uid")
    if not uid:  # only reachable if the route was deployed without the authorizer
        raise UnauthorizedError("no authenticated user")
    logger.thread_safe_append_keys(uid=uid)
    return str(uid)


@app.post(
    "/v1/scans",
    operation_id="startScan",
    summary="Start a scan job and get a presigned upload",
    responses={
        201: {
            **_ok("The job exists (state RECEIVED) and waits for its upload.", UploadTicket),
            "headers": {"Location": {"description": "/v1/scans/{job_id}", "schema": {"type": "string"}}},
        },
        400: BAD_REQUEST,
        413: _refusal("`size_bytes` is over this deployment's upload limit."),
        415: _refusal("The body is not `application/json`."),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def start_scan(request: Annotated[StartScanRequest, Body(embed=False)]) -> Response[Any]:
    uid = caller_uid()
    ticket = create_scan(pipeline_context(metrics), uid, request.content_type.value, request.size_bytes)
    logger.thread_safe_append_keys(job_id=ticket.job_id)
    logger.info("scan started; upload presigned")
    metrics.add_metric("ScansStarted", "Count", 1)
    return _json(201, ticket.to_json(), {"Location": f"/v1/scans/{ticket.job_id}"})


@app.get(
    "/v1/scans",
    operation_id="listScans",
    summary="The caller's scans, newest first, a page at a time",
    responses={200: _ok("One page of scans.", ScanList), 400: BAD_REQUEST, **AUTH_REFUSALS},
)
@tracer.capture_method
def get_scans(
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX, description="Scans per page.")] = LIST_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(alias="next", max_length=2048, description="The `next` of the previous page.")
    ] = None,
) -> Response[Any]:
    return _json(200, list_scans(pipeline_context(metrics), caller_uid(), limit, cursor))


@app.get(
    "/v1/scans/<job_id>",
    operation_id="getScan",
    summary="A job's state, progress, error, result links and viewer link",
    responses={200: _ok("The job, as its owner sees it.", ScanStatus), 404: NOT_FOUND, **AUTH_REFUSALS},
)
@tracer.capture_method
def get_scan(job_id: JobId) -> Response[Any]:
    logger.thread_safe_append_keys(job_id=job_id)
    return _json(200, scan_status(pipeline_context(metrics), caller_uid(), job_id))


@app.delete(
    "/v1/scans/<job_id>",
    operation_id="deleteScan",
    summary="Delete an ended scan: its upload, work files, results, Firebase copy and record",
    responses={
        204: {"description": "Deleted. A second DELETE of the same job is 404."},
        404: NOT_FOUND,
        409: _refusal("The job is still being processed; delete it once it is DONE or FAILED."),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def remove_scan(job_id: JobId) -> Response[Any]:
    logger.thread_safe_append_keys(job_id=job_id)
    delete_scan(pipeline_context(metrics), caller_uid(), job_id)
    logger.info("scan deleted")
    metrics.add_metric("ScansDeleted", "Count", 1)
    return Response(204, None, None, {"Cache-Control": "no-store"})


@app.get(
    "/v1/openapi.json",
    operation_id="getOpenApi",
    summary="This API's OpenAPI document",
    responses={
        200: {"description": "The OpenAPI 3 document.", "content": {"application/json": {"schema": {}}}},
        **AUTH_REFUSALS,
    },
)
def openapi_document() -> Response[Any]:
    return Response(200, content_types.APPLICATION_JSON, openapi_json(), {"Cache-Control": "max-age=300"})


def openapi_json() -> str:
    """The OpenAPI document as committed (``functions/openapi.json``): Powertools' document with
    what this API really answers, stable key order, newline-ended."""
    document = json.loads(app.get_openapi_json_schema())
    for operations in document["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            # Powertools documents its own 422 for validation errors; invalid_request answers 400.
            if responses.pop("422", None) is not None:
                responses.setdefault("400", dict(BAD_REQUEST, content={"application/json": {"schema": _ERROR_REF}}))
            # A 204 has no body (and so no Content-Type): Powertools would document one.
            if "204" in responses:
                responses["204"].pop("content", None)
    schemas = document.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in json.dumps(document["paths"]):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


_ERROR_REF = {"$ref": "#/components/schemas/Error"}


@app.exception_handler(ApiError)
def api_error(error: ApiError) -> Response[Any]:
    return _json(error.status, {"message": str(error)})


@app.exception_handler(RequestValidationError)
def invalid_request(error: RequestValidationError) -> Response[Any]:
    # Powertools answers 422 with pydantic's raw error list; the app (and the contract) get 400
    # with one readable message naming each field, like every other refusal of this API.
    reasons = []
    for detail in error.errors():
        where = ".".join(str(part) for part in detail.get("loc", ()) if part != "body") or "body"
        reasons.append(f"{where}: {detail.get('msg', 'invalid')}")
    return _json(400, {"message": "invalid request: " + "; ".join(reasons)[:1000]})


@app.exception_handler(UnreadableNumber)
def unreadable_number(error: UnreadableNumber) -> Response[Any]:
    # Raised while the body is parsed, before any field is validated: the body is what it names.
    return _json(400, {"message": f"invalid request: body: {error}"})


@app.exception_handler(RecursionError)
def too_deep(error: RecursionError) -> Response[Any]:
    # A body nested deeper than Python's JSON parser recurses is not a request, it is an attack.
    return _json(400, {"message": "the JSON body is nested too deeply"})


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    # Job state changes every few seconds and links are short-lived: never cache.
    return Response(status, content_types.APPLICATION_JSON, body, {"Cache-Control": "no-store", **(headers or {})})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.thread_safe_clear_keys()
    refused = _unsupported_body(event)
    return refused if refused is not None else app.resolve(event, context)


def _unsupported_body(event: dict[str, Any]) -> dict[str, Any] | None:
    """415 for a body that is not JSON, before Powertools would parse it as a form (every body this
    API reads is JSON; a multipart type without a boundary makes Powertools' parser raise)."""
    if not event.get("body"):
        return None
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/json":
        return None
    return {
        "statusCode": 415,
        "headers": {"Content-Type": content_types.APPLICATION_JSON, "Cache-Control": "no-store"},
        "body": json.dumps({"message": f"the body must be application/json, not {media_type or 'untyped'}"}),
        "isBase64Encoded": False,
    }
