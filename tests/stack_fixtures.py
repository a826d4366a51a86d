"""The local stack for every test that needs one (pytest plugin, registered in ``tests/conftest.py``).

One stack for the whole session, started by the first test that asks for ``stack`` (or ``alice``,
``bob``, ``core``): the real thing (moto server, storage emulator, the inference server with a tiny
ONNX model from ``tests/onnx_fixtures.py``, the functions in worker processes, the event pump, and
Orthanc as the PACS), tuned for speed: short visibility timeouts (a failed message comes back in
seconds) and fast endpoint retries. Tests that use it are marked ``stack`` and run after the others
(``tests/conftest.py``); ``pytest -m "not stack"`` runs the rest alone.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import requests

from ichseg.pipeline.config import PipelineConfig
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.jobs import Job
from infrastructure.cloud_template import CloudTemplate
from infrastructure.local_stack import LocalStack, StackSettings
from tests.onnx_fixtures import build_tiny_model
from tests.pacs_fixtures import OrthancPacs, PortInUse
from tests.scan_fixtures import encode_video

if TYPE_CHECKING:
    from tests.gateway.receivers import Ris

TEST_ENVIRONMENT = {
    "ICHSEG_BATCH_SLICES": "4",
    "ICHSEG_ENDPOINT_ATTEMPTS": "3",
    "ICHSEG_ENDPOINT_BACKOFF_SECONDS": "0.05",
    "ICHSEG_MIRROR_ATTEMPTS": "2",
    # A Firebase copy that missed the budget is retried after 2 s, then 4, 8... (60 s, doubling, deployed).
    "ICHSEG_MIRROR_BACKOFF_SECONDS": "2",
    # Uploads declared over 6 MiB go in parts of 5 MiB (S3's smallest; deployed: 64 and 16 MiB).
    "ICHSEG_MULTIPART_THRESHOLD_BYTES": str(6 * 1024 * 1024),
    "ICHSEG_MULTIPART_PART_BYTES": str(5 * 1024 * 1024),
}


def head_frames(count: int, height: int = 64, width: int = 80, bleed_from: int | None = None) -> np.ndarray:
    """Windowed 'head' slices (a dim ellipse on black) with a bright blob from ``bleed_from`` on.

    With the tiny model (pixel head ~ brightness > 0.5, slice head ~ mean input > 0.1) the blob is
    what gets segmented and the slices with it are the 'hemorrhage' slices; the head alone stays
    below both (grey 15 is also below the head-crop threshold, so its slices are not cropped).
    """
    rows, cols = np.mgrid[:height, :width]
    radius = np.sqrt(((rows - height / 2) / (0.42 * height)) ** 2 + ((cols - width / 2) / (0.42 * width)) ** 2)
    head, skull = radius <= 1, (radius > 1) & (radius <= 1.1)
    frames = np.zeros((count, height, width), np.uint8)
    for index in range(count):
        frames[index][head] = 15
        frames[index][skull] = 255
        if bleed_from is not None and index >= bleed_from:
            blob = ((rows - height * 0.45) ** 2 + (cols - width * 0.4) ** 2) <= (0.12 * height) ** 2
            frames[index][blob] = 230
    return frames


def video_bytes(tmp_path: Path, frames: np.ndarray) -> bytes:
    path = encode_video(tmp_path / f"{uuid.uuid4().hex}.mp4", frames, "mp4", "libx264", "yuv420p")
    return path.read_bytes()


def aws_client(url: str, service: str) -> Any:
    import boto3

    return boto3.client(
        service, endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def create_jobs_table(client: Any, name: str) -> None:
    """The jobs table exactly as template.yaml declares it (keys, by_owner index)."""
    table = CloudTemplate.load().table
    client.create_table(
        TableName=name,
        **{k: table[k] for k in ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes")},
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The 0.2 interface: each slice with its neighbours (so batches must carry context slices),
    # the intracranial region, and subtype probabilities.
    return build_tiny_model(
        tmp_path_factory.mktemp("model") / "tiny.onnx",
        slice_threshold=0.5,
        pixel_threshold=0.5,
        channels=3,
        intracranial_only=True,
        subtypes=True,
    )


def free_ports(count: int) -> list[int]:
    """``count`` different free ports. Every probe stays open until all are taken (a closed probe's
    port can come back from the next probe); still only a hint, since Orthanc binds them later."""
    with ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            ports.append(int(probe.getsockname()[1]))
        return ports


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPacs]:
    """The hospital's PACS (Orthanc): where the stack's DICOM gateway sends results."""
    workdir = tmp_path_factory.mktemp("pacs")
    for attempt in range(5):  # a probed port can be taken before Orthanc binds it: try new ones
        dicom_port, http_port = free_ports(2)
        orthanc = OrthancPacs(workdir, "HOSPITALPACS", dicom_port, http_port, {})
        try:
            orthanc.start()
            break
        except PortInUse:
            orthanc.stop()
            if attempt == 4:
                raise
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="session")
def ris() -> Iterator[Ris]:
    """The hospital's RIS: the stack's gateway sends it an HL7 ORU^R01 of every hospital job."""
    # Imported here: this plugin loads in the training environment too, which has no HL7 library.
    from tests.gateway.receivers import Ris

    receiver = Ris()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def stack(
    tiny_model: Path, pacs: OrthancPacs, ris: Ris, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalStack]:
    destination = ris.destination
    settings = StackSettings(
        state_dir=tmp_path_factory.mktemp("stack"),
        model=tiny_model,
        visibility_timeout={"ingest": 6, "segment": 4, "assemble": 8, "delivery": 3},
        watchdog_interval_seconds=3600,  # tests tick it themselves
        environment={
            **TEST_ENVIRONMENT,
            # The PACS's calling AE title is the site.
            "ICHSEG_GATEWAY_HL7_DESTINATIONS": f"{pacs.ae_title}=RIS@{destination.host}:{destination.port}",
        },
        pacs=f"{pacs.address}?overlay",  # the hospital asks for the overlay series too
        gateway_idle_seconds=1.0,
    )
    with LocalStack(settings) as running:
        yield running


@dataclass
class AppClient:
    """What the mobile app does, over HTTP: token -> POST /v1/scans -> presigned POST -> poll."""

    stack: LocalStack
    uid: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.token(self.uid)}"}

    def start(self, content_type: str = "video/mp4", **extra: Any) -> requests.Response:
        return requests.post(
            f"{self.stack.api_url}/v1/scans",
            json={"content_type": content_type, **extra},
            headers=self.headers,
            timeout=30,
        )

    def upload(self, data: bytes, content_type: str = "video/mp4") -> str:
        response = self.start(content_type, size_bytes=len(data))
        assert response.status_code == 201, response.text
        ticket = response.json()
        posted = requests.post(
            ticket["upload"]["url"],
            data=ticket["upload"]["fields"],
            files={"file": ("scan", data, content_type)},
            timeout=30,
        )
        assert posted.status_code == 204, posted.text
        return str(ticket["job_id"])

    def status(self, job_id: str) -> requests.Response:
        return requests.get(f"{self.stack.api_url}/v1/scans/{job_id}", headers=self.headers, timeout=30)

    def wait(self, job_id: str, timeout: float = 90.0) -> Job:
        return self.stack.inspect.wait_for_job(job_id, timeout=timeout)


@pytest.fixture
def alice(stack: LocalStack) -> AppClient:
    return AppClient(stack, "alice")


@pytest.fixture
def bob(stack: LocalStack) -> AppClient:
    return AppClient(stack, "bob")


def decode_policy(fields: dict[str, str]) -> dict[str, Any]:
    return json.loads(base64.b64decode(fields["policy"]))


@pytest.fixture
def core(stack: LocalStack) -> PipelineContext:
    """A context on fresh resources in the stack's moto that no pump reads: tests drive each stage.

    It reaches the inference server by plain HTTP (``ICHSEG_ENDPOINT_URL``, the EC2 mode).
    """
    suffix = uuid.uuid4().hex[:8]
    s3, sqs, dynamodb = stack.aws("s3"), stack.aws("sqs"), stack.aws("dynamodb")
    bucket, table = f"core-{suffix}", f"core-{suffix}"
    s3.create_bucket(Bucket=bucket)
    queues = {
        name: sqs.create_queue(QueueName=f"core-{name}-{suffix}")["QueueUrl"]
        for name in ("segment", "assemble", "mirror", "ingest")
    }
    create_jobs_table(dynamodb, table)
    config = PipelineConfig.from_env(
        {
            **TEST_ENVIRONMENT,
            "ICHSEG_BUCKET": bucket,
            "ICHSEG_TABLE": table,
            "ICHSEG_SEGMENT_QUEUE_URL": queues["segment"],
            "ICHSEG_ASSEMBLE_QUEUE_URL": queues["assemble"],
            "ICHSEG_MIRROR_QUEUE_URL": queues["mirror"],
            "ICHSEG_INGEST_QUEUE_URL": queues["ingest"],
            "ICHSEG_ENDPOINT_URL": stack.endpoint_url,
        }
    )

    class Session:
        def client(self, service: str, config: Any = None) -> Any:
            import boto3

            return boto3.client(
                service,
                endpoint_url=stack.moto_url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=config,
            )

    return PipelineContext(config, session=Session(), sleep=lambda seconds: None)


def receive_all(ctx: PipelineContext, queue_url: str, wait: float = 2.0) -> list[dict[str, Any]]:
    """Every message on a core queue (deleted as read)."""
    messages: list[dict[str, Any]] = []
    deadline = time.time() + wait
    while time.time() < deadline:
        batch = ctx.sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, MessageSystemAttributeNames=["All"]
        ).get("Messages", [])
        for message in batch:
            ctx.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        messages += batch
        if not batch and messages:
            break
    return messages
