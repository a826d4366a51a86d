"""API function (HTTP API, payload v2): the mobile app starts, polls, lists and deletes scans.

    POST   /v1/scans            {"content_type": "video/mp4", "size_bytes": 123} -> 201 job + presigned POST
    GET    /v1/scans            ?limit=20&next=<cursor>  -> 200 the caller's jobs, newest first
    GET    /v1/scans/{job_id}   -> 200 state, progress, error, result links, viewer link; 404 if not the caller's
    DELETE /v1/scans/{job_id}   -> 204 deleted; 404 unknown/not the caller's/already deleted; 409 still running
    POST   /v1/devices          {"token": "<FCM token>", "platform": "android"} -> 201 device (push when a job ends)
    DELETE /v1/devices/{id}     -> 204 no more pushes to that device; 404 not the caller's
    GET    /v1/scans/{id}/upload           -> 200 a multipart upload's parts (resume after a dropped connection)
    POST   /v1/scans/{id}/upload/complete  -> 200 the job, its upload complete; 409 parts missing
    GET    /v1/openapi.json     -> 200 this API's OpenAPI document (no token: code generators fetch it)

Every refusal the API itself answers is an RFC 9457 problem (``application/problem+json``) with a
stable ``code`` (:class:`~ichseg.pipeline.api_models.ProblemCode`); each route documents its own.

The Lambda authorizer (``functions/authorizer.py``) has verified the Firebase ID token; its uid
arrives in ``requestContext.authorizer.lambda.uid``. The OpenAPI document is generated from this
module (``python -m functions.openapi`` writes ``functions/openapi.json``; tests check it is current).
"""
# No ``from __future__ import annotations``: Powertools reads the routes' annotations at run time
# to validate requests and generate the OpenAPI document, and string annotations defeat that.

import json
from http import HTTPStatus
from typing import Annotated, Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer, Server
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from functions import handler_logger, pipeline_context
from ichseg.pipeline import create_scan, scan_status
from ichseg.pipeline.api import (
    LIST_LIMIT_DEFAULT,
    ApiError,
    delete_scan,
    list_scans,
    register_device,
    remove_device,
    status_url,
    status_view,
)
from ichseg.pipeline.api_models import (
    LIST_LIMIT_MAX,
    PROBLEM_MEDIA_TYPE,
    GatewayError,
    MultipartUpload,
    Problem,
    ProblemCode,
    RegisterDeviceRequest,
    RegisteredDevice,
    ScanList,
    ScanStatus,
    StartScanRequest,
    UnreadableNumber,
    UploadTicket,
    read_json_body,
)
from ichseg.pipeline.multipart import complete_multipart, multipart_status

logger = handler_logger()
tracer = Tracer()
metrics = Metrics()
# Bodies are read by read_json_body: json.loads with bounds on numbers (api_models' module doc).
# A response that does not match its model is our bug: 500 (internal_error), never the client's 400.
app = APIGatewayHttpResolver(
    enable_validation=True,
    json_body_deserializer=read_json_body,
    response_validation_error_http_code=HTTPStatus.INTERNAL_SERVER_ERROR,
)

DESCRIPTION = """The API the ichseg mobile app uses to segment intracranial hemorrhage in a head CT scan.

**Not for clinical use.** ichseg is research software.

1. Sign in with Firebase Auth and get an ID token (`getIdToken()`); send it as `Authorization: Bearer <token>`.
2. `POST /v1/scans` with the upload's content type (and size): a job id and a presigned S3 POST.
3. Upload the scan as `multipart/form-data` to `upload.url`: every entry of `upload.fields`, then the
   file as the **last** field, named `file`. S3 enforces the policy (key, Content-Type, size, expiry).
   A declared `size_bytes` over the deployment's multipart threshold (64 MiB) gets `multipart`
   instead: PUT each part's bytes to its URL, then `POST multipart.complete_url`. A dropped
   connection loses one part: `GET multipart.status_url` lists what S3 has and fresh URLs.
4. Poll `GET /v1/scans/{job_id}` until `state` is `DONE` or `FAILED`; when DONE, `results` holds
   short-lived download links and `viewer` the results viewer (relative to this API's base URL).
5. Instead of polling, register the device's FCM token with `POST /v1/devices`: each scan that ends
   (DONE or FAILED) sends one notification with its `job_id`, `state` and `finding` (or
   `error_code`) in the data, and no patient data. `DELETE /v1/devices/{device_id}` stops them.
6. `GET /v1/scans` lists your scans (newest first, `next` pages on); `DELETE /v1/scans/{job_id}`
   removes an ended scan and everything derived from it.

Without the `Authorization` header API Gateway answers `401`; with a token that is invalid, expired,
or for another Firebase project, `403` (both `{"message"}`: API Gateway's own bodies). Every other
refusal is an RFC 9457 problem (`application/problem+json`) whose `code` is stable: branch on it.
A job belongs to the user who created it: anyone else gets `404` `scan_not_found`. A body the schema
does not allow is `400` `invalid_request`, with `detail` naming the field.

`GET /v1/openapi.json` needs no token, so code generators can fetch this document.
"""
app.configure_openapi(
    title="ichseg scans API",
    version="2.0.0",  # 2.0.0: refusals are RFC 9457 problems; the document is public
    description=DESCRIPTION,
    servers=[Server(url="/", description="the deployed HTTP API or the local stack (`ichseg stack` prints its URL)")],
    security_schemes={
        "firebase": HTTPBearer(bearerFormat="Firebase ID token (RS256 JWT, aud = the Firebase project id)")
    },
    security=[{"firebase": []}],
)


