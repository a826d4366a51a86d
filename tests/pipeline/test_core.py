"""Unit tests of the pipeline's pure parts: key layout, batching, messages, endpoint retries, merging."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from botocore.stub import Stubber

from ichseg.endpoint_protocol import CONTEXT_SLICES, ProtocolError, ResponseAttributes, encode_slices, trim_context
from ichseg.model_metadata import SUBTYPES
from ichseg.pipeline import keys
from ichseg.pipeline.assemble import ModelChanged, combine
from ichseg.pipeline.config import ConfigError, PipelineConfig
from ichseg.pipeline.endpoint import EndpointClient, EndpointError, HttpTransport, RetryPolicy, SageMakerTransport
from ichseg.pipeline.jobs import JobSource
from ichseg.pipeline.keys import UnexpectedKey, UploadRef
from ichseg.pipeline.messages import AssembleMessage, MalformedMessage, SegmentMessage, plan_batches
from ichseg.pipeline.mirror import MirrorFile, mirror_files

JOB = "0123456789abcdef0123456789abcdef"


def test_app_upload_keys_name_their_owner_and_job() -> None:
    upload = UploadRef.from_object("b", f"uploads/alice-1_X/{JOB}/scan", "etag", 10)
    assert (upload.job_id, upload.owner, upload.source) == (JOB, "alice-1_X", JobSource.APP)
    assert keys.upload_key("alice-1_X", JOB) == f"uploads/alice-1_X/{JOB}/scan"


@pytest.mark.parametrize(
    "key",
    [
        f"uploads/alice/{JOB}/other",
        f"uploads/alice/{JOB}",
        "uploads/alice/not-a-job-id/scan",
        f"uploads/al ice/{JOB}/scan",
        f"uploads/../{JOB}/scan",
        f"uploads/a/b/{JOB}/scan",
        "work/x/frames/b0000.npy",
        "results/x/overlay.mp4",
        "ingest/",
        "ingest/folder/",
    ],
)
def test_keys_outside_the_layout_are_refused(key: str) -> None:
    with pytest.raises(UnexpectedKey):
        UploadRef.from_object("b", key, "etag", 1)


def test_ingest_job_ids_are_deterministic_per_object_content() -> None:
    first = UploadRef.from_object("b", "ingest/router/series 1.zip", "abc", 1)
    assert first.source == JobSource.INGEST and first.owner is None
    assert first.job_id == UploadRef.from_object("b", "ingest/router/series 1.zip", '"abc"', 1).job_id
    assert first.job_id != UploadRef.from_object("b", "ingest/router/series 1.zip", "abd", 1).job_id
    assert first.job_id != UploadRef.from_object("b", "ingest/router/series 2.zip", "abc", 1).job_id
    assert first.job_id.startswith("ingest-") and len(first.job_id) == 31


def test_uids_that_are_not_path_safe_cannot_get_an_upload_key() -> None:
    for uid in ("", "a/b", "..", "x" * 129, "ümlaut"):
        with pytest.raises(ValueError):
            keys.upload_key(uid, JOB)


@pytest.mark.parametrize(
    ("height", "width", "configured", "expected"),
    [
        (512, 512, 16, 16),  # 256 KiB a slice: the configured batch and its two context slices fit
        (650, 650, 16, 12),  # the sample video's frames: 413 KiB, 14 fit in 6 MB, two are context
        (1080, 1920, 16, 1),
        (64, 64, 500, 22),  # never more than the server and CustomAttributes allow
    ],
)
def test_batches_stay_inside_sagemakers_request_limits(height: int, width: int, configured: int, expected: int) -> None:
    config = PipelineConfig(batch_slices=configured)
    assert config.slices_per_request(height, width) == expected
    request = expected + 2 * CONTEXT_SLICES
    assert len(encode_slices(np.zeros((request, height, width), np.uint8))) <= 6 * 1024 * 1024
    # The answer's CustomAttributes (slice and five subtype probabilities each) fit SageMaker's cap.
    attributes = ResponseAttributes(
        "ichseg-unet", "10.20.30", 0.1234, 0.35, (0.9999,) * request, SUBTYPES, ((0.99,) * 5,) * request
    )
    assert len(attributes.encode()) <= 1024


def test_batches_cover_every_slice_once_in_order() -> None:
    batches = plan_batches(10, 4)
    assert [(b.batch_id, b.start, b.count) for b in batches] == [("b0000", 0, 4), ("b0001", 4, 4), ("b0002", 8, 2)]
    assert plan_batches(0, 4) == ()


def test_batches_carry_their_neighbours_as_context_where_the_scan_has_them() -> None:
    batches = plan_batches(10, 4, context=1)
    assert [(b.context_before, b.context_after) for b in batches] == [(0, 1), (1, 1), (1, 0)]
    assert [(b.stored.start, b.stored.stop) for b in batches] == [(0, 5), (3, 9), (7, 10)]
    assert [(b.context_before, b.context_after) for b in plan_batches(3, 4, context=1)] == [(0, 0)]
    message = SegmentMessage.for_batch(JOB, batches[1])
    assert SegmentMessage.from_json(message.to_json()) == message
    # A message written before context existed still reads (no context).
    legacy = json.dumps({"job_id": JOB, "batch_id": "b0000", "start": 0, "count": 4, "frames_key": "k"})
    assert SegmentMessage.from_json(legacy).context_before == 0


def test_context_answers_are_trimmed_from_maps_and_attributes() -> None:
    maps = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2)
    assert trim_context(maps, 1, 1).tolist() == maps[1:4].tolist()
    assert trim_context(maps, 0, 0).shape == (5, 2, 2)
    rows = tuple((i / 10,) * 5 for i in range(5))
    attributes = ResponseAttributes("m", "1", 0.5, 0.5, (0.1, 0.2, 0.3, 0.4, 0.5), SUBTYPES, rows)
    trimmed = ResponseAttributes.decode(attributes.trimmed(1, 1).encode())
    assert trimmed.slice_probabilities == (0.2, 0.3, 0.4)
    assert trimmed.subtype_probabilities == rows[1:4] and trimmed.subtype_names == SUBTYPES
    with pytest.raises(ProtocolError, match="subtype rows"):
        ResponseAttributes.decode(
            "model=m;version=1;slice_threshold=0.5;pixel_threshold=0.5;"
            "slice_probabilities=0.1,0.2;subtype_names=a/b;subtypes=0.1/0.2"
        )


def test_config_reads_the_environment_and_names_what_is_missing() -> None:
    config = PipelineConfig.from_env(
        {
            "ICHSEG_BUCKET": "b",
            "ICHSEG_BATCH_SLICES": "8",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
            "ICHSEG_ENDPOINT_URL": "http://x/",
        }
    )
    assert (config.bucket, config.batch_slices, config.endpoint_url) == ("b", 8, "http://x")
    assert config.aws_endpoints == (("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),)
    with pytest.raises(ConfigError, match="ICHSEG_TABLE, ICHSEG_SEGMENT_QUEUE_URL"):
        config.require("bucket", "table", "segment_queue_url")
    with pytest.raises(ConfigError, match="ICHSEG_BATCH_SLICES"):
        PipelineConfig.from_env({"ICHSEG_BATCH_SLICES": "many"})


def test_messages_carry_keys_never_pixels_and_reject_garbage() -> None:
    batch = plan_batches(40, 16)[1]
    message = SegmentMessage.for_batch(JOB, batch)
    assert SegmentMessage.from_json(message.to_json()) == message
    assert message.frames_key == f"work/{JOB}/frames/b0001.npy" and len(message.to_json()) < 256
    assert AssembleMessage.from_json(AssembleMessage(JOB).to_json()).job_id == JOB
    for body in ("", "[]", "{}", '{"job_id": "x"}', "not json"):
        with pytest.raises(MalformedMessage):
            SegmentMessage.from_json(body)


class ScriptedTransport:
    """Answers from a script: an EndpointError to raise, or a (body, attributes) pair."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def __call__(self, body: bytes) -> tuple[bytes, str]:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome  # type: ignore[return-value]


