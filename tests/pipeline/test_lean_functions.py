"""The API and authorizer functions run on their slim image: none of the core's heavy libraries.

They answer the app synchronously, so their cold start is the user's wait: their image
(``infrastructure/lambda/Dockerfile.api``, ``requirements/lambda-api.txt``) carries boto3,
Powertools and firebase-admin only. Three things must hold, and each is checked here for real:

- their import chain loads none of numpy, OpenCV, PyAV, ONNX Runtime, pydicom, nibabel, GDCM,
  highdicom, scipy or Pillow (a fresh interpreter per handler, ``sys.modules`` afterwards);
- the slim requirements file pins the full image's versions and pulls in none of those, not even
  transitively (resolved from the installed distributions' metadata);
- the handlers import *and run* with nothing but what that file installs: an interpreter that sees
  only the standard library, the repository and those distributions (mirrored file by file from
  ``.venv``) creates and reads a job against moto's S3 and DynamoDB, and verifies a real RS256
  Firebase-style token against certificates served over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from infrastructure.lambda_images import distribution_files, function_images, installed_closure, top_level_requirements
from tests.conftest import REPO

SLIM_REQUIREMENTS = REPO / "requirements" / "lambda-api.txt"
FULL_REQUIREMENTS = REPO / "requirements" / "lambda.txt"
SLIM_DOCKERFILE = "infrastructure/lambda/Dockerfile.api"
LEAN_HANDLERS = ("functions.api", "functions.authorizer")
CHAIN = {
    "functions.api": ("functions", "ichseg.pipeline", "ichseg.pipeline.api", "ichseg.pipeline.context"),
    "functions.authorizer": ("functions", "ichseg.pipeline.auth", "ichseg.pipeline.config", "ichseg.pipeline.mirror"),
}
"""Modules each handler's import must have loaded (so an empty import cannot pass the checks)."""
ABSENT = {
    "numpy": "numpy",
    "cv2": "opencv-python-headless",
    "av": "av",
    "onnxruntime": "onnxruntime",
    "pydicom": "pydicom",
    "nibabel": "nibabel",
    "gdcm": "python-gdcm",
    "highdicom": "highdicom",
    "scipy": "scipy",
    "PIL": "pillow",
}
"""Module -> the distribution that provides it: none may be loaded by, or installed for, the two."""
PROJECT = "ichseg-lean-test"
SLIM_PYTHON = os.environ.get("ICHSEG_SLIM_PYTHON", "")
"""Optional: the python of a virtual environment made with ``pip install -r requirements/lambda-api.txt``
(what the image's pip resolves). The slim run then uses it instead of the mirror of ``.venv``."""


