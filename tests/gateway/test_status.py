"""The gateway's status page for the hospital: recent studies by hashed UID, where they stand, their
job and delivery; no patient data; the hospital's network only; read-only."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from gateway.service import GatewayService
from gateway.settings import GatewaySettings, SettingsError
from gateway.spool import uid_tag
from ichseg.pipeline import keys
from ichseg.pipeline.delivery_record import DeliveryRecords
from ichseg.pipeline.jobs import JobSource, JobStore
from tests.gateway.conftest import Aws, RecordingMetrics, ct_series, storescu, wait_until
from tests.patient_identifiers import identifier_leaks


@pytest.fixture
def gateway(make_settings: Callable[..., GatewaySettings], metrics: RecordingMetrics) -> Iterator[GatewayService]:
    with GatewayService(make_settings(status_port=0), metrics=metrics) as service:
        yield service


def _url(gateway: GatewayService, path: str) -> str:
    assert gateway.status is not None, "the status page is not on"
    host, port = gateway.status.address
    return f"http://{host}:{port}{path}"


def test_an_uploaded_study_shows_with_its_job_and_delivery_and_no_patient_data(
    gateway: GatewayService, aws: Aws, tmp_path: Path
) -> None:
    files = ct_series(tmp_path / "series", 3)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    storescu(gateway.address, files, calling="SITEA")
    [key] = wait_until(aws.ingest_keys)
    job_id = keys.ingest_job_id(key, "")
    [study] = wait_until(
        lambda: [
            s
            for s in requests.get(_url(gateway, "/status.json"), timeout=10).json()["studies"]
            if s["stage"] == "uploaded"
        ]
    )
    assert study == {
        "study": uid_tag(study_uid),
        "site": "SITEA",
        "stage": "uploaded",
        "series": 1,
        "instances": 3,
        "updated_at": study["updated_at"],
        "job_id": job_id,
        "job_state": None,  # no pipeline here: the split has not made the job's row yet
        "error_code": None,
        "delivery_state": None,
        "delivery_attempts": 0,
        "delivered": [],
        "delivery_reason": None,
    }

    # The pipeline made the job DONE, and the PACS refused the first delivery: the page says so.
    store = JobStore(aws.dynamodb, aws.table)
    store.create(job_id, JobSource.INGEST, None, key, 900)
    store.mark_split(job_id, 1, 3, {})
    store.mark_assembling(job_id)
    store.mark_done(job_id, {"seg": "results/x/seg.dcm", "sr": "results/x/sr.dcm"}, {}, None, None)
    DeliveryRecords(store).record_failure(job_id, "sr: PACS@10.0.0.5:104 answered status 0xA700 (attempt 1)", {"seg"})
    document = requests.get(_url(gateway, "/status.json"), timeout=10).json()
    [study] = document["studies"]
    assert (study["job_state"], study["delivery_state"], study["delivery_attempts"], study["delivered"]) == (
        "DONE",
        "PENDING",
        1,
        ["seg"],
    )
    assert study["delivery_reason"] == "sr: PACS@10.0.0.5:104 answered status 0xA700 (attempt 1)"
    assert document["gateway"] == {
        "ae_title": "ICHSEG",
        "dicom_port": gateway.address[1],
        "tls": False,
        "delivery": False,
    }

    page = requests.get(_url(gateway, "/"), timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert uid_tag(study_uid) in page.text and "0xA700" in page.text
    # No patient data anywhere: not the identifiers every field of the instances carries, nor a UID.
    for text in (page.text, requests.get(_url(gateway, "/status.json"), timeout=10).text):
        assert identifier_leaks(text) == []
        assert study_uid not in text


def test_a_study_being_received_shows_before_it_is_uploaded(
    make_settings: Callable[..., GatewaySettings], metrics: RecordingMetrics, tmp_path: Path
) -> None:
    # A long idle time: the study stays "receiving" for the whole test.
    with GatewayService(make_settings(status_port=0, idle_seconds=600), metrics=metrics) as gateway:
        storescu(gateway.address, ct_series(tmp_path / "series", 2), calling="SITEB")
        [study] = requests.get(_url(gateway, "/status.json"), timeout=10).json()["studies"]
    assert (study["site"], study["stage"], study["instances"], study["job_id"]) == ("SITEB", "receiving", 2, None)


def test_only_the_hospital_network_gets_an_answer_and_only_to_get(
    make_settings: Callable[..., GatewaySettings], metrics: RecordingMetrics
) -> None:
    settings = make_settings(status_port=0, status_allowed_networks=(ipaddress.ip_network("10.99.0.0/16"),))
    with GatewayService(settings, metrics=metrics) as gateway:
        refused = requests.get(_url(gateway, "/status.json"), timeout=10)  # from 127.0.0.1: not listed
        assert refused.status_code == 403 and "hospital network" in refused.text
    with GatewayService(make_settings(status_port=0), metrics=metrics) as gateway:
        assert requests.get(_url(gateway, "/healthz"), timeout=10).text == "ok"
        posted = requests.post(_url(gateway, "/status.json"), data=b"{}", timeout=10)
        assert posted.status_code == 405 and posted.headers["Allow"] == "GET"
        assert requests.get(_url(gateway, "/admin"), timeout=10).status_code == 404


def test_the_status_page_is_off_unless_a_port_is_set_and_its_settings_are_checked(
    make_settings: Callable[..., GatewaySettings], metrics: RecordingMetrics
) -> None:
    with GatewayService(make_settings(), metrics=metrics) as gateway:
        assert gateway.status is None
    settings = GatewaySettings.from_env(
        {
            "ICHSEG_GATEWAY_SPOOL_DIR": "/spool",
            "ICHSEG_GATEWAY_STATUS_PORT": "8080",
            "ICHSEG_GATEWAY_STATUS_ALLOWED_NETWORKS": "10.20.0.0/16, fd00::/8",
        }
    )
    assert settings.status_port == 8080
    assert settings.status_allowed_networks == (ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("fd00::/8"))
    assert ipaddress.ip_address("192.168.1.9") in GatewaySettings(spool_dir=Path("/s")).status_allowed_networks[2]
    with pytest.raises(SettingsError, match=r"'10\.20\.0/99' is not a network"):
        GatewaySettings.from_env(
            {"ICHSEG_GATEWAY_SPOOL_DIR": "/s", "ICHSEG_GATEWAY_STATUS_ALLOWED_NETWORKS": "10.20.0/99"}
        )
    with pytest.raises(SettingsError, match="status port 70000 is out of range"):
        GatewaySettings(spool_dir=Path("/s"), status_port=70000)
