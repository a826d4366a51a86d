"""The rest of the API as the app meets it: listing, deleting, the viewer link, refused bodies.

Everything runs through the local front (authorizer + API function in their worker processes)
against moto and the Firebase Storage emulator; nothing here is mocked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from ichseg.pipeline import keys
from ichseg.pipeline.api_models import ScanStatus
from infrastructure.api_front import MAX_BODY_BYTES
from infrastructure.local_stack import LocalStack
from tests.settled import json_log_lines, settled_invocations
from tests.stack_fixtures import AppClient, head_frames, video_bytes


def _list(client: AppClient, **params: object) -> requests.Response:
    return requests.get(f"{client.stack.api_url}/v1/scans", params=params, headers=client.headers, timeout=30)


def _delete(client: AppClient, job_id: str) -> requests.Response:
    return requests.delete(f"{client.stack.api_url}/v1/scans/{job_id}", headers=client.headers, timeout=60)


def _versions(stack: LocalStack, prefix: str) -> list[str]:
    page = stack.aws("s3").list_object_versions(Bucket=stack.settings.bucket, Prefix=prefix)
    return [entry["Key"] for entry in page.get("Versions", []) + page.get("DeleteMarkers", [])]


def test_listing_is_the_callers_jobs_newest_first_a_page_at_a_time(stack: LocalStack) -> None:
    carol, dave = AppClient(stack, "carol-list"), AppClient(stack, "dave-list")
    started = []
    for _ in range(5):
        started.append(carol.start().json()["job_id"])
        time.sleep(0.005)  # created_at has millisecond resolution: keep the order unambiguous
    dave_job = dave.start().json()["job_id"]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 2, **({"next": cursor} if cursor else {})}
        response = _list(carol, **params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["scans"]) <= 2
        seen += [scan["job_id"] for scan in page["scans"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == started[::-1] and pages >= 3  # newest first, every job once, in pages of two
    first = _list(carol, limit=1).json()["scans"][0]
    assert first["state"] == "RECEIVED" and first["status_url"] == f"/v1/scans/{started[-1]}"
    assert [scan["job_id"] for scan in _list(dave).json()["scans"]] == [dave_job]


def test_a_cursor_is_only_good_for_its_owner_and_malformed_ones_are_400(stack: LocalStack) -> None:
    erin, frank = AppClient(stack, "erin-list"), AppClient(stack, "frank-list")
    for _ in range(2):
        erin.start()
    cursor = _list(erin, limit=1).json()["next"]
    assert cursor
    # Someone else's cursor must not read erin's index partition: refused, not a 500 from DynamoDB.
    stolen = _list(frank, limit=1, next=cursor)
    assert stolen.status_code == 400 and stolen.json()["code"] == "invalid_cursor"
    for bad in ("garbage", "e30", "W10", "%%%", "eyJhIjoxfQ"):
        response = _list(erin, next=bad)
        assert response.status_code == 400 and response.json()["code"] == "invalid_cursor", (bad, response.text)
    for limit in ("0", "101", "ten", "-1"):
        response = _list(erin, limit=limit)
        assert response.status_code == 400 and "limit" in response.json()["detail"], limit
        assert response.json()["code"] == "invalid_request"


def test_status_has_the_viewer_link(alice: AppClient) -> None:
    job_id = alice.start().json()["job_id"]
    assert alice.status(job_id).json()["viewer"] == f"/viewer/?job={job_id}"


def test_deleting_a_done_job_removes_every_version_the_mirror_and_the_row(stack: LocalStack, tmp_path: Path) -> None:
    gina, bob = AppClient(stack, "gina-delete"), AppClient(stack, "bob")
    job_id = gina.upload(video_bytes(tmp_path, head_frames(6, bleed_from=3)))
    assert gina.wait(job_id).state.value == "DONE"
    status = gina.status(job_id).json()
    ScanStatus.model_validate(status)  # a DONE job's status is what the contract documents
    assert set(status["results"]) >= {"overlay", "report", "contact_sheet"}
    assert status["slices"] and status["viewer"] == f"/viewer/?job={job_id}"
    assert requests.get(status["results"]["report"], timeout=30).status_code == 200
    # A second version of a result (the bucket is versioned): DELETE must remove old versions too.
    s3 = stack.aws("s3")
    s3.put_object(Bucket=stack.settings.bucket, Key=f"results/{job_id}/report.json", Body=b"{}")
    prefixes = (f"uploads/gina-delete/{job_id}/", f"work/{job_id}/", f"results/{job_id}/")
    assert all(_versions(stack, prefix) for prefix in prefixes[::2])
    mirror = f"users/gina-delete/scans/{job_id}/"
    assert stack.inspect.firebase_objects(mirror)

    assert _delete(bob, job_id).status_code == 404  # someone else's job: not found, untouched
    assert gina.status(job_id).status_code == 200
    response = _delete(gina, job_id)
    assert response.status_code == 204 and response.content == b""
    assert [_versions(stack, prefix) for prefix in prefixes] == [[], [], []]
    assert stack.inspect.firebase_objects(mirror) == []
    assert stack.inspect.store.get(job_id) is None
    assert gina.status(job_id).status_code == 404
    assert job_id not in [scan["job_id"] for scan in _list(gina).json()["scans"]]
    assert _delete(gina, job_id).status_code == 404  # the second DELETE: documented as 404


def test_a_failed_job_can_be_deleted_and_a_running_one_cannot(stack: LocalStack) -> None:
    hana = AppClient(stack, "hana-delete")
    running = hana.start().json()["job_id"]
    refused = _delete(hana, running)
    assert refused.status_code == 409 and "RECEIVED" in refused.json()["detail"]
    assert refused.json()["code"] == "scan_in_progress"
    assert hana.status(running).status_code == 200  # nothing was removed
    failed = hana.upload(b"this is not a scan at all" * 10, "video/mp4")
    assert hana.wait(failed).state.value == "FAILED"
    assert _delete(hana, failed).status_code == 204
    assert _versions(stack, f"uploads/hana-delete/{failed}/") == []


def _upload_event(stack: LocalStack, key: str) -> str:
    """An S3 ObjectCreated notification for ``key``, as the bucket sends it to the ingest queue."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventName": "ObjectCreated:Post",
        "s3": {"bucket": {"name": stack.settings.bucket}, "object": {"key": key, "size": 250, "eTag": "x"}},
    }
    return json.dumps({"Records": [record]})