def _loaded_after_import(module: str) -> tuple[list[str], list[str]]:
    """(absent modules the import loaded, chain modules it loaded) in a fresh interpreter."""
    script = (
        f"import json, sys, {module}\n"
        f"print(json.dumps([[m for m in {sorted(ABSENT)!r} if m in sys.modules],"
        f" [m for m in {list(CHAIN[module])!r} if m in sys.modules]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    absent, chain = json.loads(out.stdout.splitlines()[-1])
    return absent, chain


@pytest.mark.parametrize("module", LEAN_HANDLERS)
def test_handler_import_loads_none_of_the_core_libraries(module: str) -> None:
    absent, chain = _loaded_after_import(module)
    assert absent == [], f"{module} imports {absent}: the slim image does not install them"
    assert chain == list(CHAIN[module])


def test_the_full_image_handlers_do_load_them() -> None:
    """The same check on the assemble function finds OpenCV and PyAV: the check can see them."""
    script = (
        f"import json, sys, functions.assemble\nprint(json.dumps([m for m in {sorted(ABSENT)!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    assert {"numpy", "cv2", "av"} <= set(json.loads(out.stdout.splitlines()[-1]))


def test_config_copies_of_numpy_module_constants_match_the_originals() -> None:
    """ichseg.pipeline.config repeats three constants instead of importing numpy-using modules."""
    from ichseg import endpoint_protocol, windowing
    from ichseg.pipeline import config

    assert config._SAGEMAKER_MAX_PAYLOAD_BYTES == endpoint_protocol.SAGEMAKER_MAX_PAYLOAD_BYTES
    assert config._CONTEXT_SLICES == endpoint_protocol.CONTEXT_SLICES
    assert config._DEFAULT_WINDOW_NAME == windowing.DEFAULT_WINDOW.name == config.PipelineConfig().window


def test_api_and_authorizer_are_the_slim_image_and_the_others_the_full_one() -> None:
    images = function_images(REPO)
    assert set(images) == {
        f"functions.{n}" for n in ("api", "authorizer", "split", "segment", "assemble", "mirror", "watchdog")
    }
    for module, image in images.items():
        expected = "requirements/lambda-api.txt" if module in LEAN_HANDLERS else "requirements/lambda.txt"
        assert image.requirements == expected, module
        assert (image.dockerfile == SLIM_DOCKERFILE) == (module in LEAN_HANDLERS), module
    text = (REPO / SLIM_DOCKERFILE).read_text()
    assert "COPY ichseg/ /var/task/ichseg/" in text and "COPY functions/ /var/task/functions/" in text
    assert 'ENTRYPOINT ["/usr/local/bin/python", "-m", "awslambdaric"]' in text
    full = (REPO / "infrastructure/lambda/Dockerfile").read_text()
    # One base image and one runtime interface client for both: shared layers, one behaviour.
    base = re.search(r"^FROM \S+$", text, re.M)
    assert base and base.group(0) in full
    assert "awslambdaric==4.2.2 simplejson==4.3.0 snapshot-restore-py==1.0.0" in text
    assert "awslambdaric==4.2.2 simplejson==4.3.0 snapshot-restore-py==1.0.0" in full
    ignored = (REPO / f"{SLIM_DOCKERFILE}.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignored if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*" and {"!requirements/", "!ichseg/", "!functions/"} <= set(patterns)


def test_slim_requirements_pin_the_full_images_versions_and_lack_the_core_libraries() -> None:
    slim = top_level_requirements(SLIM_REQUIREMENTS)
    full = {canonicalize_name(r.name): r for r in top_level_requirements(FULL_REQUIREMENTS)}
    assert "-r " not in SLIM_REQUIREMENTS.read_text()  # not the core's requirements
    for req in slim:
        assert str(req.specifier).startswith("=="), f"{req} is not pinned"
        assert str(full[canonicalize_name(req.name)]) == str(req), f"{req}: the full image pins {full[req.name]}"
    closure = installed_closure(slim)
    assert not {canonicalize_name(d) for d in ABSENT.values()} & set(closure), "a core library comes in transitively"
    # The full image does have them: the comparison is not vacuous.
    assert {"numpy", "opencv-python-headless", "av", "highdicom"} <= set(installed_closure(list(full.values())))


# ------------------------------------------------------------------ run on the slim distributions alone
_CHILD = r"""
import json, sys
sys.path[:0] = [REPO, SITE]

class Context:  # the attributes of Lambda's context object that Powertools reads
    function_name, function_version, memory_limit_in_mb = "lean-test", "$LATEST", 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:lean-test"
    aws_request_id, log_group_name, log_stream_name = "0", "/aws/lambda/lean-test", "test"
    def get_remaining_time_in_millis(self):
        return 10_000

import functions.api, functions.authorizer
import firebase_admin._token_gen
firebase_admin._token_gen.ID_TOKEN_CERT_URI = CERT_URL  # Google's certificate URL, served locally
events = json.loads(EVENTS)
out = {"authorizer": {}, "api": {}}
for name, event in events["authorizer"].items():
    out["authorizer"][name] = functions.authorizer.handler(event, Context())
created = functions.api.handler(events["create"], Context())
out["api"]["create"] = created
job_id = json.loads(created["body"])["job_id"]
status = events["status"]
status["rawPath"] = status["requestContext"]["http"]["path"] = f"/v1/scans/{job_id}"
status["pathParameters"] = {"job_id": job_id}
out["api"]["status"] = functions.api.handler(status, Context())
out["loaded"] = sorted(m for m in ABSENT if m in sys.modules)
out["outside"] = sorted(
    name for name, m in list(sys.modules.items())
    if getattr(m, "__file__", None) and not m.__file__.startswith((REPO, SITE, sys.base_prefix))
)
print("RESULT " + json.dumps(out))
"""


def _mirror_site(requirements: Path, site: Path) -> int:
    """A site-packages holding only what ``requirements`` installs: symlinks to .venv's files."""
    count = 0
    for dist in installed_closure(top_level_requirements(requirements)).values():
        for relative, path in distribution_files(dist):
            link = site / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
            count += 1
    return count


@pytest.fixture(scope="module")
def certificate_server() -> Iterator[tuple[str, Any]]:
    """A local token issuer and an HTTP server that publishes its certificates as Google does."""
    from infrastructure.token_issuer import LocalTokenIssuer

    issuer = LocalTokenIssuer(PROJECT)
    document = json.dumps(issuer.certificates).encode()

    class Certificates(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "public, max-age=3600")
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certificates)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/certificates", issuer
    server.shutdown()
    server.server_close()


def test_handlers_run_with_only_the_slim_requirements_installed(
    tmp_path: Path, moto_url: str, certificate_server: tuple[str, Any]
) -> None:
    import boto3

    from infrastructure.lambda_runtime import authorizer_event, http_api_event
    from tests.stack_fixtures import create_jobs_table

    cert_url, issuer = certificate_server
    if SLIM_PYTHON:
        # -I: no user site, no PYTHON* variables, no current directory on the path.
        command = [SLIM_PYTHON, "-I"]
        purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = Path(
            subprocess.run([*command, "-c", purelib], capture_output=True, text=True, check=True).stdout.strip()
        )
    else:
        # -S as well: not even .venv's site-packages, only the mirror of what the slim file installs.
        command = [sys.executable, "-I", "-S"]
        site = tmp_path / "site-packages"
        assert _mirror_site(SLIM_REQUIREMENTS, site) > 1000
    assert not any((site / name).exists() for name in ABSENT)

    credentials = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    s3, dynamodb = (boto3.client(s, endpoint_url=moto_url, **credentials) for s in ("s3", "dynamodb"))
    s3.create_bucket(Bucket="lean")
    create_jobs_table(dynamodb, "lean-jobs")

    def request(method: str, path: str, body: bytes, route: str, uid: str | None) -> dict[str, Any]:
        headers = {"content-type": "application/json", "host": "api.local"}
        return http_api_event(method, path, "", headers, body, route, None, "127.0.0.1", uid and {"uid": uid})

    def authorize(header: str | None) -> dict[str, Any]:
        event = request("POST", "/v1/scans", b"", "POST /v1/scans", None)
        if header is not None:
            event["headers"]["authorization"] = header
        return authorizer_event(event, "us-east-1", ["$request.header.Authorization"])

    events = {
        "authorizer": {
            "valid": authorize(f"Bearer {issuer.mint('alice')}"),
            "forged": authorize(f"Bearer {issuer.mint('alice', aud='another-project')}"),
            "garbage": authorize("Bearer not-a-jwt"),
            "missing": authorize(None),
        },
        "create": request("POST", "/v1/scans", b'{"content_type": "video/mp4"}', "POST /v1/scans", "alice"),
        "status": request("GET", "/v1/scans/x", b"", "GET /v1/scans/{job_id}", "alice"),
    }
    script = (
        f"REPO, SITE, CERT_URL, ABSENT = {str(REPO)!r}, {str(site)!r}, {cert_url!r}, {sorted(ABSENT)!r}\n"
        f"EVENTS = {json.dumps(events)!r}\n{_CHILD}"
    )
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),  # as in Lambda: caches go to a writable place
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "ICHSEG_BUCKET": "lean",
        "ICHSEG_TABLE": "lean-jobs",
        "FIREBASE_PROJECT_ID": PROJECT,
        "POWERTOOLS_SERVICE_NAME": "ichseg",
        "POWERTOOLS_METRICS_NAMESPACE": "ichseg",
        "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here (aws_xray_sdk is still imported)
    }
    result = subprocess.run(
        [*command, "-c", script],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.split("RESULT ", 1)[1])

    assert out["loaded"] == [] and out["outside"] == []
    verdicts = {name: response["isAuthorized"] for name, response in out["authorizer"].items()}
    assert verdicts == {"valid": True, "forged": False, "garbage": False, "missing": False}
    assert out["authorizer"]["valid"]["context"] == {"uid": "alice"}

    created, status = out["api"]["create"], out["api"]["status"]
    assert created["statusCode"] == 201, created
    ticket = json.loads(created["body"])
    assert ticket["upload"]["url"].startswith(moto_url)  # a presigned POST from boto3, for moto's bucket
    assert status["statusCode"] == 200, status
    assert json.loads(status["body"])["job_id"] == ticket["job_id"]
    # The job really is in DynamoDB, owned by the token's user.
    item = dynamodb.get_item(TableName="lean-jobs", Key={"job_id": {"S": ticket["job_id"]}})["Item"]
    assert item["owner"] == {"S": "alice"}


def test_the_full_image_carries_the_scan_head_where_the_assemble_stage_looks_for_it() -> None:
    from ichseg.paths import REPO_ROOT
    from ichseg.scan_context import SCAN_HEAD

    # /var/task is the image's repository root (ichseg/ and functions/ are copied under it).
    relative = SCAN_HEAD.relative_to(REPO_ROOT).as_posix()
    full = (REPO / "infrastructure/lambda/Dockerfile").read_text()
    assert f"COPY {relative} /var/task/{relative}" in full and SCAN_HEAD.is_file()
    assert "onnxruntime==" in (REPO / FULL_REQUIREMENTS).read_text()  # the head runs on ONNX Runtime
