"""Unit tests of the pipeline's pure parts: key layout, batching, messages, endpoint retries, merging."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from botocore.stub import Stubber
from PIL import Image

from ichseg.endpoint_protocol import (
    CONTEXT_SLICES,
    ProtocolError,
    RequestAttributes,
    ResponseAttributes,
    encode_slices,
    trim_context,
)
from ichseg.model_metadata import SUBTYPES
from ichseg.pipeline import keys
from ichseg.pipeline.config import ConfigError, PipelineConfig
from ichseg.pipeline.endpoint import EndpointClient, EndpointError, HttpTransport, RetryPolicy, SageMakerTransport
from ichseg.pipeline.jobs import JobSource
from ichseg.pipeline.keys import UnexpectedKey, UploadRef
from ichseg.pipeline.messages import AssembleMessage, MalformedMessage, SegmentMessage, plan_batches
from ichseg.pipeline.mirror import MirrorFile, mirror_files
from ichseg.pipeline.parts import BatchPart, ModelChanged, model_of, render_batch
from ichseg.segmentation import masks_from_probabilities, masks_from_u8_probabilities
from ichseg.writers.outputs import output_files, write_outputs
from ichseg.writers.report import build_report, report_from_areas
from tests.stack_fixtures import head_frames
from training.metrics import volume_ml

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
    message = SegmentMessage.for_batch(JOB, batches[1], tuple(f"{i:04d}" for i in range(10)))
    assert SegmentMessage.from_json(message.to_json()) == message
    assert message.slice_ids == ("0004", "0005", "0006", "0007")


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
    message = SegmentMessage.for_batch(JOB, batch, tuple(f"{i:04d}" for i in range(40)))
    assert SegmentMessage.from_json(message.to_json()) == message
    assert message.slice_ids == tuple(f"{i:04d}" for i in range(16, 32))
    assert message.frames_key == f"work/{JOB}/frames/b0001.npy" and len(message.to_json()) < 512
    assert AssembleMessage.from_json(AssembleMessage(job_id=JOB).to_json()) == AssembleMessage(job_id=JOB)
    assert json.loads(AssembleMessage(job_id=JOB).to_json()) == {"job_id": JOB}  # the final message's shape
    # A per-batch message of an earlier version (in flight across a deploy) reads as the final one.
    assert AssembleMessage.from_json(json.dumps({"job_id": JOB, "batch_id": "b0003"})) == AssembleMessage(job_id=JOB)
    for body in ("", "[]", "{}", '{"job_id": "x"}', "not json"):
        with pytest.raises(MalformedMessage):
            SegmentMessage.from_json(body)


class ScriptedTransport:
    """Answers from a script: an EndpointError to raise, or a (body, attributes) pair."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.sent: list[str] = []

    def __call__(self, body: bytes, custom_attributes: str = "") -> tuple[bytes, str]:
        self.calls += 1
        self.sent.append(custom_attributes)
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


def test_context_slices_are_declared_and_answers_for_them_are_never_kept() -> None:
    frames = np.zeros((6, 16, 16), np.uint8)
    # an endpoint that honours the declaration answers for the 4 inner slices
    honours = ScriptedTransport(_answer(frames[1:5]))
    result = EndpointClient(honours, sleep=lambda s: None).segment(frames, RequestAttributes(1, 1))
    assert honours.sent == ["context=1,1"] and result.probabilities_u8.shape == (4, 16, 16)
    # one that ignores it answers for all 6: the client drops the context's answers itself
    ignores = ScriptedTransport(_answer(frames))
    result = EndpointClient(ignores, sleep=lambda s: None).segment(frames, RequestAttributes(1, 0))
    assert result.probabilities_u8.shape == (5, 16, 16) and len(result.attributes.slice_probabilities) == 5
    # no context: nothing is declared
    plain = ScriptedTransport(_answer(frames))
    EndpointClient(plain, sleep=lambda s: None).segment(frames)
    assert plain.sent == [""]
    assert RequestAttributes.decode("context=1,0") == RequestAttributes(1, 0)
    assert RequestAttributes.decode("") == RequestAttributes()
    for bad in ("context=2,0", "context=a,b", "context=1"):
        with pytest.raises(ProtocolError):
            RequestAttributes.decode(bad)


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
        # the exact request: npy both ways, and the context declared in the request's CustomAttributes
        stub.add_response(
            "invoke_endpoint",
            {"Body": io.BytesIO(body), "ContentType": "application/x-npy", "CustomAttributes": attributes},
            expected_params={
                "EndpointName": "ichseg",
                "ContentType": "application/x-npy",
                "Accept": "application/x-npy",
                "Body": encode_slices(slices),
                "CustomAttributes": "context=1,1",
            },
        )
        assert transport(encode_slices(slices), "context=1,1") == (body, attributes)


def test_an_unreachable_http_endpoint_is_a_retryable_error() -> None:
    with pytest.raises(EndpointError) as info:
        HttpTransport("http://127.0.0.1:9", timeout_seconds=2)(b"x")
    assert info.value.retryable


