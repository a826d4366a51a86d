"""The inference server: SageMaker container contract, wire protocol, bad requests, real clients.

Runs against a real ONNX Runtime session over a tiny ONNX model with the shipped model's interface
(tests/onnx_fixtures.py), through Flask's test client, a real HTTP server called by boto3's
``sagemaker-runtime`` client, and ``ichseg endpoint`` as a subprocess under gunicorn.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from werkzeug.serving import make_server

from ichseg.endpoint_protocol import (
    CONTENT_TYPE,
    CUSTOM_ATTRIBUTES_HEADER,
    MAX_SLICES_PER_REQUEST,
    SAGEMAKER_MAX_PAYLOAD_BYTES,
    ProtocolError,
    ResponseAttributes,
    decode_slices,
    encode_slices,
)
from ichseg.inference import OnnxSegmenter
from serving.request_checks import MAX_SIDE, MIN_SIDE
from serving.server import create_app
from tests.onnx_fixtures import build_tiny_model, head_phantom

REPO = Path(__file__).resolve().parents[2]
PIXEL_THRESHOLD = 0.37
SLICE_THRESHOLD = 0.61


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("model") / "ichseg-unet.onnx",
        pixel_threshold=PIXEL_THRESHOLD,
        slice_threshold=SLICE_THRESHOLD,
    )


@pytest.fixture(scope="module")
def client(tiny_model: Path) -> Any:
    return create_app(tiny_model, background=False).test_client()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def post(client: Any, body: bytes, content_type: str | None = CONTENT_TYPE, path: str = "/invocations", **kw: Any):
    headers = kw.pop("headers", {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post(path, data=body, headers=headers, **kw)


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ /ping


def test_ping_is_200_once_the_model_is_loaded_and_warmed_up(client: Any) -> None:
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.json == {
        "status": "ready",
        "model": "ichseg-tiny",
        "version": "0.0.1-test",
        "provider": "CPUExecutionProvider",
    }


def test_ping_is_503_while_the_model_loads_then_200(tiny_model: Path) -> None:
    release = threading.Event()

    def slow_segmenter() -> OnnxSegmenter:
        release.wait(300)  # until the test lets it load, however long the 503 checks take
        return OnnxSegmenter(tiny_model)

    loading = create_app(tiny_model, segmenter_factory=slow_segmenter).test_client()
    response = loading.get("/ping")
    assert response.status_code == 503
    assert response.json == {"status": "loading"}
    refused = post(loading, encode_slices(head_phantom()))
    assert refused.status_code == 503 and "not ready" in refused.json["error"]

    release.set()
    wait_until(lambda: loading.get("/ping").status_code == 200)
    assert post(loading, encode_slices(head_phantom())).status_code == 200


class _BrokenWarmUp:
    """A segmenter whose first inference fails (e.g. a CUDA kernel that cannot run)."""

    def __init__(self, real: OnnxSegmenter) -> None:
        self.metadata = real.metadata

    def predict(self, slices: np.ndarray) -> Any:
        raise RuntimeError("CUDA failure during warm-up")


@pytest.mark.parametrize("failure", ["missing-file", "no-metadata", "warm-up", "gpu-required-but-cpu"])
def test_ping_stays_503_with_the_reason_when_loading_or_warm_up_fails(
    failure: str, tiny_model: Path, tmp_path: Path
) -> None:
    model, factory, require_gpu, reason = tiny_model, None, False, ""
    if failure == "missing-file":
        model, reason = tmp_path / "absent.onnx", "absent.onnx"
    elif failure == "no-metadata":
        model, reason = build_tiny_model(tmp_path / "bare.onnx", with_metadata=False), "metadata"
    elif failure == "warm-up":
        factory, reason = (lambda: _BrokenWarmUp(OnnxSegmenter(tiny_model))), "warm-up"
    else:  # this machine has no GPU: what a GPU instance with a too-old driver would see
        require_gpu, reason = True, "fell back to the CPU"
    failed = create_app(model, background=False, segmenter_factory=factory, require_gpu=require_gpu).test_client()

    response = failed.get("/ping")
    assert response.status_code == 503
    assert response.json["status"] == "failed" and reason in response.json["error"]
    assert post(failed, encode_slices(head_phantom())).status_code == 503


# ----------------------------------------------------------------------------------- /invocations


def test_invocation_returns_uint8_probabilities_x255_at_the_input_resolution(client: Any, tiny_model: Path) -> None:
    slices = head_phantom(count=3, height=96, width=80)
    response = post(client, encode_slices(slices), headers={"Accept": CONTENT_TYPE})

    assert response.status_code == 200
    assert response.mimetype == CONTENT_TYPE
    probabilities = decode_slices(response.data)
    assert probabilities.dtype == np.uint8 and probabilities.shape == (3, 96, 80)
    # exactly the in-process prediction, scaled and rounded: the server adds nothing of its own
    expected = OnnxSegmenter(tiny_model).predict(slices).probabilities
    np.testing.assert_array_equal(probabilities, np.rint(expected * 255).astype(np.uint8))
    # and it is the model's answer at the original geometry: bright head ~high, air ~0
    assert probabilities[:, 48, 40].min() > 150
    assert probabilities[:, :3, :3].max() < 5


def test_declared_context_slices_are_read_as_neighbours_and_not_answered(tmp_path: Path) -> None:
    """A 2.5-D model's batch with one context slice each side: the answers for the inner slices are
    exactly those of the whole request, and the context slices cost no inference."""
    model = build_tiny_model(tmp_path / "m.onnx", channels=3, intracranial_only=True, subtypes=True)
    app = create_app(model, background=False).test_client()
    slices = head_phantom(count=6, seed=4)
    whole = post(app, encode_slices(slices))
    inner = post(app, encode_slices(slices), headers={CUSTOM_ATTRIBUTES_HEADER: "context=1,1"})
    assert whole.status_code == inner.status_code == 200
    np.testing.assert_array_equal(decode_slices(inner.data), decode_slices(whole.data)[1:5])
    whole_attributes = ResponseAttributes.decode(whole.headers[CUSTOM_ATTRIBUTES_HEADER])
    assert ResponseAttributes.decode(inner.headers[CUSTOM_ATTRIBUTES_HEADER]) == whole_attributes.trimmed(1, 1)
    only_after = post(app, encode_slices(slices), headers={CUSTOM_ATTRIBUTES_HEADER: "context=0,1"})
    np.testing.assert_array_equal(decode_slices(only_after.data), decode_slices(whole.data)[:5])
    for bad in ("context=1", "context=2,2", "context=x,y"):
        refused = post(app, encode_slices(slices[:2]), headers={CUSTOM_ATTRIBUTES_HEADER: bad})
        assert refused.status_code == 400 and "context" in refused.json["error"], bad
    nothing_left = post(app, encode_slices(slices[:2]), headers={CUSTOM_ATTRIBUTES_HEADER: "context=1,1"})
    assert nothing_left.status_code == 400


def test_custom_attributes_carry_the_model_identity_thresholds_and_slice_probabilities(
    client: Any, tiny_model: Path
) -> None:
    slices = head_phantom(count=2)
    response = post(client, encode_slices(slices))

    attributes = ResponseAttributes.decode(response.headers[CUSTOM_ATTRIBUTES_HEADER])
    assert (attributes.model, attributes.version) == ("ichseg-tiny", "0.0.1-test")
    assert (attributes.pixel_threshold, attributes.slice_threshold) == (PIXEL_THRESHOLD, SLICE_THRESHOLD)
    expected = OnnxSegmenter(tiny_model).predict(slices).slice_probabilities
    np.testing.assert_allclose(attributes.slice_probabilities, expected, atol=1e-4)


def test_the_boto3_path_serves_the_same_handler_and_ignores_sigv4_headers(client: Any) -> None:
    body = encode_slices(head_phantom())
    plain = post(client, body)
    signed = post(
        client,
        body,
        path="/endpoints/ichseg/invocations",
        headers={
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20261123/us-east-1/sagemaker/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=00",
            "X-Amz-Date": "20261123T000000Z",
            "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
            CUSTOM_ATTRIBUTES_HEADER: "job=abc",
        },
    )
    assert signed.status_code == 200
    assert signed.data == plain.data
    assert signed.headers[CUSTOM_ATTRIBUTES_HEADER] == plain.headers[CUSTOM_ATTRIBUTES_HEADER]


@pytest.mark.parametrize(
    "shape", [(1, MIN_SIDE, MIN_SIDE), (2, 512, 512), (1, 20, 600), (MAX_SLICES_PER_REQUEST, 16, 24)], ids=str
)
def test_any_slice_size_within_the_limits_comes_back_at_its_own_size(client: Any, shape: tuple[int, ...]) -> None:
    slices = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    response = post(client, encode_slices(slices))
    assert response.status_code == 200
    assert decode_slices(response.data).shape == shape
    assert len(ResponseAttributes.decode(response.headers[CUSTOM_ATTRIBUTES_HEADER]).slice_probabilities) == shape[0]


def test_a_fortran_ordered_array_is_read_correctly(client: Any) -> None:
    slices = head_phantom(count=2)
    c_order = post(client, npy(slices))
    f_order = post(client, npy(np.asfortranarray(slices)))
    assert f_order.status_code == 200 and f_order.data == c_order.data


# ---------------------------------------------------------------------------------- bad requests


def _lying_header(shape: tuple[int, ...], data: bytes) -> bytes:
    """A .npy header that claims ``shape`` followed by ``data`` (what a hostile client can send)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