def _problems(*codes: ProblemCode) -> dict[int, OpenAPIResponse]:
    """The OpenAPI responses for these problems, by status (codes of one status are listed together)."""
    by_status: dict[int, list[ProblemCode]] = {}
    for code in (*codes, ProblemCode.INTERNAL_ERROR):
        by_status.setdefault(code.status, []).append(code)
    return {
        status: {
            "description": " ".join(f"`{code.value}`: {code.phrase}." for code in group),
            "content": {PROBLEM_MEDIA_TYPE: {"model": Problem}},
        }
        for status, group in by_status.items()
    }


def _ok(description: str, model: type[Any]) -> OpenAPIResponse:
    return {"description": description, "content": {"application/json": {"model": model}}}


def _gateway(description: str) -> OpenAPIResponse:
    return {"description": description, "content": {"application/json": {"model": GatewayError}}}


AUTH_REFUSALS: dict[int, OpenAPIResponse] = {
    401: _gateway("No `Authorization` header (answered by API Gateway)."),
    403: _gateway("The token was refused (invalid signature, expired, wrong project, not RS256)."),
}
PUBLIC_OPERATIONS = frozenset({"getOpenApi"})
"""Operations served without a token (template.yaml gives their routes no authorizer; a test checks)."""
JobId = Annotated[str, Path(description="The job id `POST /v1/scans` returned.", max_length=64)]


def caller_uid() -> str:
    uid = app.current_event.request_context.authorizer.get_lambda.get("uid")
    if not uid:  # only reachable if the route was deployed without the authorizer
        raise ApiError(ProblemCode.UNAUTHENTICATED, "no authenticated user")
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
        **_problems(
            ProblemCode.INVALID_REQUEST,
            ProblemCode.UNSUPPORTED_UPLOAD_TYPE,
            ProblemCode.ACCOUNT_NOT_USABLE,
            ProblemCode.UPLOAD_TOO_LARGE,
            ProblemCode.UNSUPPORTED_MEDIA_TYPE,
        ),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def start_scan(request: Annotated[StartScanRequest, Body(embed=False)]) -> Response[UploadTicket]:
    uid = caller_uid()
    ticket = create_scan(pipeline_context(metrics), uid, request.content_type.value, request.size_bytes)
    logger.thread_safe_append_keys(job_id=ticket.job_id)
    logger.info("scan started; upload presigned")
    metrics.add_metric("ScansStarted", "Count", 1)
    return _json(201, ticket, {"Location": status_url(ticket.job_id)})


@app.get(
    "/v1/scans",
    operation_id="listScans",
    summary="The caller's scans, newest first, a page at a time",
    responses={
        200: _ok("One page of scans.", ScanList),
        **_problems(ProblemCode.INVALID_REQUEST, ProblemCode.INVALID_CURSOR),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def get_scans(
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX, description="Scans per page.")] = LIST_LIMIT_DEFAULT,
    cursor: Annotated[
        str | None, Query(alias="next", max_length=2048, description="The `next` of the previous page.")
    ] = None,
) -> Response[ScanList]:
    return _json(200, list_scans(pipeline_context(metrics), caller_uid(), limit, cursor))


