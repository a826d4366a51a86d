"""Push when a job ends (FCM), down to the exact HTTP requests firebase-admin sends.

FCM has no emulator, so its two HTTPS endpoints are answered by ``responses`` in this process:
Google's OAuth token endpoint (the service account's signed JWT is exchanged for an access token)
and FCM v1's ``messages:send``. Everything else is real: the service-account JSON is read from the
stack's Secrets Manager (moto) as in the cloud, the devices live in the jobs table (moto), the job
ends through the real stages, and firebase-admin builds and sends each request.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ichseg.errors import ErrorCode
from ichseg.pipeline import AssembleMessage, UploadRef, assemble_results, create_scan, segment_batch
from ichseg.pipeline import keys as layout
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.devices import MAX_DEVICES, DeviceRegistry, Platform, device_id_of
from ichseg.pipeline.failures import fail_job
from ichseg.pipeline.jobs import JobSource, JobState, Stage, StageOutcome
from ichseg.pipeline.messages import SegmentMessage
from ichseg.pipeline.split import split_scan_into_batches
from infrastructure.local_stack import LocalStack
from tests.stack_fixtures import AppClient, head_frames, receive_all, video_bytes

PROJECT = "ichseg-push-test"
TOKEN_URI = "https://oauth2.googleapis.com/token"
FCM_URL = f"https://fcm.googleapis.com/v1/projects/{PROJECT}/messages:send"
ACCESS_TOKEN = "ya29.ichseg-test-access-token"
ANDROID = "fcm-token-android-" + "a" * 40
IOS = "fcm-token-ios-" + "b" * 40


class Metrics:
    """The metrics sink, recorded."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        self.counts[name] = self.counts.get(name, 0) + value


@pytest.fixture(scope="module")
def service_account_arn(stack: LocalStack) -> str:
    """A Firebase service account (a fresh RSA key) in the stack's Secrets Manager, as deployed."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    account = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0" * 40,
        "private_key": pem.decode(),
        "client_email": f"firebase-adminsdk@{PROJECT}.iam.gserviceaccount.com",
        "client_id": "1" * 21,
        "token_uri": TOKEN_URI,
    }
    secrets = stack.aws("secretsmanager")
    return str(secrets.create_secret(Name=f"{PROJECT}-firebase", SecretString=json.dumps(account))["ARN"])


@pytest.fixture
def push(core: PipelineContext, service_account_arn: str) -> PipelineContext:
    """``core`` with push on: FCM through ``PROJECT`` with the service account (no emulator, no mirror)."""
    config = dataclasses.replace(
        core.config,
        push_project_id=PROJECT,
        firebase_credentials_secret_arn=service_account_arn,
        storage_emulator_host="",
        firebase_bucket="",
    )
    return PipelineContext(config, metrics=Metrics(), session=core.session, sleep=core.sleep)


@pytest.fixture
def fcm() -> Iterator[dict[str, Any]]:
    """Google's token endpoint and FCM, answered here; ``answers`` maps a device token to FCM's
    (status, body) for it (default: 200, a message name). Only googleapis.com is intercepted."""
    state: dict[str, Any] = {"answers": {}, "sent": [], "token_requests": 0}

    def token(request: Any) -> tuple[int, dict[str, str], str]:
        state["token_requests"] += 1
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        assert "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in body
        return 200, {}, json.dumps({"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"})

    def send(request: Any) -> tuple[int, dict[str, str], str]:
        body = json.loads(request.body)
        state["sent"].append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        status, answer = state["answers"].get(body["message"]["token"], (200, {"name": f"projects/{PROJECT}/m/1"}))
        return status, {"Content-Type": "application/json"}, json.dumps(answer)

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http://127.0.0.1")
        mock.add_passthru("http://localhost")
        mock.add_callback(responses.POST, TOKEN_URI, callback=token)
        mock.add_callback(responses.POST, FCM_URL, callback=send)
        yield state


def _unregistered() -> tuple[int, dict[str, Any]]:
    """FCM v1's answer for a token whose app was uninstalled."""
    detail = {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
    return 404, {
        "error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND", "details": [detail]}
    }


def _app_job(ctx: PipelineContext, uid: str, job_id: str) -> None:
    ctx.store.create(job_id, JobSource.APP, uid, layout.upload_key(uid, job_id), 900)


def test_a_failed_app_job_sends_one_exact_fcm_request_per_device_once(
    push: PipelineContext, fcm: dict[str, Any]
) -> None:
    devices = DeviceRegistry(push.store)
    devices.register("pia", ANDROID, Platform.ANDROID)
    devices.register("pia", IOS, Platform.IOS)
    job_id = "f" * 32
    _app_job(push, "pia", job_id)

    assert fail_job(push, job_id, ErrorCode.BAD_SCAN, "scan.mp4 of Jane Doe could not be decoded", Stage.SPLIT)
    assert fcm["token_requests"] >= 1  # the service account signed in (each send thread may refresh)
    assert sorted(sent["body"]["message"]["token"] for sent in fcm["sent"]) == sorted([ANDROID, IOS])
    for sent in fcm["sent"]:
        assert sent["headers"]["authorization"] == f"Bearer {ACCESS_TOKEN}"
        assert sent["body"] == {
            "message": {
                "token": sent["body"]["message"]["token"],
                "data": {"job_id": job_id, "state": "FAILED", "error_code": "bad_scan"},
                "notification": {
                    "title": "ichseg: scan failed",
                    "body": "The scan could not be read (bad_scan). Open the app.",
                },
                "android": {"priority": "high", "collapse_key": job_id},
                "apns": {"headers": {"apns-priority": "10", "apns-collapse-id": job_id}},
            }
        }
        assert "Jane" not in json.dumps(sent["body"])  # the reason (it may name the file) is not sent
    assert push.metrics.counts["PushesSent"] == 2  # type: ignore[attr-defined]

    # A second failure of the same job (a redelivered message) changes nothing and sends nothing.
    assert not fail_job(push, job_id, ErrorCode.BAD_SCAN, "again", Stage.SPLIT)
    assert len(fcm["sent"]) == 2


