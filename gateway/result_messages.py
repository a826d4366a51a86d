"""ichseg's answer for the hospital's other systems: an HL7 v2 ORU^R01 over MLLP (the RIS and the
radiologist's worklist) and a FHIR R4 DiagnosticReport with its Observations (an EHR), per site.

The PACS gets the SEG, SR and overlay series (:mod:`gateway.delivery`); a worklist shows none of
them, so a positive scan would wait in the queue like any other. Each message carries the finding,
the scan's probability, the subtype probabilities, the volume, the accession number, the Study
Instance UID and a priority flag for positives (HL7: TQ1 priority S and OBX abnormal flag AA;
FHIR: the ``S`` ActPriority tag and interpretation AA), for the patient the source series names.

Patient identifiers go into these messages and nowhere else: they are read from the job's SR (which
copied them from the source instances) when a message is built, and never logged, stored on the
job's row or quoted in a failure's reason (a receiver's error text is not quoted either: it may echo
them). Both messages are the same on every build for a job (their ids come from the job id), so a
re-send after a lost answer is recognised: HL7's message control id, and the DiagnosticReport's
``identifier`` with a conditional create (``ifNoneExist``).

FHIR R4: the models are fhir.resources' R4B package, R4's technical correction, whose Patient,
Observation, DiagnosticReport and Bundle are R4's on the wire.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pydicom import dcmread

from ichseg.findings import Finding

MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"
"""MLLP's frame (HL7 v2 Transport Specification: MLLP, release 2): start block, end block + CR."""
MESSAGE_TIMEOUT_SECONDS = 30.0
MAX_ANSWER_BYTES = 1 << 20
ACCEPTED = frozenset({"AA", "CA"})
"""MSA-1 codes that take the message: application / commit accept."""
PRESENT, ABSENT = ("52101004", "Present"), ("272519000", "Absent")
INTRACRANIAL_HEMORRHAGE = ("1386000", "Intracranial hemorrhage")
SUBTYPE_SYSTEM = "urn:ichseg:subtype"
JOB_SYSTEM = "urn:ichseg:job"
DISCLAIMER = "ichseg is research software, not for clinical use: a radiologist reads every scan."


class MessageRefused(RuntimeError):
    """The receiver did not take the message (or could not be reached); the reason names the
    destination and the protocol's answer, never patient data. Retried like a DICOM delivery."""


@dataclass(frozen=True)
class ResultFacts:
    """What both messages say: the patient and study (from the SR), ichseg's answer (from the report)."""

    job_id: str
    patient_id: str
    patient_id_issuer: str
    patient_name: str
    """DICOM PN: ``Family^Given^Middle^Prefix^Suffix`` (HL7's XPN has the same component order)."""
    birth_date: str
    sex: str
    accession_number: str
    study_instance_uid: str
    finding: str
    probability: float
    subtypes: Mapping[str, float]
    volume_ml: float | None
    warnings: tuple[str, ...]
    model: str

    @property
    def positive(self) -> bool:
        return self.finding == Finding.HEMORRHAGE_DETECTED


def result_facts(job_id: str, named_by: bytes, report: Mapping[str, Any]) -> ResultFacts:
    """The facts of a DONE hospital job: the patient and study attributes of its SR (or SEG), its
    report's answer."""
    dataset = dcmread(io.BytesIO(named_by), stop_before_pixels=True)

    def text(keyword: str) -> str:
        return str(getattr(dataset, keyword, "") or "")

    model = report.get("model") or {}
    return ResultFacts(
        job_id=job_id,
        patient_id=text("PatientID"),
        patient_id_issuer=text("IssuerOfPatientID"),
        patient_name=text("PatientName"),
        birth_date=text("PatientBirthDate"),
        sex=text("PatientSex"),
        accession_number=text("AccessionNumber"),
        study_instance_uid=text("StudyInstanceUID"),
        finding=str(report["finding"]),
        probability=float(report["hemorrhage_probability"]),
        subtypes={str(k): float(v) for k, v in (report.get("subtypes") or {}).items()},
        volume_ml=None if report.get("volume_ml") is None else float(report["volume_ml"]),
        warnings=tuple(str(w.get("message", w.get("code", ""))) for w in report.get("warnings") or []),
        model=f"{model.get('name', 'ichseg')} {model.get('version', '')}".strip(),
    )


def message_control_id(job_id: str) -> str:
    """MSH-10 for the job's ORU: the same on every send (a receiver drops a repeat), 20 characters
    (HL7 2.5.1's ST length for it)."""
    return hashlib.sha256(f"ichseg|{job_id}".encode()).hexdigest()[:20].upper()


# ------------------------------------------------------------------------------------- HL7 v2


