"""Results back to the PACS: the delivery queue, the job's delivery state, dcmtk's storescp as the PACS."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage, generate_uid

from gateway.delivery import Deliverer, DeliveryOutcome
from gateway.service import GatewayService
from gateway.settings import Destination, GatewaySettings
from ichseg.errors import ErrorCode
from ichseg.pipeline import keys
from ichseg.pipeline.jobs import DeliveryState, Job, JobSource, JobStore, Stage
from ichseg.writers.dicom_results import overlay_series_zip
from tests.gateway.conftest import Aws, RecordingMetrics, free_port, wait_until
from tests.patient_identifiers import identifier_leaks
from tests.scan_fixtures import dicom_bytes, new_instance

SITE = "SITEA"


def result_object(sop_class: str, modality: str) -> bytes:
    """A small SEG or SR file as the pipeline writes under ``results/{job}/`` (transport is what is tested)."""
    ds = new_instance(sop_class, modality)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    return dicom_bytes(ds)


def job_in(aws: Aws, store: JobStore, done: bool = True, with_results: bool = True, site: str = SITE) -> Job:
    """A hospital job as the pipeline leaves it: DONE with its SEG and SR in S3 (or still assembling)."""
    key = keys.gateway_ingest_key(site, hashlib.sha256(uuid.uuid4().bytes).hexdigest())
    job_id = keys.ingest_job_id(key, "")
    store.create(job_id, JobSource.INGEST, None, key, 900)
    store.mark_split(job_id, 1, 4, {"format": "dicom"})
    store.mark_assembling(job_id)
    results = {}
    if with_results:
        for name, (sop_class, modality) in {
            "seg": (SegmentationStorage, "SEG"),
            "sr": (Comprehensive3DSRStorage, "SR"),
        }.items():
            results[name] = f"{keys.results_prefix(job_id)}{name}.dcm"
            aws.s3.put_object(Bucket=aws.bucket, Key=results[name], Body=result_object(sop_class, modality))
    if done:
        store.mark_done(job_id, results, {"finding": "hemorrhage"}, None, None)
    return store.require(job_id)


class Pacs:
    """dcmtk's storescp: every instance received is kept under a unique file name (duplicates show)."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.port_given_out = False
        """Set once :attr:`destination` was read: from then on the port must not change."""
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def destination(self) -> Destination:
        self.port_given_out = True
        return Destination("PACS", "127.0.0.1", self.port)

    def start(self, attempts: int = 20) -> Pacs:
        """Start storescp and wait until it answers a C-ECHO.

        The port was only probed free, so another process may have bound it since: storescp then
        exits at once. Retry (bounded) on a new port, or on the same one once a destination names it.
        """
        for _ in range(attempts):
            process = subprocess.Popen(
                ["storescp", "-aet", "PACS", "-od", str(self.folder), "+uf", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.process = process
            if self._listening(process):
                return self
            self.process = None
            if self.port_given_out:
                time.sleep(0.5)
            else:
                self.port = free_port()
        raise AssertionError(f"storescp could not listen on a port in {attempts} attempts")

    def _listening(self, process: subprocess.Popen[bytes]) -> bool:
        """Wait until storescp answers a C-ECHO on :attr:`port` (True) or exits (False: no bind)."""
        echo = ["echoscu", "-aec", "PACS", "127.0.0.1", str(self.port)]
        wait_until(lambda: process.poll() is not None or subprocess.run(echo).returncode == 0)
        return process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def received(self) -> list[str]:
        """One entry per instance received: storescp's file prefix (SG: segmentation, SR3: 3D SR)."""
        return sorted(path.name.split(".")[0] for path in self.folder.iterdir() if path.is_file())


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    pacs = Pacs(tmp_path / "pacs", free_port())
    yield pacs
    pacs.stop()


@pytest.fixture
def store(aws: Aws) -> JobStore:
    return JobStore(aws.dynamodb, aws.table)


def send(aws: Aws, job_id: str) -> None:
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody=json.dumps({"job_id": job_id}))


def queued(aws: Aws) -> int:
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=aws.queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def deliverer(settings: GatewaySettings, aws: Aws, store: JobStore, metrics: RecordingMetrics) -> Deliverer:
    return Deliverer(settings, store, aws.s3, aws.sqs, metrics)


def test_pacs_down_then_up_delivers_each_object_once(
    make_settings: Callable[..., GatewaySettings],
    aws: Aws,
    store: JobStore,
    pacs: Pacs,
    metrics: RecordingMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    job = job_in(aws, store)
    send(aws, job.job_id)
    settings = make_settings(
        delivery_queue_url=aws.queue_url, destinations={SITE: pacs.destination}, delivery_attempts=10
    )
    with GatewayService(settings, metrics=metrics):
        # Nobody listens at the PACS's address: attempts are recorded, the message stays.
        failing = wait_until(lambda: (j := store.require(job.job_id)).delivery_attempts >= 2 and j)
        assert failing.delivery_state == DeliveryState.PENDING
        assert failing.delivery_reason is not None and "association with PACS@127.0.0.1" in failing.delivery_reason
        assert queued(aws) == 1
        pacs.start()
        # The delivery backoff doubles (1, 2, 4, 8 s): the next attempt can be well after the start.
        delivered = wait_until(
            lambda: (j := store.require(job.job_id)).delivery_state == DeliveryState.DELIVERED and j, timeout=60
        )
        assert delivered.delivered_objects == {"seg", "sr"}
        assert delivered.delivery_reason is None
        wait_until(lambda: queued(aws) == 0)
        time.sleep(1.5)  # long enough for any redelivery to have shown up
    assert pacs.received() == ["SG", "SR3"]  # each exactly once
    assert metrics.count("Deliveries") == 1 and metrics.count("DeliveryFailures") == 0
    assert identifier_leaks(caplog.text) == []


def test_last_receive_fails_the_delivery_counts_it_and_leaves_the_message_for_the_dead_letter_queue(
    make_settings: Callable[..., GatewaySettings], aws: Aws, store: JobStore, metrics: RecordingMetrics
) -> None:
    dead = aws.sqs.create_queue(QueueName=f"{aws.table}-dlq")["QueueUrl"]
    dead_arn = aws.sqs.get_queue_attributes(QueueUrl=dead, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.sqs.set_queue_attributes(
        QueueUrl=aws.queue_url,
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": 2})},
    )
    job = job_in(aws, store)
    send(aws, job.job_id)
    nobody = Destination("PACS", "127.0.0.1", free_port())
    settings = make_settings(delivery_queue_url=aws.queue_url, default_destination=nobody, delivery_attempts=2)
    worker = deliverer(settings, aws, store, metrics)

    [first] = worker.poll_once()
    assert first.outcome == DeliveryOutcome.RETRY and first.visibility == 1
    assert store.require(job.job_id).delivery_state == DeliveryState.PENDING
    [last] = wait_until(worker.poll_once)
    assert last.outcome == DeliveryOutcome.GAVE_UP and not last.delete and last.visibility == 0
    failed = store.require(job.job_id)
    assert failed.delivery_state == DeliveryState.FAILED and failed.delivery_attempts == 2
    assert failed.delivery_reason is not None and "the last" in failed.delivery_reason
    assert metrics.count("DeliveryFailures") == 1
    # The next receive finds it past maxReceiveCount: SQS moves it to the dead-letter queue.
    assert worker.poll_once() == []
    assert aws.sqs.receive_message(QueueUrl=dead, WaitTimeSeconds=1).get("Messages")


def test_a_job_not_done_yet_waits_then_is_delivered(
    make_settings: Callable[..., GatewaySettings], aws: Aws, store: JobStore, pacs: Pacs, metrics: RecordingMetrics
) -> None:
    pacs.start()
    job = job_in(aws, store, done=False)
    send(aws, job.job_id)  # the assemble stage sends the message just before DONE
    worker = deliverer(
        make_settings(delivery_queue_url=aws.queue_url, default_destination=pacs.destination), aws, store, metrics
    )
    [waiting] = worker.poll_once()
    assert waiting.outcome == DeliveryOutcome.NOT_DONE and waiting.visibility == 1 and not waiting.delete
    prefix = keys.results_prefix(job.job_id)
    store.mark_done(job.job_id, {"seg": prefix + "seg.dcm", "sr": prefix + "sr.dcm"}, {}, None, None)
    [delivered] = wait_until(worker.poll_once)
    assert delivered.outcome == DeliveryOutcome.DELIVERED
    assert pacs.received() == ["SG", "SR3"]
    assert queued(aws) == 0


def test_a_duplicate_message_after_delivery_sends_nothing(
    make_settings: Callable[..., GatewaySettings], aws: Aws, store: JobStore, pacs: Pacs, metrics: RecordingMetrics
) -> None:
    pacs.start()
    job = job_in(aws, store)
    worker = deliverer(
        make_settings(delivery_queue_url=aws.queue_url, default_destination=pacs.destination), aws, store, metrics
    )
    send(aws, job.job_id)
    send(aws, job.job_id)
    outcomes = [d.outcome for d in wait_until(worker.poll_once)]
    outcomes += [d.outcome for d in wait_until(worker.poll_once)]
    assert sorted(outcomes) == [DeliveryOutcome.DELIVERED, DeliveryOutcome.DUPLICATE]
    assert pacs.received() == ["SG", "SR3"]
    assert queued(aws) == 0


def test_a_failed_job_or_an_unknown_one_sends_nothing(
    make_settings: Callable[..., GatewaySettings], aws: Aws, store: JobStore, pacs: Pacs, metrics: RecordingMetrics
) -> None:
    pacs.start()
    job = job_in(aws, store, done=False)
    store.fail(job.job_id, ErrorCode.ASSEMBLE_FAILED, "assembly failed", Stage.ASSEMBLE)
    not_dicom = job_in(aws, store, with_results=False)  # a router's NIfTI upload: no SEG, no SR
    worker = deliverer(
        make_settings(delivery_queue_url=aws.queue_url, default_destination=pacs.destination), aws, store, metrics
    )
    send(aws, job.job_id)
    send(aws, not_dicom.job_id)
    send(aws, "ingest-000000000000000000000000")
    aws.sqs.send_message(QueueUrl=aws.queue_url, MessageBody="not json")
    outcomes: list[DeliveryOutcome] = []
    wait_until(lambda: outcomes.extend(d.outcome for d in worker.poll_once()) or len(outcomes) == 4)
    assert outcomes == [DeliveryOutcome.NOTHING_TO_SEND] * 4
    assert pacs.received() == []
    assert queued(aws) == 0
    assert store.require(job.job_id).delivery_state is None
    assert store.require(not_dicom.job_id).delivery_state is None and metrics.count("DeliveryFailures") == 0


def test_a_site_without_destination_fails_delivery_with_that_reason(
    make_settings: Callable[..., GatewaySettings], aws: Aws, store: JobStore, metrics: RecordingMetrics
) -> None:
    job = job_in(aws, store, site="ELSEWHERE")
    other = Destination("PACS", "127.0.0.1", free_port())
    worker = deliverer(make_settings(delivery_queue_url=aws.queue_url, destinations={SITE: other}), aws, store, metrics)
    send(aws, job.job_id)
    [decision] = wait_until(worker.poll_once)
    assert decision.outcome == DeliveryOutcome.GAVE_UP and decision.delete
    failed = store.require(job.job_id)
    assert failed.delivery_state == DeliveryState.FAILED
    assert failed.delivery_reason == "no DICOM destination configured for site ELSEWHERE"
    assert metrics.count("DeliveryFailures") == 1
    assert queued(aws) == 0


def test_a_destination_with_overlay_gets_the_overlay_series_image_by_image_and_others_do_not(
    make_settings: Callable[..., GatewaySettings], aws: Aws, store: JobStore, pacs: Pacs, metrics: RecordingMetrics
) -> None:
    """The overlay series travels as one zip in S3 and reaches the PACS as one C-STORE per image, on
    the association of the SEG and SR; a destination without ``?overlay`` gets the SEG and SR only."""
    pacs.start()
    plain = pacs.destination
    settings = make_settings(
        delivery_queue_url=aws.queue_url,
        destinations={SITE: Destination(plain.ae_title, plain.host, plain.port, overlay=True), "SITEB": plain},
    )
    images = [result_object(SecondaryCaptureImageStorage, "OT") for _ in range(3)]
    jobs = {site: job_in(aws, store, site=site, done=False) for site in (SITE, "SITEB")}
    for job in jobs.values():
        prefix = keys.results_prefix(job.job_id)  # job_in wrote seg.dcm and sr.dcm there
        results = {"seg": f"{prefix}seg.dcm", "sr": f"{prefix}sr.dcm", "overlay_series": f"{prefix}overlay_series.zip"}
        aws.s3.put_object(Bucket=aws.bucket, Key=results["overlay_series"], Body=overlay_series_zip(images))
        store.mark_done(job.job_id, results, {"finding": "hemorrhage"}, None, None)

    gateway = deliverer(settings, aws, store, metrics)
    assert gateway.handle(json.dumps({"job_id": jobs[SITE].job_id}), 1).outcome == DeliveryOutcome.DELIVERED
    assert store.require(jobs[SITE].job_id).delivered_objects == {"seg", "sr", "overlay_series"}
    assert pacs.received() == ["SC", "SC", "SC", "SG", "SR3"]
    assert gateway.handle(json.dumps({"job_id": jobs["SITEB"].job_id}), 1).outcome == DeliveryOutcome.DELIVERED
    assert store.require(jobs["SITEB"].job_id).delivered_objects == {"seg", "sr"}
    assert pacs.received() == ["SC", "SC", "SC", "SG", "SG", "SR3", "SR3"]