def test_a_done_job_pushes_its_finding_from_the_assembly(
    push: PipelineContext, fcm: dict[str, Any], tmp_path: Path
) -> None:
    DeviceRegistry(push.store).register("quinn", ANDROID, Platform.ANDROID)
    data = video_bytes(tmp_path, head_frames(5, bleed_from=2))
    ticket = create_scan(push, "quinn", "video/mp4", len(data))
    key = layout.upload_key("quinn", ticket.job_id)
    etag = push.s3.put_object(Bucket=push.config.bucket, Key=key, Body=data)["ETag"]
    assert split_scan_into_batches(push, UploadRef.from_object(push.config.bucket, key, etag, len(data))).outcome
    for message in receive_all(push, push.config.segment_queue_url):
        segment_batch(push, SegmentMessage.from_json(message["Body"]))
    receive_all(push, push.config.assemble_queue_url)
    assert fcm["sent"] == []  # nothing before the job ends
    assert assemble_results(push, AssembleMessage(job_id=ticket.job_id)).outcome == StageOutcome.DONE

    finding = push.store.require(ticket.job_id).summary["finding"]
    (sent,) = fcm["sent"]
    message = sent["body"]["message"]
    assert message["token"] == ANDROID
    assert message["data"] == {"job_id": ticket.job_id, "state": "DONE", "finding": finding}
    assert message["notification"]["body"].startswith(f"{finding}.")


def test_unregistered_tokens_are_dropped_and_no_fcm_failure_fails_anything(
    push: PipelineContext, fcm: dict[str, Any]
) -> None:
    devices = DeviceRegistry(push.store)
    devices.register("rui", ANDROID, Platform.ANDROID)
    devices.register("rui", IOS, Platform.IOS)
    fcm["answers"][ANDROID] = _unregistered()
    fcm["answers"][IOS] = (503, {"error": {"code": 503, "message": "unavailable", "status": "UNAVAILABLE"}})
    job_id = "e" * 32
    _app_job(push, "rui", job_id)

    assert fail_job(push, job_id, ErrorCode.CORRUPT_SCAN, "truncated", Stage.SPLIT)
    assert push.store.require(job_id).state == JobState.FAILED
    assert [d.token for d in devices.devices("rui")] == [IOS]  # uninstalled: dropped; unavailable: kept
    assert push.metrics.counts["PushFailures"] == 2  # type: ignore[attr-defined]


def test_hospital_jobs_and_stacks_without_push_send_nothing(
    core: PipelineContext, push: PipelineContext, fcm: dict[str, Any]
) -> None:
    DeviceRegistry(push.store).register("sam", ANDROID, Platform.ANDROID)
    hospital = "ingest-" + "c" * 24
    push.store.create(hospital, JobSource.INGEST, None, "ingest/site/x.zip", 900)
    assert fail_job(push, hospital, ErrorCode.BAD_SCAN, "not a CT", Stage.SPLIT)
    unconfigured = "d" * 32
    _app_job(core, "sam", unconfigured)
    assert fail_job(core, unconfigured, ErrorCode.BAD_SCAN, "not a CT", Stage.SPLIT)  # no ICHSEG_PUSH_PROJECT_ID
    assert fcm["sent"] == [] and fcm["token_requests"] == 0


def test_a_user_registers_at_most_max_devices_and_removes_them(stack: LocalStack) -> None:
    ada = AppClient(stack, "ada-devices")
    url = f"{stack.api_url}/v1/devices"

    def register(token: str, platform: str = "android") -> requests.Response:
        return requests.post(url, json={"token": token, "platform": platform}, headers=ada.headers, timeout=30)

    first = register(ANDROID)
    assert first.status_code == 201, first.text
    assert first.json()["device_id"] == device_id_of(ANDROID) and first.json()["devices_max"] == MAX_DEVICES
    assert ANDROID not in first.text  # the token is never echoed back
    assert register(ANDROID).json()["device_id"] == first.json()["device_id"]  # the same device, refreshed
    tokens = [f"fcm-token-{i:02d}-" + "c" * 30 for i in range(MAX_DEVICES)]
    for token in tokens:
        assert register(token, "ios").status_code == 201
    registry = DeviceRegistry(stack.inspect.store)
    assert sorted(d.token for d in registry.devices("ada-devices")) == sorted(tokens)  # the oldest went

    gone = requests.delete(f"{url}/{device_id_of(tokens[0])}", headers=ada.headers, timeout=30)
    assert gone.status_code == 204
    again = requests.delete(f"{url}/{device_id_of(tokens[0])}", headers=ada.headers, timeout=30)
    assert again.status_code == 404 and again.json()["code"] == "device_not_found"
    other = requests.delete(f"{url}/{device_id_of(tokens[1])}", headers=AppClient(stack, "eve").headers, timeout=30)
    assert other.status_code == 404  # someone else's device: not found, and still registered
    assert len(registry.devices("ada-devices")) == MAX_DEVICES - 1
    for bad in ({"token": "short", "platform": "ios"}, {"token": ANDROID, "platform": "fax"}, {"token": ANDROID}):
        refused = requests.post(url, json=bad, headers=ada.headers, timeout=30)
        assert refused.status_code == 400 and refused.json()["code"] == "invalid_request", bad