def test_batches_merge_into_one_model_and_gated_masks() -> None:
    attributes = [ResponseAttributes("m", "1", 0.5, 0.6, (0.9, 0.1)), ResponseAttributes("m", "1", 0.5, 0.6, (0.7,))]
    model = model_of(attributes)
    assert (model.name, model.version, model.slice_threshold, model.pixel_threshold) == ("m", "1", 0.5, 0.6)
    part = render_batch(
        np.zeros((2, 8, 8), np.uint8), np.full((2, 8, 8), 200, np.uint8), attributes[0], 0, ["a", "b"], 5
    )
    assert part.areas.tolist() == [64, 0]  # slice b is below the slice threshold
    attributes[1] = ResponseAttributes("m", "2", 0.5, 0.6, (0.7,))
    with pytest.raises(ModelChanged, match=r"m 1 .* m 2"):
        model_of(attributes)


def test_u8_thresholding_is_the_float_thresholding_bit_for_bit() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    for threshold in (0.0, 0.3, 0.5, 0.5019608, 128 / 255, 1.0, 1.5):
        expected = masks_from_probabilities(levels.astype(np.float32) / 255.0, np.ones(1), threshold, 0.5).masks
        assert np.array_equal(masks_from_u8_probabilities(levels, np.ones(1), threshold, 0.5), expected), threshold
    assert not masks_from_u8_probabilities(levels, np.zeros(1), 0.0, 0.5).any()  # gated by the slice head


def test_a_scan_assembled_batch_by_batch_equals_the_whole_scans_outputs(tmp_path: Path) -> None:
    """Per-batch parts joined by the final assembly give what ``ichseg segment`` writes for the whole scan."""
    frames = head_frames(10, bleed_from=4)
    probabilities = np.where(frames > 200, 230, np.where(frames > 0, 60, 0)).astype(np.uint8)
    slice_probabilities = (0.1, 0.2, 0.3, 0.45, 0.8, 0.9, 0.95, 0.9, 0.85, 0.7)
    subtypes = tuple((0.6 * (p > 0.5), 0.2, 0.1, 0.0, 0.05) for p in slice_probabilities)
    ids = [f"{i:04d}" for i in range(10)]
    whole = ResponseAttributes("ichseg-unet", "0.2.0", 0.5, 0.5, slice_probabilities, SUBTYPES, subtypes, 0.6)
    spacing, thickness = (0.5, 0.45), 2.5

    parts = []
    for batch in plan_batches(10, 4):
        own = slice(batch.start, batch.start + batch.count)
        answer = dataclasses.replace(
            whole, slice_probabilities=slice_probabilities[own], subtype_probabilities=subtypes[own]
        )
        part = render_batch(frames[own], probabilities[own], answer, batch.start, ids[own], fps=5.0)
        parts.append(BatchPart.decode(part.encode()))  # through its stored form
    model = model_of([p.attributes for p in parts])
    report = report_from_areas(
        ids,
        np.array(slice_probabilities, np.float32),
        np.array(subtypes, np.float32),
        np.concatenate([p.areas for p in parts]),
        model,
        spacing,
        thickness,
    )
    joined = output_files(ids, [p.rendered for p in parts], report, [label for p in parts for label in p.labels])

    segmentation = masks_from_probabilities(
        probabilities.astype(np.float32) / 255.0,
        np.array(slice_probabilities, np.float32),
        model.pixel_threshold,
        model.slice_threshold,
        np.array(subtypes, np.float32),
    )
    expected_report = build_report(ids, segmentation, model, spacing, thickness)
    write_outputs(tmp_path, ids, frames, segmentation, expected_report, model=model)

    assert json.loads(joined["report.json"]) == expected_report == json.loads((tmp_path / "report.json").read_text())
    assert report["slices_with_hemorrhage"] == ids[4:] and report["volume_ml"] > 0
    assert report["volume_ml"] == round(volume_ml(segmentation.masks, spacing, thickness), 3)
    for slice_id in ids:
        assert joined[f"masks/{slice_id}.png"] == (tmp_path / "masks" / f"{slice_id}.png").read_bytes()
    sheet = np.array(Image.open(io.BytesIO(joined["contact_sheet.png"])))
    assert np.array_equal(sheet, np.array(Image.open(tmp_path / "contact_sheet.png")))

    # The video: three segments joined without re-encoding, every frame in order, a key frame
    # where each batch begins, and the same pictures as the whole scan encoded at once.
    joined_frames, keyframes = _decoded(joined["overlay.mp4"])
    whole_frames, _ = _decoded((tmp_path / "overlay.mp4").read_bytes())
    assert len(joined_frames) == len(whole_frames) == 10 and keyframes == [0, 4, 8]
    assert np.abs(joined_frames.astype(int) - whole_frames.astype(int)).mean() < 1.0
    # Where nothing is painted, the video shows the slice itself (below the caption).
    assert np.abs(joined_frames[:4, 20:].astype(int) - frames[:4, 20:].astype(int)).mean() < 1.0
    assert 0 < joined["overlay.mp4"].find(b"moov") < joined["overlay.mp4"].find(b"mdat")  # faststart