@dataclass(frozen=True)
class MllpDestination:
    """An HL7 v2 receiver (RIS, interface engine): ``host:port``, MLLP over TCP (inside the hospital's VPN)."""

    host: str
    port: int
    receiving_application: str = ""
    receiving_facility: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"hl7 {host}:{self.port}"


def oru_r01(facts: ResultFacts, sending_facility: str, destination: MllpDestination, now: datetime) -> str:
    """The job's ORU^R01 (HL7 2.5.1) as ER7 text, segments separated by CR."""
    from hl7apy.core import Message

    message = Message("ORU_R01", version="2.5.1")
    msh = message.msh
    msh.msh_3 = "ICHSEG"
    msh.msh_4 = _er7(sending_facility)
    msh.msh_5 = _er7(destination.receiving_application)
    msh.msh_6 = _er7(destination.receiving_facility)
    msh.msh_7 = now.strftime("%Y%m%d%H%M%S")
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = message_control_id(facts.job_id)
    msh.msh_11 = "P"
    msh.msh_12 = "2.5.1"
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").pid
    pid.pid_1 = "1"
    pid.pid_3 = f"{_er7(facts.patient_id)}^^^{_er7(facts.patient_id_issuer)}^MR"
    # DICOM PN's components (family, given, middle, prefix, suffix) are XPN's first five, in order.
    pid.pid_5 = "^".join(_er7(part) for part in facts.patient_name.split("=")[0].split("^")[:5])
    if re.fullmatch(r"\d{8}", facts.birth_date):
        pid.pid_7 = facts.birth_date
    if facts.sex in ("M", "F", "O"):
        pid.pid_8 = facts.sex
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.orc.orc_1 = "RE"  # observations to follow
    order.orc.orc_2 = _er7(facts.accession_number)
    order.orc.orc_3 = f"{facts.job_id}^ICHSEG"
    order.orc.orc_5 = "CM"
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_2 = _er7(facts.accession_number)
    obr.obr_3 = f"{facts.job_id}^ICHSEG"
    obr.obr_4 = "ICH^Intracranial hemorrhage triage^99ICHSEG"
    obr.obr_7 = msh.msh_7.value
    obr.obr_25 = "F"
    timing = order.add_group("ORU_R01_TIMING_QTY")
    timing.tq1.tq1_1 = "1"
    timing.tq1.tq1_9 = "S^Stat^HL70485" if facts.positive else "R^Routine^HL70485"
    values = _observations(facts)
    for number, (kind, code, value, units, flag) in enumerate(values, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(number)
        obx.obx_2 = kind
        obx.obx_3 = code
        obx.obx_5 = value
        if units:
            obx.obx_6 = units
        if flag:
            obx.obx_8 = flag
        obx.obx_11 = "F"
    note = order.add_group("ORU_R01_OBSERVATION").add_segment("NTE")
    note.nte_1 = "1"
    note.nte_3 = _er7(DISCLAIMER)
    return str(message.to_er7())


def _er7(text: str) -> str:
    """``text`` as one HL7 value: its delimiters escaped (``|`` -> ``\\F\\``...), by hl7apy."""
    from hl7apy import base_datatypes

    return str(base_datatypes.ST(text).to_er7()) if text else ""


def _observations(facts: ResultFacts) -> list[tuple[str, str, str, str, str]]:
    """(value type, code, value, units, abnormal flag) of each OBX, in order."""
    answer = PRESENT if facts.positive else ABSENT
    rows: list[tuple[str, str, str, str, str]] = [
        (
            "CWE",
            "^".join((*INTRACRANIAL_HEMORRHAGE, "SCT")),
            f"{answer[0]}^{answer[1]}^SCT",
            "",
            "AA" if facts.positive else "N",
        ),
        ("NM", "122157^Probability^DCM", f"{facts.probability:.4f}", "1^^UCUM", ""),
    ]
    if facts.volume_ml is not None:
        rows.append(("NM", "118565006^Volume^SCT", f"{facts.volume_ml:.2f}", "mL^milliliter^UCUM", ""))
    for name, probability in sorted(facts.subtypes.items(), key=lambda item: -item[1]):
        rows.append(("NM", f"{name}^{name} probability^99ICHSEG", f"{probability:.4f}", "1^^UCUM", ""))
    rows.append(("ST", "110180^Study Instance UID^DCM", _er7(facts.study_instance_uid), "", ""))
    rows += [("TX", "WARN^Input warning^99ICHSEG", _er7(w), "", "") for w in facts.warnings]
    rows.append(("ST", "MODEL^Algorithm^99ICHSEG", _er7(facts.model), "", ""))
    return rows


def send_mllp(destination: MllpDestination, message: str, timeout: float = MESSAGE_TIMEOUT_SECONDS) -> None:
    """Send one message over MLLP and read its ACK; :class:`MessageRefused` unless MSA-1 accepts it
    and MSA-2 is its control id. (python-hl7's client has no timeouts: a receiver that never answers
    would hold the delivery thread for ever; this one gives up after ``timeout``.)"""
    from hl7apy.parser import parse_message

    control_id = message.split("\r", 1)[0].split("|")[9]
    try:
        with socket.create_connection((destination.host, destination.port), timeout=timeout) as connection:
            connection.sendall(MLLP_START + message.encode("utf-8") + MLLP_END)
            answer = b""
            while MLLP_END not in answer:
                chunk = connection.recv(65536)
                if not chunk or len(answer) > MAX_ANSWER_BYTES:
                    raise MessageRefused(f"{destination} closed the connection without an acknowledgement")
                answer += chunk
    except TimeoutError:
        raise MessageRefused(f"{destination} did not acknowledge within {timeout:.0f} s") from None
    except OSError as exc:
        raise MessageRefused(f"{destination} not reachable ({type(exc).__name__})") from None
    framed = answer.split(MLLP_START, 1)[-1].split(MLLP_END, 1)[0].decode("utf-8", errors="replace")
    try:
        ack = parse_message(framed.replace("\n", "\r"), find_groups=False)
        code, acknowledged = str(ack.msa.msa_1.value), str(ack.msa.msa_2.value)
    except Exception:  # not HL7, or no MSA: the receiver's words are not quoted (they may echo the patient)
        raise MessageRefused(f"{destination} answered something that is not an HL7 acknowledgement") from None
    if acknowledged != control_id:
        raise MessageRefused(f"{destination} acknowledged another message ({acknowledged!r})")
    if code not in ACCEPTED:
        raise MessageRefused(f"{destination} answered {code} (the message was not accepted)")


# ------------------------------------------------------------------------------------- FHIR R4


@dataclass(frozen=True)
class FhirDestination:
    """A FHIR R4 server's base URL (``https://...``): the transaction is POSTed to it."""

    base_url: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"FHIR base URL {self.base_url!r} is not an https:// URL")

    def __str__(self) -> str:
        return f"fhir {self.base_url}"