BAD_BODIES = {
    "not-npy": (b"hello, this is not numpy", 400, "not a .npy"),
    "empty": (b"", 400, "empty body"),
    "truncated-npy": (npy(np.zeros((2, 64, 64), np.uint8))[:-100], 400, "bytes of pixels"),
    "trailing-bytes": (npy(np.zeros((1, 64, 64), np.uint8)) + b"extra", 400, "bytes of pixels"),
    "huge-claimed-shape": (_lying_header((MAX_SLICES_PER_REQUEST, 4096, 4096), b"\0" * 64), 400, "bytes of pixels"),
    "float32": (npy(np.zeros((1, 64, 64), np.float32)), 400, "uint8"),
    "int16-hu": (npy(np.zeros((1, 64, 64), np.int16)), 400, "uint8"),
    "bool": (npy(np.zeros((1, 64, 64), bool)), 400, "uint8"),
    "pickled-objects": (npy(np.array([{"a": 1}], dtype=object)), 400, "uint8"),
    "2d": (npy(np.zeros((64, 64), np.uint8)), 400, "(N, H, W)"),
    "4d": (npy(np.zeros((1, 64, 64, 1), np.uint8)), 400, "(N, H, W)"),
    "no-slices": (npy(np.zeros((0, 64, 64), np.uint8)), 400, "N = 0"),
    "too-small": (npy(np.zeros((1, MIN_SIDE - 1, 64), np.uint8)), 400, "outside"),
    "too-wide": (npy(np.zeros((1, MIN_SIDE, MAX_SIDE + 1), np.uint8)), 400, "outside"),
    "too-many-slices": (npy(np.zeros((MAX_SLICES_PER_REQUEST + 1, 16, 16), np.uint8)), 413, "at most"),
    "over-6-mb": (npy(np.zeros((MAX_SLICES_PER_REQUEST, 520, 520), np.uint8)), 413, "exceeds"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=str)
def test_bad_bodies_get_a_4xx_json_message_never_a_500(client: Any, case: str) -> None:
    body, status, words = BAD_BODIES[case]
    response = post(client, body)
    assert response.status_code == status
    assert response.mimetype == "application/json"
    assert words in response.json["error"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json", "application/octet-stream"])
def test_a_wrong_content_type_is_415(client: Any, content_type: str | None) -> None:
    response = post(client, encode_slices(head_phantom()), content_type=content_type)
    assert response.status_code == 415
    assert CONTENT_TYPE in response.json["error"]


def test_an_accept_header_that_excludes_npy_is_406(client: Any) -> None:
    response = post(client, encode_slices(head_phantom()), headers={"Accept": "application/json"})
    assert response.status_code == 406 and "error" in response.json
    assert post(client, encode_slices(head_phantom()), headers={"Accept": "*/*"}).status_code == 200


def test_an_oversized_body_is_refused_from_its_content_length_before_it_is_read(client: Any) -> None:
    # The declared length alone decides: the stream here is empty and never read.
    response = client.post(
        "/invocations",
        input_stream=io.BytesIO(b""),
        content_type=CONTENT_TYPE,
        environ_overrides={"CONTENT_LENGTH": str(SAGEMAKER_MAX_PAYLOAD_BYTES + 1)},
    )
    assert response.status_code == 413 and "exceeds" in response.json["error"]


def test_an_oversized_chunked_body_without_content_length_is_refused_while_read(client: Any) -> None:
    response = client.post(
        "/invocations",
        input_stream=io.BytesIO(b"\0" * (SAGEMAKER_MAX_PAYLOAD_BYTES + 1)),
        headers={"Content-Type": CONTENT_TYPE, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413 and "exceeds" in response.json["error"]


@pytest.mark.parametrize("path", ["/invocations", "/endpoints/ichseg/invocations"])
def test_get_on_invocations_is_405_json(client: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 405 and "error" in response.json


def test_unknown_paths_are_404_json(client: Any) -> None:
    response = client.get("/nothing-here")
    assert response.status_code == 404 and "error" in response.json


# ------------------------------------------------------------------- real clients over real HTTP


@pytest.fixture(scope="module")
def live_url(tiny_model: Path) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, create_app(tiny_model, background=False), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture(scope="module")
def runtime(live_url: str) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=live_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )


def test_boto3_sagemaker_runtime_invoke_endpoint_works_unchanged(runtime: Any) -> None:
    slices = head_phantom(count=2, height=100, width=90)
    response = runtime.invoke_endpoint(
        EndpointName="ichseg",
        ContentType=CONTENT_TYPE,
        Accept=CONTENT_TYPE,
        CustomAttributes="job=test-123",
        Body=encode_slices(slices),
    )
    assert response["ContentType"] == CONTENT_TYPE
    probabilities = decode_slices(response["Body"].read())
    assert probabilities.shape == (2, 100, 90) and probabilities.dtype == np.uint8
    attributes = ResponseAttributes.decode(response["CustomAttributes"])
    assert attributes.model == "ichseg-tiny" and len(attributes.slice_probabilities) == 2


def test_boto3_sees_a_client_error_with_the_servers_message(runtime: Any) -> None:
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(EndpointName="ichseg", ContentType=CONTENT_TYPE, Body=npy(np.zeros((1, 64), np.uint8)))
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Error"]["Code"] == "ValidationError"
    assert "(N, H, W)" in error["Error"]["Message"]


def test_chunked_upload_over_real_http_is_served(live_url: str) -> None:
    body = encode_slices(head_phantom())
    host, port = live_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request(
        "POST",
        "/invocations",
        body=iter([body[:1000], body[1000:]]),
        headers={"Content-Type": CONTENT_TYPE},
        encode_chunked=True,
    )
    response = connection.getresponse()
    assert response.status == 200
    assert decode_slices(response.read()).shape == (2, 96, 80)
    connection.close()


# ------------------------------------------------------------------------ ichseg endpoint process


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise AssertionError("the endpoint printed nothing")
    return process.stdout.readline()


def start_endpoint(command: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start an endpoint process and return it with the URL it announces on stdout."""
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or os.environ.copy()
    )
    try:
        line = _read_line(process, 30)
        assert "listening on http://" in line, line
        return process, line.split("listening on ")[1].split()[0]
    except BaseException:
        process.kill()
        process.wait(10)
        raise


def ping_status(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def stop_endpoint(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


def test_ichseg_endpoint_serves_under_gunicorn_and_stops_cleanly_on_sigterm(tiny_model: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "ichseg.cli",
        "endpoint",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model",
        str(tiny_model),
    ]
    process, url = start_endpoint(command)
    try:
        wait_until(lambda: ping_status(url) == 200)
        request = urllib.request.Request(
            f"{url}/invocations", data=encode_slices(head_phantom()), headers={"Content-Type": CONTENT_TYPE}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert decode_slices(response.read()).shape == (2, 96, 80)
            assert ResponseAttributes.decode(response.headers[CUSTOM_ATTRIBUTES_HEADER]).model == "ichseg-tiny"
    finally:
        returncode, stderr = stop_endpoint(process)
    assert returncode == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # structured: every line is JSON
    assert any(r["message"] == "model ready" and r["provider"] == "CPUExecutionProvider" for r in records)
    assert any(r["message"] == "invocation" and r["slices"] == 2 for r in records)


def test_ichseg_endpoint_refuses_a_missing_model_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ichseg.cli", "endpoint", "--port", "0", "--model", str(tmp_path / "none.onnx")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "model not found" in result.stderr


def test_the_slice_cap_is_what_one_answer_can_describe_for_the_shipped_model() -> None:
    """One cap for the pipeline and the server: the shipped model's answer for that many slices fits
    CustomAttributes, with its name, version, thresholds and five subtypes at their widest."""
    from ichseg.model_file import read_metadata
    from ichseg.paths import SHIPPED_MODEL

    meta = read_metadata(SHIPPED_MODEL)
    widest = 0.000123456

    def answer(count: int) -> ResponseAttributes:
        return ResponseAttributes(
            meta.name, meta.version, widest, widest, (0.5,) * count, meta.subtypes, ((0.5,) * 5,) * count, widest
        )

    assert MAX_SLICES_PER_REQUEST >= 20 and len(answer(MAX_SLICES_PER_REQUEST).encode()) <= 1024
    big = answer(4 * MAX_SLICES_PER_REQUEST)
    with pytest.raises(ProtocolError, match="CustomAttributes"):
        big.encode()