def test_a_deleted_job_stays_deleted_and_a_job_the_api_never_made_never_runs(stack: LocalStack, tmp_path: Path) -> None:
    ivy = AppClient(stack, "ivy-delete")
    job_id = ivy.upload(b"this is not a scan at all" * 10, "video/mp4")
    assert ivy.wait(job_id).state.value == "FAILED"
    assert _delete(ivy, job_id).status_code == 204
    # The upload's S3 event delivered once more (SQS is at-least-once), after the delete.
    replay = _upload_event(stack, keys.upload_key("ivy-delete", job_id))
    stack.aws("sqs").send_message(QueueUrl=stack.queues["ingest"].url, MessageBody=replay)
    # An object at an app key whose job the API never created (written with the bucket's own rights).
    stray = keys.new_job_id()
    data = video_bytes(tmp_path, head_frames(4))
    stack.aws("s3").put_object(Bucket=stack.settings.bucket, Key=keys.upload_key("ivy-delete", stray), Body=data)

    replayed = settled_invocations(stack, "split", job_id, lambda found: any(i.bodies == [replay] for i in found))
    strays = settled_invocations(stack, "split", stray)
    # Both consumed at once: no failure, so no retry and nothing for the dead-letter queue.
    assert all(not i.failed_ids and i.error is None for i in replayed + strays)
    outcomes = {
        (line.get("job_id"), line.get("outcome"))
        for line in json_log_lines(stack, "split")
        if line.get("message") == "split outcome"
    }
    assert {(job_id, "deleted"), (stray, "unknown")} <= outcomes
    for refused in (job_id, stray):
        assert stack.inspect.store.get(refused) is None
        assert ivy.status(refused).status_code == 404
        assert _versions(stack, f"work/{refused}/") == []
    assert _list(ivy).json()["scans"] == []
    # The stray object is left to the uploads/ lifecycle rule (the split may only read uploads).
    assert _versions(stack, f"uploads/ivy-delete/{stray}/") == [f"uploads/ivy-delete/{stray}/scan"]