def diagnostic_report_bundle(facts: ResultFacts, site: str, now: datetime) -> dict[str, Any]:
    """The job's FHIR transaction: the Patient (created only if no patient has its identifier), one
    Observation per value, and the DiagnosticReport over them (created only once per job)."""
    from fhir.resources.R4B.bundle import Bundle

    issued = now.astimezone(UTC).isoformat(timespec="seconds")
    mrn_system = f"urn:ichseg:site:{site}:patient-id" + (
        f":{facts.patient_id_issuer}" if facts.patient_id_issuer else ""
    )
    report_id = hashlib.sha256(f"ichseg|{facts.job_id}".encode()).hexdigest()
    patient_url, report_url = f"urn:uuid:{_uuid(report_id, 'patient')}", f"urn:uuid:{_uuid(report_id, 'report')}"
    family, _, rest = facts.patient_name.partition("^")
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": mrn_system, "value": facts.patient_id}],
        "name": [{"family": family, "given": [g for g in rest.split("^")[:2] if g]}] if family else [],
        "gender": {"M": "male", "F": "female", "O": "other"}.get(facts.sex, "unknown"),
    }
    if re.fullmatch(r"\d{8}", facts.birth_date):
        patient["birthDate"] = f"{facts.birth_date[:4]}-{facts.birth_date[4:6]}-{facts.birth_date[6:]}"
    interpretation = [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": "AA" if facts.positive else "N",
                }
            ]
        }
    ]
    answer = PRESENT if facts.positive else ABSENT
    observations: list[dict[str, Any]] = [
        {
            "code": _snomed(*INTRACRANIAL_HEMORRHAGE),
            "valueCodeableConcept": _snomed(*answer),
            "interpretation": interpretation,
        },
        {
            "code": _coding("http://dicom.nema.org/resources/ontology/DCM", "122157", "Probability"),
            "valueQuantity": _ratio(facts.probability),
        },
    ]
    if facts.volume_ml is not None:
        observations.append(
            {
                "code": _snomed("118565006", "Volume"),
                "valueQuantity": {
                    "value": round(facts.volume_ml, 2),
                    "unit": "mL",
                    "system": "http://unitsofmeasure.org",
                    "code": "mL",
                },
            }
        )
    for name, probability in sorted(facts.subtypes.items(), key=lambda item: -item[1]):
        observations.append(
            {"code": _coding(SUBTYPE_SYSTEM, name, f"{name} probability"), "valueQuantity": _ratio(probability)}
        )
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": patient,
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": _identifier_search(mrn_system, facts.patient_id),
            },
        }
    ]
    results = []
    for index, observation in enumerate(observations):
        url = f"urn:uuid:{_uuid(report_id, f'observation-{index}')}"
        results.append({"reference": url})
        resource = {
            "resourceType": "Observation",
            "identifier": [{"system": JOB_SYSTEM, "value": f"{facts.job_id}/{index}"}],
            "status": "final",
            "category": [_coding("http://terminology.hl7.org/CodeSystem/observation-category", "imaging", "Imaging")],
            "subject": {"reference": patient_url},
            "issued": issued,
            "device": {"display": facts.model},
            **observation,
        }
        entries.append(
            {
                "fullUrl": url,
                "resource": resource,
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": _identifier_search(JOB_SYSTEM, f"{facts.job_id}/{index}"),
                },
            }
        )
    report = {
        "resourceType": "DiagnosticReport",
        "meta": {
            "tag": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority",
                    "code": "S" if facts.positive else "R",
                    "display": "stat" if facts.positive else "routine",
                }
            ]
        },
        "identifier": [{"system": JOB_SYSTEM, "value": facts.job_id}],
        "basedOn": [
            {
                "type": "ServiceRequest",
                "identifier": {
                    "type": _coding("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN", "Accession ID"),
                    "value": facts.accession_number,
                },
            }
        ],
        "status": "final",
        "category": [_coding("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD", "Radiology")],
        "code": _coding("urn:ichseg", "ich-triage", "Intracranial hemorrhage triage (ichseg)"),
        "subject": {"reference": patient_url},
        "issued": issued,
        "imagingStudy": [
            {
                "type": "ImagingStudy",
                "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{facts.study_instance_uid}"},
            }
        ],
        "result": results,
        "conclusion": f"{facts.finding}, probability {facts.probability:.2f}. {DISCLAIMER}",
        "conclusionCode": [_snomed(*answer)],
    }
    entries.append(
        {
            "fullUrl": report_url,
            "resource": report,
            "request": {
                "method": "POST",
                "url": "DiagnosticReport",
                "ifNoneExist": _identifier_search(JOB_SYSTEM, facts.job_id),
            },
        }
    )
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    # Validated against the R4(B) models: a malformed resource fails here, not at the EHR.
    return dict(json.loads(Bundle.model_validate(bundle).model_dump_json(exclude_none=True)))


