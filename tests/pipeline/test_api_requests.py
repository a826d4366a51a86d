"""Request bodies the API refuses before anything is stored: absurd numbers are a 400, not a 500.

The API function runs in this process on HTTP API (payload v2) events; a refused body never reaches
AWS, so nothing else is needed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ichseg.pipeline.api_models import MAX_INTEGER_DIGITS, UnreadableNumber, read_json_body
from infrastructure.lambda_runtime import http_api_event


class Context:
    """The attributes of Lambda's context object that Powertools reads."""

    function_name, function_version, memory_limit_in_mb = "api", "$LATEST", 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:api"
    aws_request_id, log_group_name, log_stream_name = "0", "/aws/lambda/api", "test"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Any:
    from functions import api as module

    # What template.yaml gives every function (the module may have been imported without it).
    monkeypatch.setattr(module.metrics, "namespace", "ichseg-test")
    return module


def _start(api: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    event = http_api_event(
        "POST", "/v1/scans", "", {"host": "api.local", "content-type": "application/json"}, body,
        "POST /v1/scans", None, "127.0.0.1", {"uid": "alice"},
    )  # fmt: skip
    answer = api.handler(event, Context())
    return answer["statusCode"], json.loads(answer["body"])


def _size(number: str) -> bytes:
    return b'{"content_type": "video/mp4", "size_bytes": ' + number.encode() + b"}"


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("9" * 5001, "body: an integer of 5001 digits; at most 100 are read"),  # past Python's int() limit
        ("-" + "9" * 5001, "body: an integer of 5001 digits; at most 100 are read"),
        ("9" * 4300, "body: an integer of 4300 digits; at most 100 are read"),  # int() would take it
        ("1" + "0" * MAX_INTEGER_DIGITS, f"body: an integer of {MAX_INTEGER_DIGITS + 1} digits"),
        ("1e400", "body: a number beyond the range of a double"),
        ("-1e400", "body: a number beyond the range of a double"),
        ("NaN", "body: NaN, which is not JSON"),
        ("-Infinity", "body: -Infinity, which is not JSON"),
        ("-1", "size_bytes: Input should be greater than or equal to 1"),
        ("-" + "9" * 50, "size_bytes: Input should be greater than or equal to 1"),
    ],
)
def test_absurd_sizes_are_400_with_the_reason(api: Any, number: str, reason: str) -> None:
    status, body = _start(api, _size(number))
    assert status == 400, body
    assert (body["code"], body["status"], body["type"]) == (
        "invalid_request",
        400,
        "urn:ichseg:problem:invalid_request",
    )
    assert body["detail"].startswith(f"invalid request: {reason}")
    assert len(body["detail"]) < 200  # the reason, not the number


@pytest.mark.parametrize("number", ["9" * MAX_INTEGER_DIGITS, "1e20", "536870913"])
def test_sizes_over_the_limit_are_413_upload_too_large(api: Any, number: str) -> None:
    # Not a schema maximum (which would be a 400): the app can tell "too big" from "malformed".
    status, body = _start(api, _size(number))
    assert (status, body["code"], body["status"]) == (413, "upload_too_large", 413), body
    assert "536870912" in body["detail"]


def test_a_failure_of_ours_is_a_500_problem_that_names_no_internals(api: Any) -> None:
    # No bucket or table configured here: the valid request reaches storage, which is a deployment
    # mistake. The app gets internal_error, not API Gateway's bare 500 or the missing variables.
    status, body = _start(api, _size("1000"))
    assert (status, body["code"], body["type"]) == (500, "internal_error", "urn:ichseg:problem:internal_error")
    assert "ICHSEG_" not in body["detail"] and "ConfigError" in body["detail"]


def test_a_path_the_router_cannot_read_is_a_404_problem_not_a_500(api: Any) -> None:
    # API Gateway matched /v1/scans/{job_id}; the id's bytes are outside what the router matches.
    event = http_api_event(
        "GET", "/v1/scans/\r\x04\u00f1", "", {"host": "api.local"}, b"",
        "GET /v1/scans/{job_id}", {"job_id": "\r\x04\u00f1"}, "127.0.0.1", {"uid": "alice"},
    )  # fmt: skip
    answer = api.handler(event, Context())
    body = json.loads(answer["body"])
    assert (answer["statusCode"], body["code"]) == (404, "scan_not_found"), body
    assert answer["headers"]["Content-Type"] == "application/problem+json"


def test_the_parser_reads_every_json_number_a_request_can_mean() -> None:
    assert read_json_body('{"a": 12, "b": -3, "c": 5.0, "d": 1e3, "e": [0, -0.5]}') == {
        "a": 12,
        "b": -3,
        "c": 5.0,
        "d": 1000.0,
        "e": [0, -0.5],
    }
    assert read_json_body("9" * MAX_INTEGER_DIGITS) == int("9" * MAX_INTEGER_DIGITS)
    with pytest.raises(UnreadableNumber):
        read_json_body("9" * (MAX_INTEGER_DIGITS + 1))
