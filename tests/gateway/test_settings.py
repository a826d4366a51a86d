"""Settings, the key layout's gateway keys, the job's delivery state, and the command line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.settings import Destination, GatewaySettings, SettingsError, site_of
from ichseg.errors import ErrorCode
from ichseg.pipeline import keys
from ichseg.pipeline.delivery_record import DeliveryRecords
from ichseg.pipeline.jobs import DeliveryState, JobSource, JobStore, Stage
from tests.gateway.conftest import Aws, wait_until

REPO = Path(__file__).resolve().parents[2]


def test_settings_from_the_environment(tmp_path: Path) -> None:
    settings = GatewaySettings.from_env(
        {
            "ICHSEG_GATEWAY_SPOOL_DIR": str(tmp_path),
            "ICHSEG_GATEWAY_AE_TITLE": "TRIAGE",
            "ICHSEG_GATEWAY_PORT": "104",
            "ICHSEG_GATEWAY_ALLOWED_AES": "CT1, ROUTER ",
            "ICHSEG_GATEWAY_IDLE_SECONDS": "2.5",
            "ICHSEG_GATEWAY_DESTINATIONS": "CT1=PACS1@10.0.0.5:104, NORTH WING=PACS2@pacs.north:11112",
            "ICHSEG_GATEWAY_DEFAULT_DESTINATION": "MAIN@[fd00::1]:4242",
            "ICHSEG_BUCKET": "b",
            "ICHSEG_TABLE": "t",
            "ICHSEG_DELIVERY_QUEUE_URL": "https://sqs/q",
            "ICHSEG_MAX_RECEIVE_COUNT": "7",
        }
    )
    assert (settings.ae_title, settings.port, settings.idle_seconds) == ("TRIAGE", 104, 2.5)
    assert settings.allowed_calling_aes == ("CT1", "ROUTER")
    assert settings.destination_for("CT1") == Destination("PACS1", "10.0.0.5", 104)
    assert settings.destination_for(site_of("NORTH WING")) == Destination("PACS2", "pacs.north", 11112)
    assert settings.destination_for("OTHER") == Destination("MAIN", "fd00::1", 4242)
    assert settings.delivery_attempts == 7 and settings.delivery_queue_url == "https://sqs/q"
    assert not settings.tls


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "ICHSEG_GATEWAY_SPOOL_DIR"),
        ({"ICHSEG_GATEWAY_PORT": "eleven"}, "ICHSEG_GATEWAY_PORT='eleven' is not a number"),
        ({"ICHSEG_GATEWAY_DEFAULT_DESTINATION": "pacs:104"}, "'pacs:104' is not AE@host:port"),
        ({"ICHSEG_GATEWAY_DESTINATIONS": "PACS@h:104"}, "is not SITE=AE@host:port"),
        ({"ICHSEG_GATEWAY_DEFAULT_DESTINATION": "A@h:70000"}, "port 70000 is out of range"),
        ({"ICHSEG_GATEWAY_AE_TITLE": "WAY-TOO-LONG-AE-TITLE"}, "is not a DICOM AE title"),
        ({"ICHSEG_GATEWAY_TLS_CERTIFICATE": "/c.pem"}, "both a certificate and its key"),
    ],
)
def test_bad_settings_say_what_is_wrong(tmp_path: Path, environ: dict[str, str], message: str) -> None:
    base = {"ICHSEG_GATEWAY_SPOOL_DIR": str(tmp_path)} if "ICHSEG_GATEWAY_SPOOL_DIR" not in message else {}
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        GatewaySettings.from_env({**base, **environ})


def test_sites_are_key_safe() -> None:
    assert site_of("CT SCANNER/1") == "CT.20SCANNER.2F1"  # escaped, not replaced: see test_faults.py
    assert keys.is_valid_site(site_of("CT SCANNER/1"))
    with pytest.raises(SettingsError):
        site_of("__")


def test_gateway_keys_name_their_job_by_the_key_alone() -> None:
    digest = "ab" * 32
    key = keys.gateway_ingest_key("SITEA", digest)
    assert key == f"ingest/SITEA/{digest}.zip" and keys.is_content_addressed(key)
    assert keys.ingest_job_id(key, '"etag-1"') == keys.ingest_job_id(key, "etag-2-multipart-5")
    assert keys.ingest_job_id(key, "") != keys.ingest_job_id(keys.gateway_ingest_key("SITEB", digest), "")
    assert keys.ingest_site(key) == "SITEA"
    # The router's free-form keys keep naming their job by key and content.
    assert keys.ingest_job_id("ingest/router/scan.zip", "a") != keys.ingest_job_id("ingest/router/scan.zip", "b")
    assert not keys.is_content_addressed(f"ingest/../{digest}.zip")
    with pytest.raises(ValueError):
        keys.gateway_ingest_key("a/b", digest)


def test_delivery_state_moves_by_conditional_writes(aws: Aws) -> None:
    store = JobStore(aws.dynamodb, aws.table)
    records = DeliveryRecords(store)
    key = keys.gateway_ingest_key("SITEA", "cd" * 32)
    job_id = keys.ingest_job_id(key, "")
    store.create(job_id, JobSource.INGEST, None, key, 900)
    assert not records.record_failure(job_id, "too early")  # only a DONE job is delivered
    store.mark_split(job_id, 1, 1, {})
    store.mark_assembling(job_id)
    store.mark_done(job_id, {"seg": "results/x/seg.dcm"}, {}, None, None)

    assert records.record_failure(job_id, "association refused", {"seg"})
    assert records.record_failure(job_id, "association refused again")
    job = store.require(job_id)
    assert (job.delivery_state, job.delivery_attempts, job.delivered_objects) == (DeliveryState.PENDING, 2, {"seg"})
    assert records.mark_delivered(job_id, {"sr"})
    assert not records.mark_delivered(job_id, {"sr"})  # a duplicate changes nothing
    assert not records.fail(job_id, "late")  # and a delivered job cannot fail
    job = store.require(job_id)
    assert (job.delivery_state, job.delivered_objects, job.delivery_reason) == (
        DeliveryState.DELIVERED,
        {"seg", "sr"},
        None,
    )
    # A job FAILED in the pipeline has nothing to deliver.
    other = keys.ingest_job_id(keys.gateway_ingest_key("SITEA", "ef" * 32), "")
    store.create(other, JobSource.INGEST, None, "ingest/SITEA/x.zip", 900)
    store.fail(other, ErrorCode.SPLIT_FAILED, "unreadable", Stage.SPLIT)
    assert not records.fail(other, "no")
    assert store.require(other).delivery_state is None


def test_python_m_gateway_runs_until_sigterm(aws: Aws, tmp_path: Path) -> None:
    environ = {
        **os.environ,
        "ICHSEG_GATEWAY_SPOOL_DIR": str(tmp_path / "spool"),
        "ICHSEG_BUCKET": aws.bucket,
        "ICHSEG_GATEWAY_HOST": "127.0.0.1",
    }
    # Port 0: the gateway binds a free port and announces it (a probed port could be taken first).
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--port", "0", "--ae-title", "CLIGW", "--allowed-ae", "SITEA"],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=_collect_lines, args=(process, lines), daemon=True)
    reader.start()
    try:
        announced = wait_until(lambda: _announced_port(lines), timeout=30, interval=0.1)
        echo = ["echoscu", "-aet", "SITEA", "-aec", "CLIGW", "127.0.0.1", str(announced)]
        wait_until(lambda: subprocess.run(echo, capture_output=True).returncode == 0, timeout=30, interval=0.3)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        reader.join(timeout=10)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert f"DICOM gateway CLIGW on 127.0.0.1:{announced}" in output


def _collect_lines(process: subprocess.Popen[str], lines: list[str]) -> None:
    """Append the process's output to ``lines`` as it comes, until it closes."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)


