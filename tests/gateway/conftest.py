"""Fixtures for the gateway tests: a bare moto server, fresh AWS resources per test, CT series
written with pydicom, dcmtk's storescu/echoscu as the sending PACS and storescp as the receiving one.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from tests.patient_identifiers import PATIENT_IDENTIFIERS
from tests.scan_fixtures import new_instance
from tests.stack_fixtures import aws_client, create_jobs_table

DCMTK = all(shutil.which(tool) for tool in ("storescu", "echoscu", "storescp"))
if not DCMTK:  # `make test` installs dcmtk; without it these tests cannot run at all
    raise RuntimeError("dcmtk (storescu, echoscu, storescp) is not installed: apt-get install dcmtk")


class RecordingMetrics:
    """A metrics sink that keeps what it was given (the service's EMF sink prints to stdout instead)."""

    def __init__(self) -> None:
        self.values: list[tuple[str, float]] = []

    def add_metric(self, name: str, unit: Any, value: float) -> None:
        self.values.append((name, value))

    def count(self, name: str) -> float:
        return sum(value for metric, value in self.values if metric == name)


@dataclass
class Aws:
    """One test's bucket, jobs table and delivery queue in moto."""

    url: str
    bucket: str
    table: str
    queue_url: str
    s3: Any
    sqs: Any
    dynamodb: Any

    def ingest_keys(self) -> list[str]:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="ingest/")
        return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    for name, value in {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    suffix = uuid.uuid4().hex[:8]
    s3, sqs, dynamodb = (aws_client(moto_url, s) for s in ("s3", "sqs", "dynamodb"))
    bucket = table = f"gateway-{suffix}"
    s3.create_bucket(Bucket=bucket)
    create_jobs_table(dynamodb, table)
    queue_url = sqs.create_queue(QueueName=f"delivery-{suffix}", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    return Aws(moto_url, bucket, table, queue_url, s3, sqs, dynamodb)


@pytest.fixture
def make_settings(aws: Aws, tmp_path: Path) -> Callable[..., GatewaySettings]:
    def make(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "spool_dir": tmp_path / "spool",
            "host": "127.0.0.1",
            "port": 0,
            # Longer than any pause between two instances of one association on a loaded machine
            # (each is fsynced before its answer), so a study is never split by a slow disk.
            "idle_seconds": 1.5,
            "bucket": aws.bucket,
            "table": aws.table,
            "delivery_queue_url": "",
            "poll_seconds": 1,
            "delivery_backoff_seconds": 1.0,
            "pending_retry_seconds": 1,
        }
        values.update(overrides)
        return GatewaySettings(**values)

    return make


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def gateway(make_settings: Callable[..., GatewaySettings], metrics: RecordingMetrics) -> Iterator[GatewayService]:
    with GatewayService(make_settings(), metrics=metrics) as service:
        yield service


def ct_series(
    folder: Path,
    count: int,
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """``count`` small single-frame instances of one series, with the test patient's identifiers in every
    field (:data:`tests.patient_identifiers.PATIENT_IDENTIFIERS`); none of them may reach a log line."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for index in range(count):
        ds = new_instance(sop_class, modality)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        for keyword, value in PATIENT_IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.SeriesNumber = 3
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 5.0
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = (np.arange(64, dtype=np.int16) + index).tobytes()
        path = folder / f"{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def mr_instance(folder: Path) -> Path:
    return ct_series(folder, 1, modality="MR", sop_class=MRImageStorage)[0]


def storescu(
    address: tuple[str, int], files: list[Path], calling: str = "SITEA", called: str = "ICHSEG", verbosity: str = "-v"
) -> str:
    """Send with dcmtk's storescu; returns its combined output (``-v``: statuses; ``-d``: responses too)."""
    host, port = address
    done = subprocess.run(
        ["storescu", verbosity, "-aet", calling, "-aec", called, host, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
