"""The API as the app meets it: Firebase tokens at the door, presigned POST policy, owners only."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from ichseg.pipeline.api import UPLOAD_SIZE_SLACK
from ichseg.pipeline.auth import TokenRefusal
from ichseg.pipeline.config import ALLOWED_UPLOAD_TYPES
from ichseg.pipeline.jobs import JobSource
from infrastructure.local_stack import LocalStack
from infrastructure.token_issuer import ID_TOKEN_CERT_URL
from tests.settled import json_log_lines
from tests.stack_fixtures import AppClient, decode_policy


def _start(stack: LocalStack, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.post(f"{stack.api_url}/v1/scans", json={"content_type": "video/mp4"}, headers=headers, timeout=30)


def test_a_valid_firebase_token_is_accepted(stack: LocalStack) -> None:
    assert _start(stack, stack.token("alice")).status_code == 201


def test_missing_authorization_is_401_like_http_api(stack: LocalStack) -> None:
    response = _start(stack, None)
    assert response.status_code == 401 and response.json() == {"message": "Unauthorized"}


def _forgeries(stack: LocalStack) -> dict[str, str]:
    issuer = stack.issuer
    claims = issuer.claims("alice")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header, payload = (
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in ({"alg": "none", "typ": "JWT", "kid": issuer.key_id}, claims)
    )
    return {
        "expired": issuer.mint(
            "alice", lifetime_seconds=-60, iat=int(time.time()) - 4000, auth_time=int(time.time()) - 4000
        ),
        "wrong key": issuer.sign_with(claims, other_key),
        "unknown key id": issuer.sign_with(claims, other_key, key_id="not-a-google-key"),
        "wrong audience": issuer.mint("alice", aud="someone-elses-project"),
        "wrong issuer": issuer.mint("alice", iss="https://securetoken.google.com/someone-elses-project"),
        "HS256 with the public certificate as secret": issuer.sign_with(
            claims, issuer.certificate_pem.encode()[:64], algorithm="HS256"
        ),
        "alg none": f"{header}.{payload}.",
        "empty subject": issuer.mint("alice", sub=""),
        "sign-in in the future": issuer.mint("alice", auth_time=int(time.time()) + 3600),
        "no sign-in time": issuer.sign({k: v for k, v in claims.items() if k != "auth_time"}),
        "garbage": "not-a-jwt",
    }


def test_expired_and_forged_tokens_are_refused_by_the_authorizer(stack: LocalStack) -> None:
    # HTTP API answers 403 when a Lambda authorizer says isAuthorized=false (401 is only for a
    # missing identity source); the local front does exactly what API Gateway does.
    forgeries = _forgeries(stack)
    for name, token in forgeries.items():
        response = _start(stack, token)
        assert response.status_code == 403, f"{name}: {response.status_code} {response.text}"
        assert response.json() == {"message": "Forbidden"}
    # Each refusal is logged with its reason, and no token is (tests/pipeline/test_authorizer_logs.py has the
    # malformed ones, and every piece of them).
    reasons = {
        line.get("reason") for line in json_log_lines(stack, "authorizer") if line.get("message") == "token rejected"
    }
    assert {
        TokenRefusal.EXPIRED,
        TokenRefusal.BAD_SIGNATURE,
        TokenRefusal.UNKNOWN_KEY,
        TokenRefusal.WRONG_AUDIENCE,
        TokenRefusal.WRONG_ISSUER,
        TokenRefusal.WRONG_ALGORITHM,
        TokenRefusal.BAD_SUBJECT,
        TokenRefusal.FUTURE_SIGN_IN,
        TokenRefusal.NO_SIGN_IN_TIME,
        TokenRefusal.MALFORMED,
    } <= reasons
    logged = (stack.log_dir / "authorizer.log").read_text()
    assert not [name for name, token in forgeries.items() if token in logged]


def test_the_certificate_url_trusted_locally_is_the_one_firebase_admin_fetches() -> None:
    from firebase_admin import _token_gen

    assert _token_gen.ID_TOKEN_CERT_URI == ID_TOKEN_CERT_URL


def test_presigned_post_policy_pins_key_type_size_and_expiry(alice: AppClient, stack: LocalStack) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    response = alice.start("video/quicktime", size_bytes=1234)
    assert response.status_code == 201
    ticket = response.json()
    fields = ticket["upload"]["fields"]
    key = f"uploads/alice/{ticket['job_id']}/scan"
    assert fields["key"] == key and fields["Content-Type"] == "video/quicktime"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256" and "x-amz-signature" in fields
    policy = decode_policy(fields)
    conditions = policy["conditions"]
    assert {"bucket": stack.settings.bucket} in conditions
    assert {"key": key} in conditions  # exact match: no other key, no other user's prefix
    assert {"Content-Type": "video/quicktime"} in conditions
    # bound to the declared size: never shorter (a truncated file), at most UPLOAD_SIZE_SLACK longer
    assert ["content-length-range", 1234, 1234 + UPLOAD_SIZE_SLACK] in conditions
    assert ticket["max_bytes"] == 1234 + UPLOAD_SIZE_SLACK
    assert len(conditions) == 7  # bucket, key, type, size and the three SigV4 fields: nothing else
    assert not any(isinstance(c, list) and c[0] == "starts-with" for c in conditions)
    after = datetime.now(UTC)
    expires = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    # The policy expires expires_in after the request, however long the request took.
    lifetime = timedelta(seconds=ticket["expires_in"])
    assert before + lifetime <= expires <= after + lifetime and ticket["expires_in"] <= 300
    assert ticket["state"] == "RECEIVED" and ticket["status_url"] == f"/v1/scans/{ticket['job_id']}"
    assert response.headers["Location"] == ticket["status_url"]


def test_without_a_declared_size_the_policy_allows_up_to_the_upload_limit(alice: AppClient) -> None:
    ticket = alice.start("video/mp4").json()
    conditions = decode_policy(ticket["upload"]["fields"])["conditions"]
    assert ["content-length-range", 1, ticket["max_bytes"]] in conditions
    assert ticket["max_bytes"] == 536870912  # template.yaml's UploadMaxBytes default


@pytest.mark.parametrize("content_type", ["text/html", "application/x-sh", "", "video/mp4; boundary=x"])
def test_content_types_outside_the_allowed_list_are_refused(alice: AppClient, content_type: str) -> None:
    response = alice.start(content_type)
    # The model's enum refuses it: the detail names the field and every accepted type.
    problem = response.json()
    assert response.status_code == 400 and problem["code"] == "invalid_request" and "content_type" in problem["detail"]
    assert response.headers["Content-Type"] == "application/problem+json"
    assert all(t in problem["detail"] for t in ALLOWED_UPLOAD_TYPES)


def test_oversized_and_malformed_requests_are_refused(alice: AppClient, stack: LocalStack) -> None:
    # Over the deployment's limit: 413 upload_too_large, as the README says (not the schema's 400).
    over = alice.start(size_bytes=10**12)
    assert (
        over.status_code == 413 and over.json()["code"] == "upload_too_large" and "size_bytes" in over.json()["detail"]
    )
    assert alice.start(size_bytes="big").status_code == 400
    for body in (b"[1, 2]", b"{not json", b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        raw = requests.post(
            f"{stack.api_url}/v1/scans",
            data=body,
            headers={**alice.headers, "Content-Type": "application/json"},
            timeout=30,
        )
        assert raw.status_code == 400, body


def test_a_caller_sees_only_their_own_jobs(alice: AppClient, bob: AppClient, stack: LocalStack) -> None:
    job_id = alice.start().json()["job_id"]
    mine = alice.status(job_id)
    assert mine.status_code == 200 and mine.json()["state"] == "RECEIVED"
    assert mine.json()["progress"] == {"done": 0, "total": 0, "batches_done": 0, "batches_total": 0}
    assert mine.headers["Cache-Control"] == "no-store"
    theirs = bob.status(job_id)
    assert theirs.status_code == 404 and job_id in theirs.json()["detail"]
    assert theirs.json()["code"] == "scan_not_found"
    assert bob.status("0" * 32).status_code == 404
    assert bob.status("../../etc/passwd").status_code == 404
    hospital, _ = stack.inspect.store.create("ingest-" + "a" * 24, JobSource.INGEST, None, "ingest/x.zip", 900)
    assert alice.status(hospital.job_id).status_code == 404


def test_unknown_routes_are_404_without_calling_a_function(stack: LocalStack) -> None:
    response = requests.get(f"{stack.api_url}/v1/nothing-here", timeout=30)
    assert response.status_code == 404 and response.json() == {"message": "Not Found"}


def test_the_local_front_serves_the_routes_of_the_openapi_description() -> None:
    from infrastructure.api_front import routes_from_openapi

    assert sorted(route.key for route in routes_from_openapi()) == [
        "DELETE /v1/devices/{device_id}",
        "DELETE /v1/scans/{job_id}",
        "GET /v1/openapi.json",
        "GET /v1/scans",
        "GET /v1/scans/{job_id}",
        "GET /v1/scans/{job_id}/upload",
        "POST /v1/devices",
        "POST /v1/scans",
        "POST /v1/scans/{job_id}/upload/complete",
    ]