def _answer(slices: np.ndarray, version: str = "1") -> tuple[bytes, str]:
    attributes = ResponseAttributes("m", version, 0.5, 0.5, tuple(0.25 for _ in slices))
    return encode_slices(np.full(slices.shape, 200, np.uint8)), attributes.encode()


def test_transient_endpoint_errors_are_retried_with_backoff() -> None:
    slices = np.zeros((2, 16, 16), np.uint8)
    transport = ScriptedTransport(
        EndpointError("ThrottlingException (400)", retryable=True),
        EndpointError("HTTP 503", retryable=True, status=503),
        _answer(slices),
    )
    sleeps: list[float] = []
    retries: list[int] = []
    client = EndpointClient(
        transport,
        RetryPolicy(attempts=5, base_seconds=0.5),
        sleep=sleeps.append,
        on_retry=lambda attempt, error: retries.append(attempt),
    )
    result = client.segment(slices)
    assert result.attempts == 3 and transport.calls == 3 and retries == [1, 2]
    assert 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0
    assert result.probabilities_u8.shape == slices.shape and result.attributes.slice_probabilities == (0.25, 0.25)


def test_client_errors_are_not_retried_and_exhausted_retries_say_so() -> None:
    slices = np.zeros((1, 16, 16), np.uint8)
    refused = ScriptedTransport(EndpointError("HTTP 400 bad slices", retryable=False, status=400))
    with pytest.raises(EndpointError, match="after 1 attempt") as info:
        EndpointClient(refused, RetryPolicy(attempts=5), sleep=lambda s: None).segment(slices)
    assert not info.value.retryable and refused.calls == 1
    down = ScriptedTransport(*[EndpointError("ConnectionRefused", retryable=True)] * 3)
    with pytest.raises(EndpointError, match="after 3 attempt"):
        EndpointClient(down, RetryPolicy(attempts=3), sleep=lambda s: None).segment(slices)