def _decoded(video: bytes) -> tuple[np.ndarray, list[int]]:
    """Grey frames of an mp4 and the indices of its key frames; the timestamps must be 0, 1, 2... frames."""
    import av

    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
    step = decoded[1].pts - decoded[0].pts
    assert [f.pts for f in decoded] == [decoded[0].pts + i * step for i in range(len(decoded))]
    return np.stack([f.to_ndarray(format="gray") for f in decoded]), [i for i, f in enumerate(decoded) if f.key_frame]


class FlakyMirror:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.uploaded: dict[str, bytes] = {}

    def upload(self, path: str, data: bytes, content_type: str, timeout: float = 10.0) -> None:
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


class HangingMirror:
    """Firebase during an outage: every upload waits out its whole timeout, then fails."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timeouts: list[float] = []

    def upload(self, path: str, data: bytes, content_type: str, timeout: float = 10.0) -> None:
        self.timeouts.append(timeout)
        self.now += timeout
        raise TimeoutError("read timed out")


def test_a_firebase_outage_costs_the_mirror_budget_and_no_more() -> None:
    mirror = HangingMirror()

    def sleep(seconds: float) -> None:
        mirror.now += seconds

    files = [MirrorFile(name, b"x", "video/mp4") for name in ("overlay.mp4", "report.json")]
    error = mirror_files(mirror, "p/", files, attempts=10, sleep=sleep, budget_seconds=30, clock=lambda: mirror.now)  # type: ignore[arg-type]
    assert error is not None and mirror.now <= 30
    assert all(t <= 10 for t in mirror.timeouts)


def test_the_real_storage_client_does_not_retry_on_its_own(tmp_path: Path) -> None:
    """google-cloud-storage retries a refused connection for up to 120 s by default: not here."""
    import time

    from ichseg.pipeline.config import PipelineConfig
    from ichseg.pipeline.mirror import FirebaseMirror

    config = PipelineConfig.from_env(
        {"ICHSEG_FIREBASE_BUCKET": "b", "FIREBASE_PROJECT_ID": "p", "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"}
    )
    files = [MirrorFile("report.json", b"{}", "application/json")]
    started = time.monotonic()
    error = mirror_files(FirebaseMirror(config), "p/", files, attempts=2, sleep=lambda s: None, budget_seconds=20)
    # Far below the library's own 120 s of retries, with room for a cold import on a busy machine.
    assert error is not None and time.monotonic() - started < 60


def test_the_mirror_budget_fits_well_inside_the_assemble_function_timeout() -> None:
    from ichseg.pipeline.config import PipelineConfig
    from infrastructure.cloud_template import CloudTemplate

    functions = CloudTemplate.load().functions
    budget = PipelineConfig.from_env({}).mirror_budget_seconds
    assert budget * 4 <= functions["assemble"].timeout_seconds
    assert budget * 4 <= functions["mirror"].timeout_seconds  # each retry has the same budget


def test_mirror_messages_and_the_retry_backoff() -> None:
    from ichseg.pipeline.assemble import MAX_VISIBILITY_SECONDS, retry_delay
    from ichseg.pipeline.messages import MirrorMessage

    assert MirrorMessage.from_json(MirrorMessage(job_id=JOB).to_json()) == MirrorMessage(job_id=JOB)
    for body in ("{}", '{"job_id": ""}', '{"job_id": 7}', "not json"):
        with pytest.raises(MalformedMessage):
            MirrorMessage.from_json(body)
    config = PipelineConfig.from_env({"ICHSEG_MIRROR_BACKOFF_SECONDS": "60"})
    # the first retry waits the message's delay (60 s); after the n-th failed receive, 60 * 2**n
    assert [retry_delay(config, n) for n in range(1, 5)] == [120, 240, 480, 960]
    assert retry_delay(config, 20) == MAX_VISIBILITY_SECONDS  # SQS's 12 h ceiling


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


def test_background_work_runs_at_a_lower_priority_and_leaves_the_caller_alone() -> None:
    import os

    from ichseg.pipeline.parts import BACKGROUND_NICENESS, in_background

    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert in_background(lambda: os.getpriority(os.PRIO_PROCESS, 0)) == min(19, mine + BACKGROUND_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine
    with pytest.raises(ZeroDivisionError):
        in_background(lambda: 1 / 0)


def test_the_stages_log_as_their_handler_s_json_whatever_the_service_name() -> None:
    import subprocess
    import sys

    code = (
        "import logging, functions.split as f; f.logger.append_keys(job_id='job-1'); "
        "logging.getLogger('ichseg.pipeline.split').info('a stage line')"
    )
    env = {"PATH": "", "POWERTOOLS_SERVICE_NAME": "something-else", "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    [line] = [json.loads(text) for text in out.stdout.splitlines() if text.startswith("{")]
    assert (line["message"], line["job_id"], line["service"]) == ("a stage line", "job-1", "ichseg")