def post_fhir(
    destination: FhirDestination,
    bundle: Mapping[str, Any],
    ca_file: Path | None = None,
    timeout: float = MESSAGE_TIMEOUT_SECONDS,
) -> None:
    """POST the transaction to the server's base URL, its certificate checked against ``ca_file``
    (else the system trust store); :class:`MessageRefused` unless it answers 200 with a
    transaction-response whose every entry is 200 or 201."""
    import requests

    try:
        answer = requests.post(
            destination.base_url,
            data=json.dumps(bundle).encode(),
            headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
            timeout=timeout,
            verify=str(ca_file) if ca_file else True,
        )
    except requests.exceptions.SSLError:
        raise MessageRefused(f"{destination}: TLS failed (the server's certificate is not trusted?)") from None
    except requests.RequestException as exc:
        raise MessageRefused(f"{destination} not reachable ({type(exc).__name__})") from None
    if answer.status_code != 200:
        raise MessageRefused(f"{destination} answered HTTP {answer.status_code}")
    try:
        statuses = [str(entry["response"]["status"]).split()[0] for entry in answer.json()["entry"]]
    except (ValueError, KeyError, TypeError, IndexError):
        raise MessageRefused(f"{destination} answered something that is not a transaction-response Bundle") from None
    refused = [status for status in statuses if status not in ("200", "201")]
    if refused or len(statuses) != len(bundle["entry"]):
        raise MessageRefused(f"{destination} did not take every entry (statuses {', '.join(statuses)})")


def _identifier_search(system: str, value: str) -> str:
    """``identifier=system|value`` as a conditional create's query, each part URL-encoded."""
    return f"identifier={quote(system, safe=':')}|{quote(value, safe='')}"


def _uuid(seed: str, part: str) -> str:
    digest = hashlib.sha256(f"{seed}|{part}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-a{digest[17:20]}-{digest[20:32]}"


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _snomed(code: str, display: str) -> dict[str, Any]:
    return _coding("http://snomed.info/sct", code, display)


def _ratio(value: float) -> dict[str, Any]:
    return {"value": round(value, 4), "unit": "probability", "system": "http://unitsofmeasure.org", "code": "1"}
