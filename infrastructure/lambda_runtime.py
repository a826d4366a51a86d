"""A local stand-in for the Lambda runtime: each function in its own processes, fed Lambda's event JSON.

moto cannot run Lambda without Docker, so the local stack runs the handlers itself. Each function
gets its own worker process(es) (spawned, never forked), which is what Lambda gives a function: its
own module globals, its own Powertools state, its own cold start, one invocation at a time per
process. Workers get the function's environment (fake credentials, the emulators' addresses) and
write their stdout/stderr, i.e. the structured logs and EMF metric lines, to
``<state dir>/logs/<function>.log``, the local CloudWatch log group.

Also here: builders for the events Lambda passes (SQS batches, EventBridge schedules, HTTP API v2
requests and authorizer requests).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import multiprocessing
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ACCOUNT_ID = "123456789012"
"""moto's default account: the ARNs in events must name it."""

_SCRUBBED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "FIREBASE_AUTH_EMULATOR_HOST",
)
"""Variables that could point a local function at a real account or weaken token checks."""


@dataclass(frozen=True)
class FunctionSpec:
    """One function as the template declares it: name, handler, settings."""

    name: str
    handler: str
    """``module.function``, e.g. ``functions.split.handler`` (template: ``functions/split.handler``)."""
    timeout_seconds: int = 60
    memory_mb: int = 1024
    concurrency: int = 1
    setup: tuple[str, tuple[Any, ...]] | None = None
    """``("module:function", args)`` run in each worker before the handler is imported (local only)."""


class FakeLambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    def __init__(self, spec_name: str, memory_mb: int, timeout_seconds: int, region: str) -> None:
        self.function_name = spec_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{spec_name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{spec_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self._deadline = time.time() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))


# ---------------------------------------------------------------------------------- in the worker

_worker: dict[str, Any] = {}


PARENT_CHECK_SECONDS = 1.0


def _exit_with_parent(parent: int) -> None:
    """End this worker once the stack's process is gone: a stack killed by a signal runs none of its
    clean-up, and a worker blocked waiting for work would otherwise live on, holding memory and ports."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _init_worker(spec: FunctionSpec, environment: Mapping[str, str], log_path: str) -> None:
    """Runs once per worker process: environment, log file, local setup hook, then the import (cold start)."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="ichseg-parent-watch", daemon=True).start()
    for name in _SCRUBBED:
        os.environ.pop(name, None)
    os.environ.update(environment)
    os.environ["AWS_LAMBDA_FUNCTION_NAME"] = spec.name
    log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.stderr = log
    if spec.setup is not None:
        target, args = spec.setup
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(*args)
    module_name, function_name = spec.handler.rsplit(".", 1)
    _worker["handler"] = getattr(importlib.import_module(module_name), function_name)
    _worker["spec"] = spec


def _invoke(event: dict[str, Any]) -> tuple[str, Any]:
    """One invocation: ("ok", JSON-round-tripped response) or ("error", Lambda-style error document)."""
    spec: FunctionSpec = _worker["spec"]
    context = FakeLambdaContext(spec.name, spec.memory_mb, spec.timeout_seconds, os.environ.get("AWS_REGION", ""))
    try:
        response = _worker["handler"](event, context)
        return "ok", json.loads(json.dumps(response))  # Lambda serialises the response: so do we
    except Exception as exc:  # a function error, as Lambda reports it to the event source
        traceback.print_exc()
        return "error", {"errorType": type(exc).__name__, "errorMessage": str(exc)}


def _warm() -> str:
    return _worker["spec"].name


# ---------------------------------------------------------------------------------- in the stack


class LocalFunction:
    """A function's worker processes; :meth:`invoke` is a synchronous Lambda Invoke.

    A worker that dies (killed, out of memory) fails the invocations it was running, as a crashed
    Lambda does, and the next :meth:`submit` starts fresh workers: Lambda would start a new
    execution environment, so the local stack must not stop serving the function.
    """

    def __init__(self, spec: FunctionSpec, environment: Mapping[str, str], log_dir: str) -> None:
        self.spec = spec
        self.environment = dict(environment)
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"{spec.name}.log")
        self.restarts = 0
        """How many times a broken set of workers was replaced."""
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.spec.concurrency,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.spec, dict(self.environment), self.log_path),
        )

    def warm(self) -> list[Future[str]]:
        """Start every worker now (cold starts happen here, not in the first job)."""
        return [self._pool.submit(_warm) for _ in range(self.spec.concurrency)]

    def submit(self, event: dict[str, Any]) -> Future[tuple[str, Any]]:
        """Start one invocation; replaces the workers first if one of them has died."""
        with self._lock:
            try:
                return self._pool.submit(_invoke, event)
            except BrokenProcessPool:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                self.restarts += 1
                return self._pool.submit(_invoke, event)

    def invoke(self, event: dict[str, Any]) -> tuple[str, Any]:
        return self.submit(event).result()

    def worker_pids(self) -> set[int]:
        """The process ids of the running workers (for fault-injection tests and benchmarks)."""
        with self._lock:
            futures = [self._pool.submit(os.getpid) for _ in range(self.spec.concurrency * 4)]
        return {f.result(timeout=60) for f in futures}

    def close(self) -> None:
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------- events


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping passes for a batch of received messages."""
    records = []
    for message in messages:
        attributes = {k: str(v) for k, v in message.get("Attributes", {}).items()}
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message["Body"],
                "attributes": attributes,
                "messageAttributes": {
                    name: {
                        "stringValue": value.get("StringValue"),
                        "binaryValue": base64.b64encode(value["BinaryValue"]).decode()
                        if "BinaryValue" in value
                        else None,
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": value.get("DataType", "String"),
                    }
                    for name, value in message.get("MessageAttributes", {}).items()
                },
                "md5OfBody": message.get("MD5OfBody") or hashlib.md5(message["Body"].encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


def scheduled_event(rule_arn: str, region: str) -> dict[str, Any]:
    """An EventBridge scheduled event (what a ``Schedule`` event source delivers)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": _iso_now(),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


def http_api_event(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    route_key: str,
    path_parameters: Mapping[str, str] | None,
    source_ip: str,
    authorizer_context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An HTTP API payload v2 request event."""
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    now = time.time()
    text_types = ("application/json", "text/")
    is_text = not body or any(lowered.get("content-type", "").startswith(t) for t in text_types)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query,
        "headers": lowered,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "local",
            "domainName": lowered.get("host", "localhost"),
            "domainPrefix": lowered.get("host", "localhost").split(".")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": route_key,
            "stage": "$default",
            "time": datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": not is_text,
    }
    if query:
        from urllib.parse import parse_qsl

        event["queryStringParameters"] = dict(parse_qsl(query, keep_blank_values=True))
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body:
        event["body"] = body.decode("utf-8", "replace") if is_text else base64.b64encode(body).decode()
    if authorizer_context is not None:
        event["requestContext"]["authorizer"] = {"lambda": dict(authorizer_context)}
    return event


def authorizer_event(request: Mapping[str, Any], region: str, identity: Sequence[str]) -> dict[str, Any]:
    """The payload v2 REQUEST authorizer event for an HTTP API request event."""
    method = request["requestContext"]["http"]["method"]
    arn = f"arn:aws:execute-api:{region}:{ACCOUNT_ID}:local/$default/{method}{request['rawPath']}"
    event = {key: value for key, value in request.items() if key not in ("body", "isBase64Encoded")}
    event.update({"type": "REQUEST", "routeArn": arn, "identitySource": list(identity)})
    return event
