"""ichseg's answer for the RIS and the EHR: the exact HL7 ORU^R01 and FHIR transaction, sent as parts of
the delivery to a real MLLP listener (hl7apy's server) and a local HTTPS FHIR receiver; ACK and NAK,
an outage, a lost answer, a re-sent delivery message; patient identifiers only in the messages."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.parser import parse_message
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from gateway.delivery import Deliverer, DeliveryOutcome
from gateway.result_messages import (
    FhirDestination,
    MllpDestination,
    ResultFacts,
    diagnostic_report_bundle,
    message_control_id,
    oru_r01,
)
from gateway.settings import GatewaySettings, SettingsError, parse_hl7_destination, per_site
from ichseg.pipeline import keys
from ichseg.pipeline.jobs import DeliveryState, Job, JobStore
from tests.gateway.conftest import Aws, RecordingMetrics, free_port
from tests.gateway.receivers import Ehr, Ris
from tests.gateway.test_delivery import SITE, Pacs, job_in
from tests.patient_identifiers import PATIENT_IDENTIFIERS, identifier_leaks
from tests.scan_fixtures import dicom_bytes, new_instance

NOW = datetime(2026, 12, 7, 10, 30, 0, tzinfo=UTC)
FACTS = ResultFacts(
    job_id="ingest-0123456789abcdef01234567",
    patient_id="MRN-QZ44871093",
    patient_id_issuer="STBRIGID",
    patient_name="Quetzal^Marisol^Anneliese",
    birth_date="19560317",
    sex="F",
    accession_number="ACC-QZ77120594",
    study_instance_uid="1.2.826.0.1.3680043.8.498.1",
    finding="Hemorrhage detected",
    probability=0.9731,
    subtypes={"subdural": 0.81, "epidural": 0.12},
    volume_ml=12.345,
    warnings=("The scan has 6 slices; the model reads each slice with 2 neighbours.",),
    model="ichseg-unet 0.2.0",
)
REPORT = {
    "finding": "Hemorrhage detected",
    "hemorrhage_probability": 0.9731,
    "subtypes": {"subdural": 0.81, "epidural": 0.12},
    "volume_ml": 12.345,
    "warnings": [],
    "model": {"name": "ichseg-unet", "version": "0.2.0"},
}


def test_the_oru_r01_is_exactly_this() -> None:
    message = oru_r01(FACTS, "ICHSEG", MllpDestination("ris.example", 2575, "RIS", "STBRIGID"), NOW)
    assert message.split("\r") == [
        f"MSH|^~\\&|ICHSEG|ICHSEG|RIS|STBRIGID|20261207103000||ORU^R01^ORU_R01|{message_control_id(FACTS.job_id)}|P|2.5.1",
        "PID|1||MRN-QZ44871093^^^STBRIGID^MR||Quetzal^Marisol^Anneliese||19560317|F",
        "ORC|RE|ACC-QZ77120594|ingest-0123456789abcdef01234567^ICHSEG||CM",
        "OBR|1|ACC-QZ77120594|ingest-0123456789abcdef01234567^ICHSEG|ICH^Intracranial hemorrhage triage^99ICHSEG|||"
        "20261207103000||||||||||||||||||F",
        "TQ1|1||||||||S^Stat^HL70485",  # the priority flag of a positive
        "OBX|1|CWE|1386000^Intracranial hemorrhage^SCT||52101004^Present^SCT|||AA|||F",
        "OBX|2|NM|122157^Probability^DCM||0.9731|1^^UCUM|||||F",
        "OBX|3|NM|118565006^Volume^SCT||12.35|mL^milliliter^UCUM|||||F",
        "OBX|4|NM|subdural^subdural probability^99ICHSEG||0.8100|1^^UCUM|||||F",
        "OBX|5|NM|epidural^epidural probability^99ICHSEG||0.1200|1^^UCUM|||||F",
        "OBX|6|ST|110180^Study Instance UID^DCM||1.2.826.0.1.3680043.8.498.1||||||F",
        "OBX|7|TX|WARN^Input warning^99ICHSEG||The scan has 6 slices; the model reads each slice with 2 neighbours."
        "||||||F",
        "OBX|8|ST|MODEL^Algorithm^99ICHSEG||ichseg-unet 0.2.0||||||F",
        "NTE|1||ichseg is research software, not for clinical use: a radiologist reads every scan.",
    ]
    assert parse_message(message).validate()  # hl7apy's 2.5.1 structure and datatypes
    # A normal scan is routine, its finding absent and not flagged; delimiters in a value are escaped.
    normal = ResultFacts(**{**FACTS.__dict__, "finding": "Normal", "patient_name": "O|Brien^Se&n"})
    segments = oru_r01(normal, "ICHSEG", MllpDestination("ris", 2575), NOW).split("\r")
    assert "TQ1|1||||||||R^Routine^HL70485" in segments
    assert "OBX|1|CWE|1386000^Intracranial hemorrhage^SCT||272519000^Absent^SCT|||N|||F" in segments
    assert "PID|1||MRN-QZ44871093^^^STBRIGID^MR||O\\F\\Brien^Se\\T\\n||19560317|F" in segments


def test_the_fhir_transaction_is_valid_r4_and_says_the_same() -> None:
    bundle = diagnostic_report_bundle(FACTS, SITE, NOW)
    Bundle.model_validate(bundle)
    kinds = [entry["resource"]["resourceType"] for entry in bundle["entry"]]
    assert kinds == ["Patient", *["Observation"] * 5, "DiagnosticReport"]
    patient, *observations, report = (entry["resource"] for entry in bundle["entry"])
    assert patient["identifier"] == [
        {"system": f"urn:ichseg:site:{SITE}:patient-id:STBRIGID", "value": "MRN-QZ44871093"}
    ]
    assert (patient["name"], patient["birthDate"], patient["gender"]) == (
        [{"family": "Quetzal", "given": ["Marisol", "Anneliese"]}],
        "1956-03-17",
        "female",
    )
    assert report["identifier"] == [{"system": "urn:ichseg:job", "value": FACTS.job_id}]
    assert report["meta"]["tag"][0]["code"] == "S"  # stat: a positive
    assert report["basedOn"][0]["identifier"]["value"] == "ACC-QZ77120594"
    assert report["imagingStudy"][0]["identifier"]["value"] == "urn:oid:1.2.826.0.1.3680043.8.498.1"
    assert report["result"] == [{"reference": entry["fullUrl"]} for entry in bundle["entry"][1:-1]]
    values = {o["code"]["coding"][0]["code"]: o.get("valueQuantity", {}).get("value") for o in observations}
    assert values == {"1386000": None, "122157": 0.9731, "118565006": 12.35, "subdural": 0.81, "epidural": 0.12}
    assert observations[0]["interpretation"][0]["coding"][0]["code"] == "AA"
    # Conditional creates: a re-sent transaction finds what the first made (the same bytes each time).
    searches = [entry["request"]["ifNoneExist"] for entry in bundle["entry"]]
    assert searches[0] == f"identifier=urn:ichseg:site:{SITE}:patient-id:STBRIGID|MRN-QZ44871093"
    assert searches[-1] == f"identifier=urn:ichseg:job|{FACTS.job_id}"
    assert diagnostic_report_bundle(FACTS, SITE, NOW) == bundle


def test_message_destinations_are_per_site_and_checked() -> None:
    assert per_site("CT1=RIS^STBRIGID@10.0.0.7:2575,CT2=10.0.0.8:2575", parse_hl7_destination, "host:port") == {
        "CT1": MllpDestination("10.0.0.7", 2575, "RIS", "STBRIGID"),
        "CT2": MllpDestination("10.0.0.8", 2575),
    }
    settings = GatewaySettings.from_env(
        {
            "ICHSEG_GATEWAY_SPOOL_DIR": "/s",
            "ICHSEG_GATEWAY_FHIR_DESTINATIONS": "CT1=https://ehr.example/fhir/r4",
            "ICHSEG_GATEWAY_FHIR_CA": "/etc/ichseg/ehr-ca.pem",
        }
    )
    assert settings.fhir_destinations == {"CT1": FhirDestination("https://ehr.example/fhir/r4")}
    assert settings.fhir_ca == Path("/etc/ichseg/ehr-ca.pem")
    with pytest.raises(SettingsError, match="is not an https:// URL"):
        GatewaySettings.from_env({"ICHSEG_GATEWAY_SPOOL_DIR": "/s", "ICHSEG_GATEWAY_FHIR_DESTINATIONS": "CT1=http://x"})
    with pytest.raises(SettingsError, match="is not \\[APPLICATION\\[\\^FACILITY\\]@\\]host:port"):
        GatewaySettings.from_env({"ICHSEG_GATEWAY_SPOOL_DIR": "/s", "ICHSEG_GATEWAY_HL7_DESTINATIONS": "CT1=ris"})


# ------------------------------------------------------------------------------ the receivers


@pytest.fixture
def ris() -> Iterator[Ris]:
    receiver = Ris()
    yield receiver
    receiver.stop()


@pytest.fixture
def ehr(tmp_path: Path) -> Iterator[Ehr]:
    receiver = Ehr(tmp_path)
    yield receiver
    receiver.stop()


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Pacs]:
    started = Pacs(tmp_path / "pacs", free_port()).start()
    yield started
    started.stop()


def hospital_job(aws: Aws, store: JobStore) -> Job:
    """A DONE hospital job whose SR names the test patient, with its report."""
    job = job_in(aws, store, done=False)
    prefix = keys.results_prefix(job.job_id)
    sr = new_instance(Comprehensive3DSRStorage, "SR")
    for keyword, value in PATIENT_IDENTIFIERS.items():
        setattr(sr, keyword, value)
    seg = new_instance(SegmentationStorage, "SEG")
    results = {"seg": f"{prefix}seg.dcm", "sr": f"{prefix}sr.dcm", "report": f"{prefix}report.json"}
    for name, body in {"seg": dicom_bytes(seg), "sr": dicom_bytes(sr), "report": json.dumps(REPORT).encode()}.items():
        aws.s3.put_object(Bucket=aws.bucket, Key=results[name], Body=body)
    store.mark_done(job.job_id, results, {"finding": REPORT["finding"]}, None, None)
    return store.require(job.job_id)


def test_the_ris_and_the_ehr_hear_of_a_positive_through_nak_outage_and_lost_answer_once_each(
    make_settings: Callable[..., GatewaySettings],
    aws: Aws,
    pacs: Pacs,
    ris: Ris,
    ehr: Ehr,
    metrics: RecordingMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    store = JobStore(aws.dynamodb, aws.table)
    job = hospital_job(aws, store)
    # A port bound and never listened on: connecting is refused, and no other process can take it.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    unreachable = FhirDestination(f"https://127.0.0.1:{closed.getsockname()[1]}/fhir")
    body = json.dumps({"job_id": job.job_id})

    def deliverer(fhir: FhirDestination) -> Deliverer:
        settings = make_settings(
            delivery_queue_url=aws.queue_url,
            destinations={SITE: pacs.destination},
            hl7_destinations={SITE: ris.destination},
            fhir_destinations={SITE: fhir},
            fhir_ca=ehr.ca.path,
            delivery_attempts=10,
        )
        return Deliverer(settings, store, aws.s3, aws.sqs, metrics)

    # 1. The RIS answers AE (a NAK), the EHR is down: the PACS gets its objects all the same.
    ris.answers = ["AE"]
    reads: list[str] = []

    def count_read(params: dict[str, Any], **_: Any) -> None:
        reads.append(params["Key"])

    aws.s3.meta.events.register("before-parameter-build.s3.GetObject", count_read)
    try:
        first = deliverer(unreachable).handle(body, 1)
    finally:
        aws.s3.meta.events.unregister("before-parameter-build.s3.GetObject", count_read)
    assert sorted(reads) == sorted(job.results.values())  # the SR serves the PACS and both messages: read once
    assert first.outcome == DeliveryOutcome.RETRY
    row = store.require(job.job_id)
    assert (row.delivery_state, row.delivered_objects) == (DeliveryState.PENDING, {"seg", "sr"})
    assert f"{ris.destination} answered AE (the message was not accepted)" in str(row.delivery_reason)
    assert f"{unreachable} not reachable" in str(row.delivery_reason)
    # 2. The RIS takes it; the EHR stores the transaction but its answer is lost.
    ehr.lose_answers = 1
    second = deliverer(ehr.destination).handle(body, 2)
    assert second.outcome == DeliveryOutcome.RETRY
    assert store.require(job.job_id).delivered_objects == {"seg", "sr", "hl7"}
    # 3. Sent again: the EHR finds the job's report and patient and creates nothing new.
    assert deliverer(ehr.destination).handle(body, 3).outcome == DeliveryOutcome.DELIVERED
    row = store.require(job.job_id)
    assert (row.delivery_state, row.delivered_objects) == (DeliveryState.DELIVERED, {"seg", "sr", "hl7", "fhir"})
    # 4. A duplicate of the delivery message: nothing is sent anywhere again.
    assert deliverer(ehr.destination).handle(body, 1).outcome == DeliveryOutcome.DUPLICATE

    assert len(ris.received) == 2 and ris.received[0] == ris.received[1]  # the NAKed one, then the same again
    assert ehr.kinds() == ["Patient", *["Observation"] * 5, "DiagnosticReport"]
    assert pacs.received() == ["SG", "SR3"]
    oru = ris.received[-1].split("\r")
    assert oru[1].startswith("PID|1||MRN-QZ44871093^^^") and "TQ1|1||||||||S^Stat^HL70485" in oru
    assert any(seg.startswith("OBR|1|ACC-QZ77120594|") for seg in oru)
    # The identifiers travel in the messages only: not in a log line, the job's row or a reason.
    closed.close()
    item = aws.dynamodb.get_item(TableName=aws.table, Key={"job_id": {"S": job.job_id}})["Item"]
    assert identifier_leaks(caplog.text + json.dumps(item)) == []
