"""The contract generates working clients: what an app developer does with ``/v1/openapi.json``.

``openapi-generator-cli`` (PyPI; the generator's jar on Debian's JRE) writes a Dart client
(``dart-dio``: the Flutter app's) and a Python client from the document the local stack serves,
fetched without a token, as a code generator would. The generator validates the document first
(no ``--skip-validate-spec``). The Python client then drives the local stack: start a scan, upload
it, poll it to DONE, list it, delete it, and read a refusal as a typed problem.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

from infrastructure.local_stack import LocalStack
from tests.conftest import REPO
from tests.stack_fixtures import head_frames, video_bytes

GENERATOR = Path(sys.executable).with_name("openapi-generator-cli")
PACKAGE = "ichseg_api_client"
TIMEOUT_SECONDS = 300
"""A safety net for a hung generator, far above its usual few seconds."""


def _generate(spec: Path, generator: str, out: Path, *options: str) -> None:
    command = [str(GENERATOR), "generate", "-g", generator, "-i", str(spec), "-o", str(out), *options]
    run = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]


@pytest.fixture(scope="module")
def served_spec(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    response = requests.get(f"{stack.api_url}/v1/openapi.json", timeout=30)  # no Authorization header
    assert response.status_code == 200, response.text[:300]
    assert response.text == (REPO / "functions" / "openapi.json").read_text()
    spec = tmp_path_factory.mktemp("contract") / "openapi.json"
    spec.write_text(response.text)
    return spec


@pytest.fixture(scope="module")
def client(served_spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    out = tmp_path_factory.mktemp("python-client")
    _generate(served_spec, "python", out, "--package-name", PACKAGE)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_the_dart_dio_client_generates_with_every_operation_and_model(served_spec: Path, tmp_path: Path) -> None:
    _generate(served_spec, "dart-dio", tmp_path, "--additional-properties", "pubName=ichseg_api")
    api = (tmp_path / "lib" / "src" / "api" / "default_api.dart").read_text()
    for operation in ("startScan", "listScans", "getScan", "deleteScan", "getOpenApi"):
        assert f"{operation}(" in api, operation
    models = {path.stem for path in (tmp_path / "lib" / "src" / "model").glob("*.dart")}
    assert {"problem", "problem_code", "scan_status", "upload_ticket", "headline", "finding"} <= models
    problem_codes = (tmp_path / "lib" / "src" / "model" / "problem_code.dart").read_text()
    assert "scan_not_found" in problem_codes and "upload_too_large" in problem_codes


def _api(client: ModuleType, stack: LocalStack, uid: str) -> Any:
    configuration = client.Configuration(host=stack.api_url, access_token=stack.token(uid))
    return client.DefaultApi(client.ApiClient(configuration))


def test_the_python_client_runs_a_scan_end_to_end(client: ModuleType, stack: LocalStack, tmp_path: Path) -> None:
    api = _api(client, stack, "generated-client-user")
    data = video_bytes(tmp_path, head_frames(6, bleed_from=3))
    ticket = api.start_scan(
        client.StartScanRequest(content_type=client.UploadContentType.VIDEO_SLASH_MP4, size_bytes=len(data))
    )
    assert ticket.state == "RECEIVED" and ticket.status_url == f"/v1/scans/{ticket.job_id}"
    posted = requests.post(
        ticket.upload.url, data=ticket.upload.fields, files={"file": ("scan.mp4", data, "video/mp4")}, timeout=30
    )
    assert posted.status_code == 204, posted.text
    stack.inspect.wait_for_job(ticket.job_id, timeout=90)

    status = api.get_scan(ticket.job_id)
    assert status.state == client.JobState.DONE and status.error is None
    assert status.progress.done == status.progress.total == 6
    assert status.result.finding in (client.Finding.HEMORRHAGE_DETECTED, client.Finding.NORMAL)
    assert status.results.overlay and status.results.report and len(status.slices) == 6
    listed = api.list_scans(limit=5)
    assert [scan.job_id for scan in listed.scans] == [ticket.job_id] and listed.next is None
    api.delete_scan(ticket.job_id)
    assert api.list_scans().scans == []


def test_the_python_client_reads_refusals_as_problems(client: ModuleType, stack: LocalStack) -> None:
    api = _api(client, stack, "generated-client-other")
    with pytest.raises(client.ApiException) as missing:
        api.get_scan("0" * 32)
    assert missing.value.status == 404
    problem = client.Problem.from_json(missing.value.body)
    assert problem.code == client.ProblemCode.SCAN_NOT_FOUND and problem.status == 404
    with pytest.raises(client.ApiException) as bad_cursor:
        api.list_scans(next="not-a-cursor")
    assert bad_cursor.value.status == 400
    assert client.Problem.from_json(bad_cursor.value.body).code == client.ProblemCode.INVALID_CURSOR
    # The schema's maximum reaches the generated model: the app refuses an oversized upload itself.
    with pytest.raises(ValueError, match="536870912"):
        client.StartScanRequest(content_type=client.UploadContentType.VIDEO_SLASH_MP4, size_bytes=2**40)


def test_the_document_needs_no_token_and_every_other_route_does(stack: LocalStack) -> None:
    assert requests.get(f"{stack.api_url}/v1/openapi.json", timeout=30).status_code == 200
    for method, path in (("GET", "/v1/scans"), ("POST", "/v1/scans"), ("GET", f"/v1/scans/{'0' * 32}")):
        response = requests.request(method, f"{stack.api_url}{path}", timeout=30)
        assert response.status_code == 401, (method, path, response.text)