def test_answers_that_break_the_contract_are_retried_not_trusted() -> None:
    slices = np.zeros((2, 16, 16), np.uint8)
    wrong_shape = (encode_slices(np.zeros((1, 16, 16), np.uint8)), _answer(slices)[1])
    transport = ScriptedTransport(wrong_shape, (b"not npy", "model=m"), _answer(slices))
    assert EndpointClient(transport, RetryPolicy(attempts=3), sleep=lambda s: None).segment(slices).attempts == 3


def test_sagemaker_errors_are_classified_like_the_runtime_reports_them() -> None:
    import boto3

    client = boto3.client(
        "sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    transport = SageMakerTransport(client, "ichseg")
    slices = np.zeros((1, 16, 16), np.uint8)
    with Stubber(client) as stub:
        stub.add_client_error("invoke_endpoint", "ThrottlingException", http_status_code=400)
        stub.add_client_error("invoke_endpoint", "ValidationError", "bad request", http_status_code=400)
        stub.add_client_error(
            "invoke_endpoint",
            "ModelError",
            http_status_code=424,
            response_meta={},
            modeled_fields={"OriginalStatusCode": 500},
        )
        body, attributes = _answer(slices)
        stub.add_response(
            "invoke_endpoint",
            {"Body": io.BytesIO(body), "ContentType": "application/x-npy", "CustomAttributes": attributes},
        )
        outcomes = []
        for _ in range(3):
            with pytest.raises(EndpointError) as info:
                transport(encode_slices(slices))
            outcomes.append(info.value.retryable)
        assert outcomes == [True, False, True]
        assert transport(encode_slices(slices)) == (body, attributes)


def test_an_unreachable_http_endpoint_is_a_retryable_error() -> None:
    with pytest.raises(EndpointError) as info:
        HttpTransport("http://127.0.0.1:9", timeout_seconds=2)(b"x")
    assert info.value.retryable


def test_batches_merge_into_one_report_model_and_gated_masks() -> None:
    probabilities = np.full((3, 8, 8), 200, np.uint8)
    attributes = [ResponseAttributes("m", "1", 0.5, 0.6, (0.9, 0.1)), ResponseAttributes("m", "1", 0.5, 0.6, (0.7,))]
    model, segmentation = combine(probabilities, attributes)
    assert (model.name, model.version, model.slice_threshold, model.pixel_threshold) == ("m", "1", 0.5, 0.6)
    assert segmentation.slice_probabilities.tolist() == pytest.approx([0.9, 0.1, 0.7])
    assert segmentation.masks.sum(axis=(1, 2)).tolist() == [64, 0, 64]  # slice 1 is below the slice threshold
    attributes[1] = ResponseAttributes("m", "2", 0.5, 0.6, (0.7,))
    with pytest.raises(ModelChanged, match=r"m 1 .* m 2"):
        combine(probabilities, attributes)


class FlakyMirror:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.uploaded: dict[str, bytes] = {}

    def upload(self, path: str, data: bytes, content_type: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("storage unreachable")
        self.uploaded[path] = data


def test_mirroring_retries_then_reports_instead_of_raising() -> None:
    files = [MirrorFile("overlay.mp4", b"v", "video/mp4"), MirrorFile("report.json", b"{}", "application/json")]
    sleeps: list[float] = []
    flaky = FlakyMirror(failures=2)
    assert mirror_files(flaky, "users/u/scans/j/", files, attempts=3, sleep=sleeps.append) is None  # type: ignore[arg-type]
    assert set(flaky.uploaded) == {"users/u/scans/j/overlay.mp4", "users/u/scans/j/report.json"}
    assert sleeps == [1.0, 2.0]
    error = mirror_files(FlakyMirror(failures=99), "p/", files, attempts=2, sleep=lambda s: None)  # type: ignore[arg-type]
    assert error is not None and "overlay.mp4" in error and "after 2 attempts" in error


def test_the_lambda_side_never_imports_onnxruntime_or_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, functions.api, functions.authorizer, functions.split, functions.segment, "
        "functions.assemble, functions.watchdog; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('onnxruntime', 'tensorflow'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code],
        capture_output=True,
        text=True,
        check=True,
        env={"POWERTOOLS_SERVICE_NAME": "ichseg", "PATH": ""},
    )
    assert json.loads(out.stdout) == []