@app.get(
    "/v1/scans/<job_id>",
    operation_id="getScan",
    summary="A job's state, progress, error, result links and viewer link",
    responses={
        200: _ok("The job, as its owner sees it.", ScanStatus),
        **_problems(ProblemCode.INVALID_REQUEST, ProblemCode.SCAN_NOT_FOUND),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def get_scan(job_id: JobId) -> Response[ScanStatus]:
    logger.thread_safe_append_keys(job_id=job_id)
    return _json(200, scan_status(pipeline_context(metrics), caller_uid(), job_id))


@app.delete(
    "/v1/scans/<job_id>",
    operation_id="deleteScan",
    summary="Delete an ended scan: its upload, work files, results, Firebase copy and record",
    responses={
        204: {"description": "Deleted. A second DELETE of the same job is 404."},
        **_problems(ProblemCode.INVALID_REQUEST, ProblemCode.SCAN_NOT_FOUND, ProblemCode.SCAN_IN_PROGRESS),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def remove_scan(job_id: JobId) -> Response[None]:
    logger.thread_safe_append_keys(job_id=job_id)
    delete_scan(pipeline_context(metrics), caller_uid(), job_id)
    logger.info("scan deleted")
    metrics.add_metric("ScansDeleted", "Count", 1)
    return Response(204, None, None, {"Cache-Control": "no-store"})


@app.get(
    "/v1/scans/<job_id>/upload",
    operation_id="getUpload",
    summary="A multipart upload in progress: the parts S3 has, fresh URLs for the others (resume)",
    responses={
        200: _ok("The upload's parts: PUT the missing ones, then POST complete_url.", MultipartUpload),
        **_problems(ProblemCode.INVALID_REQUEST, ProblemCode.SCAN_NOT_FOUND, ProblemCode.NOT_A_MULTIPART_UPLOAD),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def get_upload(job_id: JobId) -> Response[MultipartUpload]:
    logger.thread_safe_append_keys(job_id=job_id)
    return _json(200, multipart_status(pipeline_context(metrics), caller_uid(), job_id))


@app.post(
    "/v1/scans/<job_id>/upload/complete",
    operation_id="completeUpload",
    summary="Complete a multipart upload once every part is sent: the scan is then processed",
    responses={
        200: _ok("Complete (or completed already): the job, as GET /v1/scans/{job_id} shows it.", ScanStatus),
        **_problems(
            ProblemCode.INVALID_REQUEST,
            ProblemCode.SCAN_NOT_FOUND,
            ProblemCode.NOT_A_MULTIPART_UPLOAD,
            ProblemCode.UPLOAD_INCOMPLETE,
        ),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def complete_upload(job_id: JobId) -> Response[ScanStatus]:
    logger.thread_safe_append_keys(job_id=job_id)
    ctx = pipeline_context(metrics)
    job = complete_multipart(ctx, caller_uid(), job_id)
    logger.info("multipart upload complete")
    return _json(200, status_view(ctx, job))


DeviceId = Annotated[str, Path(description="The `device_id` `POST /v1/devices` returned.", max_length=64)]


@app.post(
    "/v1/devices",
    operation_id="registerDevice",
    summary="Be notified (FCM) on this device when each of your scans is DONE or FAILED",
    responses={
        201: _ok("Registered (or refreshed: the same token is the same device).", RegisteredDevice),
        **_problems(ProblemCode.INVALID_REQUEST, ProblemCode.UNSUPPORTED_MEDIA_TYPE),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def add_device(request: Annotated[RegisterDeviceRequest, Body(embed=False)]) -> Response[RegisteredDevice]:
    device = register_device(pipeline_context(metrics), caller_uid(), request.token, request.platform)
    logger.info("device registered", extra={"device_id": device.device_id, "platform": device.platform})
    return _json(201, device)


@app.delete(
    "/v1/devices/<device_id>",
    operation_id="removeDevice",
    summary="Stop notifying a device",
    responses={
        204: {"description": "Removed. A second DELETE of the same device is 404."},
        **_problems(ProblemCode.INVALID_REQUEST, ProblemCode.DEVICE_NOT_FOUND),
        **AUTH_REFUSALS,
    },
)
@tracer.capture_method
def drop_device(device_id: DeviceId) -> Response[None]:
    remove_device(pipeline_context(metrics), caller_uid(), device_id)
    logger.info("device removed", extra={"device_id": device_id})
    return Response(204, None, None, {"Cache-Control": "no-store"})


@app.get(
    "/v1/openapi.json",
    operation_id="getOpenApi",
    summary="This API's OpenAPI document",
    responses={
        200: {"description": "The OpenAPI 3 document.", "content": {"application/json": {"schema": {}}}},
        **_problems(),
    },
)
def openapi_document() -> Response[str]:
    return Response(200, content_types.APPLICATION_JSON, openapi_json(), {"Cache-Control": "max-age=300"})


def openapi_json() -> str:
    """The OpenAPI document as committed (``functions/openapi.json``): Powertools' document with
    what this API really answers, stable key order, newline-ended."""
    document = json.loads(app.get_openapi_json_schema())
    for operations in document["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            # Powertools documents its own 422 for validation errors (invalid_request answers 400) and
            # its own 500 body for a response that fails its model (internal_error answers it).
            responses.pop("422", None)
            responses["500"] = _INTERNAL_ERROR
            # A 204 has no body (and so no Content-Type): Powertools would document one.
            if "204" in responses:
                responses["204"].pop("content", None)
            if operation["operationId"] in PUBLIC_OPERATIONS:
                operation["security"] = []  # Powertools treats an empty list as "not given"
    schemas = document.get("components", {}).get("schemas", {})
    # Powertools' validation-error schemas: this API answers those as problems instead.
    for name in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        if f'"#/components/schemas/{name}"' not in json.dumps(document["paths"]):
            schemas.pop(name, None)
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


_INTERNAL_ERROR = {
    "description": f"`{ProblemCode.INTERNAL_ERROR.value}`: {ProblemCode.INTERNAL_ERROR.phrase}.",
    "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def _problem(code: ProblemCode, detail: str) -> Response[str]:
    return Response(
        code.status,
        PROBLEM_MEDIA_TYPE,
        Problem.of(code, detail[:1000]).model_dump_json(),
        {"Cache-Control": "no-store"},
    )


@app.exception_handler(ApiError)
def api_error(error: ApiError) -> Response[str]:
    return _problem(error.code, str(error))


@app.exception_handler(RequestValidationError)
def invalid_request(error: RequestValidationError) -> Response[str]:
    # Powertools answers 422 with pydantic's raw error list; the app (and the contract) get 400
    # with one readable detail naming each field, like every other refusal of this API.
    reasons = []
    for detail in error.errors():
        where = ".".join(str(part) for part in detail.get("loc", ()) if part != "body") or "body"
        reasons.append(f"{where}: {detail.get('msg', 'invalid')}")
    return _problem(ProblemCode.INVALID_REQUEST, "invalid request: " + "; ".join(reasons))


@app.exception_handler(UnreadableNumber)
def unreadable_number(error: UnreadableNumber) -> Response[str]:
    # Raised while the body is parsed, before any field is validated: the body is what it names.
    return _problem(ProblemCode.INVALID_REQUEST, f"invalid request: body: {error}")


@app.exception_handler(RecursionError)
def too_deep(error: RecursionError) -> Response[str]:
    # A body nested deeper than Python's JSON parser recurses is not a request, it is an attack.
    return _problem(ProblemCode.INVALID_REQUEST, "the JSON body is nested too deeply")


@app.exception_handler(NotFoundError)
def no_route(error: NotFoundError) -> Response[str]:
    # The front (API Gateway) matched the route, but the router could not read the path (a job id
    # of bytes that are not UTF-8): no such scan, like any other id that names none.
    return _problem(ProblemCode.SCAN_NOT_FOUND, "no scan at this path")


@app.exception_handler(Exception)
def internal_error(error: Exception) -> Response[str]:
    # Anything else is ichseg's fault: logged with its traceback, answered as a problem (not API
    # Gateway's bare 500), and never with the exception's text, which may name internals.
    logger.exception("the API failed")
    metrics.add_metric("ApiErrors", "Count", 1)
    return _problem(ProblemCode.INTERNAL_ERROR, f"ichseg could not answer ({type(error).__name__}); retry later")


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response[Any]:
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
    code = ProblemCode.UNSUPPORTED_MEDIA_TYPE
    problem = Problem.of(code, f"the body must be application/json, not {media_type or 'untyped'}")
    return {
        "statusCode": code.status,
        "headers": {"Content-Type": PROBLEM_MEDIA_TYPE, "Cache-Control": "no-store"},
        "body": problem.model_dump_json(),
        "isBase64Encoded": False,
    }
