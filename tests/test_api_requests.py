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
        ("9" * MAX_INTEGER_DIGITS, "size_bytes: Input should be less than or equal to 536870912"),
        ("1e20", "size_bytes: Input should be less than or equal to 536870912"),
        ("-1", "size_bytes: Input should be greater than or equal to 1"),
        ("-" + "9" * 50, "size_bytes: Input should be greater than or equal to 1"),
    ],
)
def test_absurd_sizes_are_400_with_the_reason(api: Any, number: str, reason: str) -> None:
    status, body = _start(api, _size(number))
    assert status == 400, body
    assert body["message"].startswith(f"invalid request: {reason}")
    assert len(body["message"]) < 200  # the reason, not the number


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