def _announced_port(lines: list[str]) -> int | None:
    """The port in the gateway's "DICOM gateway CLIGW on 127.0.0.1:PORT" line, once printed."""
    for line in list(lines):
        if found := re.search(r"DICOM gateway CLIGW on 127\.0\.0\.1:(\d+)", line):
            return int(found[1])
    return None


def test_a_configuration_mistake_is_one_line_and_status_2(tmp_path: Path) -> None:
    environ = {**os.environ, "ICHSEG_GATEWAY_SPOOL_DIR": str(tmp_path), "ICHSEG_BUCKET": "b"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--default-destination", "nonsense"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "error: destination 'nonsense' is not AE@host:port"


def test_the_command_line_flags_for_the_overlay_ris_ehr_and_status_page() -> None:
    import argparse

    from gateway.cli import add_arguments, settings_from
    from gateway.result_messages import FhirDestination, MllpDestination
    from gateway.settings import Destination

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--spool-dir", "/spool", "--status-port", "8080"),
            *("--destination", "CT1=PACS@10.0.0.5:104?overlay"),
            *("--hl7-destination", "CT1=RIS^STBRIGID@10.0.0.7:2575"),
            *("--fhir-destination", "CT1=https://ehr.example/fhir/r4"),
        ]
    )
    settings = settings_from(args, {})
    assert settings.status_port == 8080
    assert settings.destinations == {"CT1": Destination("PACS", "10.0.0.5", 104, overlay=True)}
    assert settings.hl7_destinations == {"CT1": MllpDestination("10.0.0.7", 2575, "RIS", "STBRIGID")}
    assert settings.fhir_destinations == {"CT1": FhirDestination("https://ehr.example/fhir/r4")}