@pytest.mark.parametrize(
    "number",
    ["9" * 5001, "-" + "9" * 5001, "1e400", "-1e400", "-1", "NaN"],
)
def test_absurd_size_numbers_are_400_not_500(alice: AppClient, number: str) -> None:
    response = requests.post(
        f"{alice.stack.api_url}/v1/scans",
        data=b'{"content_type": "video/mp4", "size_bytes": ' + number.encode() + b"}",
        headers={**alice.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text[:300]
    detail = response.json()["detail"]
    assert detail.startswith("invalid request: ") and ("size_bytes" in detail or "body: " in detail)


@pytest.mark.parametrize(
    "body",
    [
        {"content_type": "video/mp4", "size_bytes": "12"},  # strict: a string is not an integer
        {"content_type": "video/mp4", "size_bytes": True},
        {"content_type": "video/mp4", "size_bytes": 1.5},
        {"content_type": "video/mp4", "size_bytes": 0},
        {"content_type": "video/mp4", "sizebytes": 12},  # a misspelt field is an error, not ignored
        {"content_type": 7},
        {},
    ],
)
def test_bodies_outside_the_schema_are_400_with_a_reason(alice: AppClient, body: dict[str, object]) -> None:
    response = requests.post(f"{alice.stack.api_url}/v1/scans", json=body, headers=alice.headers, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith("invalid request: ")
    assert response.json()["code"] == "invalid_request"


def test_unknown_methods_on_known_paths_are_405_and_unknown_paths_404(alice: AppClient) -> None:
    url = f"{alice.stack.api_url}/v1/scans"
    for method in ("TRACE", "PUT", "PATCH"):
        response = requests.request(method, url, headers=alice.headers, timeout=30)
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "GET, POST"
    assert requests.request("TRACE", url + "/x/y", headers=alice.headers, timeout=30).status_code == 404


def test_bodies_over_the_http_api_payload_limit_are_413_and_up_to_it_reach_the_function(alice: AppClient) -> None:
    url = f"{alice.stack.api_url}/v1/scans"
    headers = {**alice.headers, "Content-Type": "application/json"}
    too_big = requests.post(url, data=b" " * (MAX_BODY_BYTES + 1), headers=headers, timeout=60)
    assert too_big.status_code == 413
    # Exactly the limit: JSON padded with whitespace, a valid request that the function answers.
    body = b'{"content_type": "video/mp4"}'
    at_limit = requests.post(url, data=body + b" " * (MAX_BODY_BYTES - len(body)), headers=headers, timeout=60)
    assert at_limit.status_code == 201, at_limit.text[:200]


def test_the_api_serves_its_generated_openapi_document(alice: AppClient) -> None:
    from functions.openapi import SPEC

    response = requests.get(f"{alice.stack.api_url}/v1/openapi.json", headers=alice.headers, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    assert response.json() == json.loads(SPEC.read_text())
    # Public (code generators fetch it without a token); a token, even a bad one, changes nothing.
    anonymous = requests.get(f"{alice.stack.api_url}/v1/openapi.json", timeout=30)
    assert anonymous.status_code == 200 and anonymous.json() == response.json()
    bad_token = {"Authorization": "Bearer not-a-token"}
    assert requests.get(f"{alice.stack.api_url}/v1/openapi.json", headers=bad_token, timeout=30).status_code == 200


def test_a_non_json_body_is_415_not_a_crash(alice: AppClient) -> None:
    for content_type in ("multipart/form-data", "text/plain", "application/x-www-form-urlencoded"):
        response = requests.post(
            f"{alice.stack.api_url}/v1/scans",
            data=b'{"content_type": "video/mp4"}',
            headers={**alice.headers, "Content-Type": content_type},
            timeout=30,
        )
        assert response.status_code == 415, (content_type, response.text)
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["code"] == "unsupported_media_type"
