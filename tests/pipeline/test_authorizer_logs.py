"""The authorizer never logs a token, malformed or not, and still logs why it refused one.

The handler runs in this process on authorizer events shaped as API Gateway sends them; everything
it could write is read back: its Powertools logger (through an extra handler with the same
formatter), any other logger (``caplog``), and the process's stdout and stderr (``capfd``). Every
case is refused before a certificate would be fetched, so no network is needed.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import string
from collections.abc import Iterator
from typing import Any

import pytest

from ichseg.pipeline.auth import MAX_TOKEN_CHARS, TokenRefusal
from infrastructure.lambda_runtime import authorizer_event, http_api_event
from infrastructure.token_issuer import LocalTokenIssuer

PROJECT = "ichseg-authorizer-log-test"
PIECE = 8
"""No piece of a token this long may appear in the logs."""
_RNG = random.Random(19)  # fixed: the same tokens every run, so nothing here is left to chance
ATTACKER_TEXT = "".join(_RNG.choices(string.ascii_letters, k=40))
"""What a forger writes inside a token (a claim, a header): it must not reach the logs decoded either."""
NOISE = "".join(_RNG.choices(string.ascii_letters + string.digits + "-_", k=MAX_TOKEN_CHARS * 12))


class Context:
    """The attributes of Lambda's context object that Powertools reads."""

    function_name, function_version, memory_limit_in_mb = "authorizer", "$LATEST", 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:authorizer"
    log_group_name, log_stream_name = "/aws/lambda/authorizer", "test"

    def __init__(self, request_id: str) -> None:
        self.aws_request_id = request_id

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _cases() -> dict[str, tuple[str, TokenRefusal]]:
    """Name -> (the Authorization header's token, the reason the log must give)."""
    issuer = LocalTokenIssuer(PROJECT)
    token = issuer.mint("alice")
    header, payload, signature = token.split(".")
    return {
        "trailing dot": (f"{token}.", TokenRefusal.MALFORMED),
        "two dots together": (f"{header}..{signature}", TokenRefusal.MALFORMED),
        "two segments": (f"{header}.{payload}", TokenRefusal.MALFORMED),
        "four segments": (f"{token}.{_b64(b'another signature')}", TokenRefusal.MALFORMED),
        "non-base64": (f"{header}+/.{payload}==.{signature}!", TokenRefusal.MALFORMED),
        "very long": (f"{header}.{NOISE}.{signature}", TokenRefusal.MALFORMED),
        "contains a newline": (f"{header}.{payload[:40]}\n{payload[40:]}.{signature}", TokenRefusal.MALFORMED),
        # Well shaped, refused by the library with messages that quote the token or its pieces.
        "header not an object": (
            f"{_b64(json.dumps([ATTACKER_TEXT]).encode())}.{payload}.{signature}",
            TokenRefusal.MALFORMED,
        ),
        "payload not JSON": (f"{header}.{_b64(ATTACKER_TEXT.encode() * 3)}.{signature}", TokenRefusal.MALFORMED),
        "wrong audience chosen by the attacker": (issuer.mint("alice", aud=ATTACKER_TEXT), TokenRefusal.WRONG_AUDIENCE),
        "garbage": (f"not-a-jwt-{ATTACKER_TEXT}", TokenRefusal.MALFORMED),
    }


def _event(token: str) -> dict[str, Any]:
    request = http_api_event(
        "POST", "/v1/scans", "", {"host": "api.local", "authorization": f"Bearer {token}"}, b"", "POST /v1/scans",
        None, "127.0.0.1", None,
    )  # fmt: skip
    return authorizer_event(request, "us-east-1", ["$request.header.Authorization"])


@pytest.fixture
def authorizer(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, io.StringIO]]:
    """The authorizer module, its logger copied into a buffer."""
    monkeypatch.setenv("FIREBASE_PROJECT_ID", PROJECT)
    monkeypatch.delenv("FIREBASE_AUTH_EMULATOR_HOST", raising=False)
    from functions import authorizer as module

    # What template.yaml gives every function (the module may have been imported without it).
    monkeypatch.setattr(module.metrics, "namespace", "ichseg-test")
    buffer = io.StringIO()
    copy = logging.StreamHandler(buffer)
    copy.setFormatter(module.logger.registered_formatter)
    module.logger.addHandler(copy)
    try:
        yield module, buffer
    finally:
        module.logger.removeHandler(copy)


def _pieces(text: str) -> set[str]:
    return {text[i : i + PIECE] for i in range(len(text) - PIECE + 1)}


def test_refused_tokens_are_never_logged_and_their_reason_is(
    authorizer: tuple[Any, io.StringIO], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    module, buffer = authorizer
    caplog.set_level(logging.DEBUG)
    cases = _cases()
    for name, (token, _) in cases.items():
        answer = module.handler(_event(token), Context(f"case-{name}"))
        assert answer["isAuthorized"] is False, name
    captured = capfd.readouterr()
    logged = "\n".join((buffer.getvalue(), caplog.text, captured.out, captured.err))

    # The reason is there, one record per case, each under its own request id.
    reasons = {}
    for line in buffer.getvalue().splitlines():
        record = json.loads(line)
        if record.get("message") == "token rejected":
            reasons[record["function_request_id"]] = record["reason"]
            assert record["detail"] == TokenRefusal(record["reason"]).description
    assert reasons == {f"case-{name}": reason.value for name, (_, reason) in cases.items()}

    # Not the token, nor any piece of it, nor what the attacker wrote inside it.
    seen = _pieces(logged)
    for name, (token, _) in cases.items():
        leaked = sorted(_pieces(token) & seen)
        assert not leaked, f"{name}: {leaked[:3]} logged"
    assert not _pieces(ATTACKER_TEXT) & seen, "text decoded from a token was logged"


def test_a_missing_or_non_bearer_header_is_logged_as_such(
    authorizer: tuple[Any, io.StringIO], capfd: pytest.CaptureFixture[str]
) -> None:
    module, buffer = authorizer
    secret = "Basic " + "".join(random.Random(7).choices(string.ascii_letters, k=32))
    event = _event("x")
    event["headers"]["authorization"] = secret
    assert module.handler(event, Context("basic"))["isAuthorized"] is False
    captured = capfd.readouterr()
    records = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [r["reason"] for r in records if r.get("message") == "token rejected"] == [TokenRefusal.NO_BEARER.value]
    assert not _pieces(secret[6:]) & _pieces(buffer.getvalue() + captured.out + captured.err)
