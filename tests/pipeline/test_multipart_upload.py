"""Resumable uploads (issue 21, item 3): a scan over the multipart threshold goes to S3 part by
part, survives an interruption, and is processed once it is complete, once.

On the stack's moto (the test environment's threshold is 6 MiB and the part size S3's smallest,
5 MiB; deployed: 64 and 16 MiB), through the API as the app calls it and through the CLI's client.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import requests

from client.api import ScansClient
from ichseg.pipeline.jobs import JobState
from infrastructure.local_stack import LocalStack
from tests.stack_fixtures import AppClient

MiB = 1024 * 1024
SIZE = 12 * MiB + 12345
"""Three parts: 5 MiB, 5 MiB and the rest."""


def _scan_file(tmp_path: Path) -> Path:
    """Bytes that are no scan: the job must end FAILED for its content, proving it was processed."""
    path = tmp_path / "large.mp4"
    path.write_bytes(os.urandom(SIZE))
    return path


def _stored(stack: LocalStack, job_id: str) -> bytes:
    job = stack.inspect.store.require(job_id)
    return bytes(stack.aws("s3").get_object(Bucket=stack.settings.bucket, Key=job.upload_key)["Body"].read())


def test_a_large_upload_gets_parts_resumes_after_an_interruption_and_completes_once(
    stack: LocalStack, tmp_path: Path
) -> None:
    ines = AppClient(stack, "ines-large")
    data = _scan_file(tmp_path).read_bytes()
    ticket = ines.start("video/mp4", size_bytes=SIZE).json()
    assert ticket["upload"] is None
    plan = ticket["multipart"]
    assert (plan["parts_total"], plan["part_size"], plan["parts_received"]) == (3, 5 * MiB, [])
    assert [(p["offset"], p["size"]) for p in plan["parts"]] == [
        (0, 5 * MiB),
        (5 * MiB, 5 * MiB),
        (10 * MiB, SIZE - 10 * MiB),
    ]
    job_id = ticket["job_id"]
    url = f"{stack.api_url}/v1/scans/{job_id}/upload"

    # The connection drops after the first part.
    first = plan["parts"][0]
    assert requests.put(first["url"], data=data[: first["size"]], timeout=60).status_code == 200
    early = requests.post(f"{url}/complete", headers=ines.headers, timeout=30)
    assert early.status_code == 409 and early.json()["code"] == "upload_incomplete" and "2, 3" in early.json()["detail"]

    # Resumed: S3 has part 1; fresh URLs for 2 and 3 only.
    status = requests.get(url, headers=ines.headers, timeout=30).json()
    assert status["parts_received"] == [1] and [p["part_number"] for p in status["parts"]] == [2, 3]
    for part in status["parts"]:
        chunk = data[part["offset"] : part["offset"] + part["size"]]
        assert requests.put(part["url"], data=chunk, timeout=60).status_code == 200
    done = requests.post(f"{url}/complete", headers=ines.headers, timeout=30)
    assert done.status_code == 200, done.text
    again = requests.post(f"{url}/complete", headers=ines.headers, timeout=30)  # a retry of a lost answer
    assert again.status_code == 200 and again.json()["job_id"] == job_id
    gone = requests.get(url, headers=ines.headers, timeout=30)
    assert gone.status_code == 409 and gone.json()["code"] == "not_a_multipart_upload"

    assert hashlib.sha256(_stored(stack, job_id)).digest() == hashlib.sha256(data).digest()
    job = ines.wait(job_id)
    assert job.state == JobState.FAILED and job.error_code is not None  # read once, and refused for what it is
    other = requests.get(url, headers=AppClient(stack, "eve-large").headers, timeout=30)
    assert other.status_code == 404  # someone else's upload does not exist for them


def test_a_part_of_the_wrong_size_is_named_and_can_be_sent_again(stack: LocalStack, tmp_path: Path) -> None:
    jon = AppClient(stack, "jon-large")
    data = _scan_file(tmp_path).read_bytes()
    ticket = jon.start("video/mp4", size_bytes=SIZE).json()
    parts = ticket["multipart"]["parts"]
    for part in parts:
        chunk = data[part["offset"] : part["offset"] + part["size"]]
        if part["part_number"] == 2:
            chunk = chunk[:1000]  # truncated by a flaky proxy
        assert requests.put(part["url"], data=chunk, timeout=60).status_code == 200
    url = f"{stack.api_url}/v1/scans/{ticket['job_id']}/upload"
    refused = requests.post(f"{url}/complete", headers=jon.headers, timeout=30)
    assert (
        refused.status_code == 409
        and refused.json()["detail"].startswith("1 of 3 parts")
        and ": 2 " in refused.json()["detail"]
    )
    (retry,) = requests.get(url, headers=jon.headers, timeout=30).json()["parts"]
    assert retry["part_number"] == 2
    assert requests.put(retry["url"], data=data[retry["offset"] : retry["offset"] + retry["size"]], timeout=60).ok
    assert requests.post(f"{url}/complete", headers=jon.headers, timeout=30).status_code == 200
    assert _stored(stack, ticket["job_id"]) == data


def test_the_cli_client_resumes_an_upload_with_only_the_missing_parts(stack: LocalStack, tmp_path: Path) -> None:
    path = _scan_file(tmp_path)
    data = path.read_bytes()
    kai = AppClient(stack, "kai-large")
    ticket = kai.start("video/mp4", size_bytes=SIZE).json()
    first = ticket["multipart"]["parts"][0]
    assert requests.put(first["url"], data=data[: first["size"]], timeout=60).status_code == 200  # then it died

    client = ScansClient(stack.api_url, stack.token("kai-large"))
    counted: list[int] = []
    client.resume(ticket["job_id"], path, on_bytes=counted.append)
    assert counted[0] == 5 * MiB and sum(counted) == SIZE  # part 1 counted as sent, then parts 2 and 3
    assert _stored(stack, ticket["job_id"]) == data

    fresh = ScansClient(stack.api_url, stack.token("kai-large")).submit(path)  # a whole upload, in parts
    assert _stored(stack, fresh) == data
