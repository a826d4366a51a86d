"""Results back to the hospital: a DONE hospital job's SEG and SR (and, for a destination with
``?overlay``, its overlay series), by C-STORE, to its site's PACS; and, where the site has them,
an HL7 ORU^R01 to its RIS and a FHIR DiagnosticReport to its EHR (:mod:`gateway.result_messages`).
Each of these is a part of the delivery: a part done is never sent again, a failed one is retried
with the others, and one failing does not hold back the rest (a PACS outage must not keep a
positive off the worklist).

The assemble stage sends ``{"job_id": ...}`` to the delivery queue just before it marks the job DONE
(so a crash cannot lose the message). For each message this module reads the job and decides:

- unknown job, or FAILED in the pipeline: nothing to send; the message is deleted;
- not DONE yet (the message overtook the DONE write): left on the queue, back in a few seconds;
- DONE and already DELIVERED (a duplicate message), or without DICOM results (a router upload of
  a NIfTI or a video): deleted;
- DONE: the result objects not yet stored are C-STOREd over one new association; all stored ->
  DELIVERED, message deleted; otherwise the attempt and its reason are recorded (PENDING) and the
  message comes back after a backoff that doubles per receive; on the queue's last receive the
  delivery is FAILED, counted as ``DeliveryFailures`` (an alarm) and the message goes on to the
  dead-letter queue. A site without a destination is FAILED at once (retrying cannot help).

A ``?tls`` destination is reached over DICOM TLS (TLS 1.2 or later, the PACS's certificate checked
against ``delivery_tls_ca`` (a file or PEM text) or the system trust store and its name against the
destination's host; the gateway's own certificate, if it has one, offered for mutual TLS). A TLS failure (untrusted
certificate, a name mismatch, our certificate refused) is a failed attempt like any other, its
reason saying what the TLS layer said.

Reasons name destinations, result names and DICOM statuses only, never patient data.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import ssl
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache, partial
from typing import Any

from botocore.exceptions import ClientError
from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.application_entity import ichseg_ae
from gateway.settings import Destination, GatewaySettings, SettingsError, load_pem_certificate
from ichseg.pipeline import keys
from ichseg.pipeline.context import MetricsSink
from ichseg.pipeline.delivery_record import DeliveryRecords
from ichseg.pipeline.jobs import DeliveryState, Job, JobSource, JobState, JobStore

log = logging.getLogger("gateway.delivery")

DELIVERED_NAMES = ("seg", "sr")
"""The job's results that go back to every PACS (names in :attr:`Job.results`), in sending order."""
HL7, FHIR = "hl7", "fhir"
"""The message parts of a delivery (names in :attr:`Job.delivered_objects` beside the DICOM ones)."""
OVERLAY_SERIES = "overlay_series"
"""The result a ``?overlay`` destination gets after them: a zip of secondary-capture instances, each
C-STOREd on its own; it counts as delivered once the PACS stored every one of them."""
MAX_VISIBILITY_SECONDS = 43_200
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
"""Success, and the storage warnings (coerced / elements discarded / does not match): stored all the same."""


class DeliveryOutcome(StrEnum):
    """What one receive of a delivery message did."""

    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    """Already DELIVERED (or FAILED) by an earlier message: deleted."""
    NOT_DONE = "not_done"
    """The job is not DONE yet: the message comes back in a few seconds."""
    NOTHING_TO_SEND = "nothing_to_send"
    """Unknown job, FAILED in the pipeline, not a hospital job, or no DICOM results: deleted, nothing sent."""
    RETRY = "retry"
    """The PACS did not store everything: recorded, the message comes back after a backoff."""
    GAVE_UP = "gave_up"
    """Last receive, or no destination for the site: delivery FAILED, counted."""


@dataclass(frozen=True)
class Decision:
    """The outcome and what happens to the message: deleted, or visible again after ``visibility``
    seconds (after the last receive: 0, and the queue's next receive moves it to the dead-letter queue)."""

    outcome: DeliveryOutcome
    delete: bool
    visibility: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class StoreResult:
    """What one association stored (result names) and, if not everything, why not."""

    stored: frozenset[str]
    failure: str | None


def parse_message(body: str) -> str:
    """The job id of a delivery message; ValueError if the body is not ``{"job_id": "<id>"}``."""
    try:
        job_id = json.loads(body).get("job_id")
    except (ValueError, AttributeError):
        raise ValueError("delivery message is not a JSON object") from None
    if not isinstance(job_id, str) or not job_id or len(job_id) > 128:
        raise ValueError("delivery message has no job_id")
    return job_id


def delivery_tls_context(settings: GatewaySettings) -> ssl.SSLContext:
    """The client side of DICOM TLS to ``?tls`` destinations: TLS 1.2 or later, the PACS's certificate
    verified against ``delivery_tls_ca`` (else the system trust store) and its host name checked; the
    gateway's own certificate and key presented when it has them. Either may be files or PEM text
    (``delivery_tls_ca_pem``, ``tls_certificate_pem``/``tls_key_pem``). :class:`SettingsError` if one
    cannot be loaded."""
    try:
        ca = settings.delivery_tls_ca
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None, cadata=settings.delivery_tls_ca_pem
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.tls_certificate is not None and settings.tls_key is not None:
            context.load_cert_chain(settings.tls_certificate, settings.tls_key)
        elif settings.tls_certificate_pem is not None and settings.tls_key_pem is not None:
            load_pem_certificate(context, settings.tls_certificate_pem, settings.tls_key_pem)
    except SettingsError:
        raise
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise SettingsError(f"delivery DICOM TLS: cannot load the CA bundle or our certificate: {exc}") from None
    return context


def tls_problem(
    destination: Destination, context: ssl.SSLContext, timeout: float = 10.0, verdict_seconds: float = 5.0
) -> str | None:
    """Why a TLS connection to ``destination`` fails, in the TLS layer's words; None if it does not, or
    if the failure is not TLS's (refused, unreachable). pynetdicom logs a failed handshake but reports only
    "not established", so a failed association to a ``?tls`` destination is diagnosed with this one probe."""
    try:
        with (
            socket.create_connection((destination.host, destination.port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=destination.host) as tls,
        ):
            # In TLS 1.3 the server's verdict on our certificate arrives only after the handshake; a
            # busy PACS may take seconds to send it (the probe runs only after a failed association).
            tls.settimeout(verdict_seconds)
            try:
                if tls.recv(1) == b"":
                    return "the PACS closed the connection right after the TLS handshake"
            except TimeoutError:
                pass
    except ssl.SSLCertVerificationError as exc:
        return f"the PACS's certificate failed verification: {exc.verify_message}"
    except ssl.SSLError as exc:
        hint = " (is this port the PACS's DICOM TLS port?)" if exc.reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS handshake failed: {exc.reason or exc}{hint}"
    except OSError:
        return None
    return None


def store_objects(
    calling_ae: str,
    destination: Destination,
    objects: Mapping[str, bytes],
    tls_context: ssl.SSLContext | None = None,
) -> StoreResult:
    """C-STORE each object (name -> DICOM file bytes) over one new association to ``destination``
    (over DICOM TLS with ``tls_context`` if the destination is ``?tls``; without one, the defaults of
    :func:`delivery_tls_context`: the system trust store, no client certificate)."""
    datasets = {name: dcmread(io.BytesIO(data)) for name, data in objects.items()}
    ae = ichseg_ae(calling_ae)
    ae.connection_timeout = 10
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    # One presentation context per SOP class and kind of encoding, not per object (an association
    # holds at most 128; an overlay series has an image per slice). The PACS accepts one transfer
    # syntax per context: uncompressed objects offer both little-endian syntaxes (pynetdicom re-encodes
    # between them), a compressed one (the overlay's JPEG) gets a context of its own, as it cannot be
    # re-encoded here (the gateway holds no image codecs): a PACS refusing it is a failed attempt.
    contexts: dict[tuple[str, tuple[str, ...]], None] = {}
    for dataset in datasets.values():
        syntax = UID(dataset.file_meta.TransferSyntaxUID)
        offered = (syntax,) if syntax.is_compressed else (syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        contexts[(dataset.SOPClassUID, tuple(dict.fromkeys(offered)))] = None
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, list(syntaxes))
    context = None
    if destination.tls:
        context = tls_context
        if context is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
    tls_args = (context, destination.host) if context is not None else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        problem = tls_problem(destination, context) if context is not None and not assoc.is_rejected else None
        if problem:
            return StoreResult(frozenset(), f"association with {destination} not established: {problem}")
        why = "rejected" if assoc.is_rejected else "not established (connection refused, unreachable or aborted)"
        return StoreResult(frozenset(), f"association with {destination} {why}")
    stored: set[str] = set()
    failure = None
    try:
        for name, dataset in datasets.items():
            try:
                status = assoc.send_c_store(dataset)
            except ValueError:  # no accepted presentation context for this SOP class / transfer syntax
                failure = f"{name}: {destination} accepted no presentation context for it"
                break
            code = int(status.get("Status", -1)) if status else -1
            if code not in STORED_STATUSES:
                failure = f"{name}: {destination} answered " + (f"status 0x{code:04X}" if code >= 0 else "nothing")
                break
            stored.add(name)
    finally:
        if assoc.is_established:
            assoc.release()
    return StoreResult(frozenset(stored), failure)


def _problem(exc: Exception) -> str:
    """An exception as a failure's reason: its type and AWS error code, never its text (which may
    quote a file's content)."""
    code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
    return f"{type(exc).__name__} {code}".strip()


def dicom_files(name: str, data: bytes) -> dict[str, bytes]:
    """A result's DICOM files by name: the result itself, or an overlay series' images
    (``overlay_series/0001.dcm``...) out of its zip, in slice order."""
    if name != OVERLAY_SERIES:
        return {name: data}
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        images = sorted(member for member in archive.namelist() if member.endswith(".dcm"))
        return {f"{name}/{member}": archive.read(member) for member in images}


class Deliverer:
    """Reads the delivery queue and sends results back (:meth:`poll_once` is one receive; :meth:`run` loops)."""

    def __init__(self, settings: GatewaySettings, store: JobStore, s3: Any, sqs: Any, metrics: MetricsSink) -> None:
        self.settings = settings
        self.store = store
        self.records = DeliveryRecords(store)
        self.s3 = s3
        self.sqs = sqs
        self.metrics = metrics
        destinations = [*settings.destinations.values(), settings.default_destination]
        # Built once, so that a missing or unreadable CA bundle stops the gateway at start, not at a delivery.
        self.tls_context = (
            delivery_tls_context(settings) if any(d is not None and d.tls for d in destinations) else None
        )

    def run(self, stop: threading.Event) -> None:
        """Long-poll until ``stop`` is set; a failing receive is logged and retried."""
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception:  # SQS or DynamoDB unreachable: the messages wait on the queue
                log.exception("delivery poll failed; retrying")
                stop.wait(5)

    def poll_once(self) -> list[Decision]:
        """Receive one message and act on it (one at a time: a message waiting behind a slow PACS
        would spend its visibility timeout, and a receive count, doing nothing)."""
        response = self.sqs.receive_message(
            QueueUrl=self.settings.delivery_queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=self.settings.poll_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        decisions = []
        for message in response.get("Messages", []):
            receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            decision = self.handle(message["Body"], receives)
            if decision.delete:
                self.sqs.delete_message(
                    QueueUrl=self.settings.delivery_queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            elif decision.visibility is not None:
                self.sqs.change_message_visibility(
                    QueueUrl=self.settings.delivery_queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=decision.visibility,
                )
            decisions.append(decision)
        return decisions

    def handle(self, body: str, receives: int) -> Decision:
        """Decide and act on one message received for the ``receives``-th time."""
        try:
            job_id = parse_message(body)
        except ValueError as exc:
            log.error("delivery message dropped: %s", exc)
            return Decision(DeliveryOutcome.NOTHING_TO_SEND, True, reason=str(exc))
        job = self.store.get(job_id)
        if job is None or job.source != JobSource.INGEST or job.state == JobState.FAILED:
            log.info("job %s: nothing to deliver (%s)", job_id, "unknown" if job is None else job.state.value)
            return Decision(DeliveryOutcome.NOTHING_TO_SEND, True)
        if job.state != JobState.DONE:
            if receives >= self.settings.delivery_attempts:
                log.warning("job %s still %s at the delivery message's last receive", job_id, job.state.value)
                return Decision(DeliveryOutcome.NOT_DONE, False, 0)
            return Decision(DeliveryOutcome.NOT_DONE, False, self.settings.pending_retry_seconds)
        if job.delivery_state in (DeliveryState.DELIVERED, DeliveryState.FAILED):
            return Decision(DeliveryOutcome.DUPLICATE, True)
        return self._deliver(job, receives)

    def _deliver(self, job: Job, receives: int) -> Decision:
        site = keys.ingest_site(job.upload_key)
        destination = self.settings.destination_for(site) if site else self.settings.default_destination
        if destination is None:
            return self._give_up(job, f"no DICOM destination configured for site {site or '(none)'}", (), True)
        names = (*DELIVERED_NAMES, OVERLAY_SERIES) if destination.overlay else DELIVERED_NAMES
        pending = {n: job.results[n] for n in names if n in job.results and n not in job.delivered_objects}
        if not pending and not job.delivered_objects:
            # A router upload that was no DICOM (a NIfTI, a video) has no SEG/SR: nothing failed.
            log.info("job %s: no DICOM results to deliver", job.job_id)
            return Decision(DeliveryOutcome.NOTHING_TO_SEND, True)
        # One attempt reads each result file once, whichever part needs it (the SR goes to the PACS
        # and names the patient in the HL7 and FHIR messages).
        read = cache(self._read)
        result = self._store_in_pacs(destination, pending, read)
        messages = self._send_messages(job, site or "", read)
        stored = result.stored | messages.stored
        failure = "; ".join(filter(None, (result.failure, messages.failure))) or None
        return self._settle(job, receives, StoreResult(stored, failure), [*pending, *messages.stored], destination)

    def _store_in_pacs(
        self, destination: Destination, pending: Mapping[str, str], read: Callable[[str], bytes]
    ) -> StoreResult:
        """C-STORE the pending results (name -> S3 key) over one association."""
        objects: dict[str, bytes] = {}
        members: dict[str, list[str]] = {}
        try:
            for name, key in pending.items():
                files = dicom_files(name, read(key))
                members[name] = list(files)
                objects.update(files)
            sent = StoreResult(frozenset(), None)
            if objects:
                sent = store_objects(self.settings.ae_title, destination, objects, self.tls_context)
            # A result is stored once each of its files is (an overlay series: every image).
            stored = frozenset(name for name, files in members.items() if set(files) <= sent.stored)
            return StoreResult(stored, sent.failure)
        except Exception as exc:  # S3 trouble, an unreadable result file: a failed attempt, retried
            return StoreResult(frozenset(), f"could not send the results: {_problem(exc)}")

    def _send_messages(self, job: Job, site: str, read: Callable[[str], bytes]) -> StoreResult:
        """The site's HL7 and FHIR messages not sent yet; the ones taken, and why any other was not."""
        from gateway import result_messages as messages

        hl7 = self.settings.hl7_destinations.get(site) if HL7 not in job.delivered_objects else None
        fhir = self.settings.fhir_destinations.get(site) if FHIR not in job.delivered_objects else None
        # The patient and study come from the SR (or the SEG: both copy them from the source series).
        named_by = job.results.get("sr") or job.results.get("seg")
        if hl7 is None and fhir is None:
            return StoreResult(frozenset(), None)
        if named_by is None or "report" not in job.results:
            log.warning("job %s: no SR or SEG names the patient: no HL7 or FHIR message", job.job_id)
            return StoreResult(frozenset(), None)
        try:
            report = json.loads(read(job.results["report"]))
            facts = messages.result_facts(job.job_id, read(named_by), report)
        except Exception as exc:
            return StoreResult(frozenset(), f"could not build the messages: {_problem(exc)}")
        # The messages' times are the job's DONE time: a re-send is the very same message.
        now = datetime.fromtimestamp(job.stamps.get("done") or time.time(), UTC)
        sends: list[tuple[str, Callable[[], None]]] = []
        if hl7 is not None:
            oru = partial(messages.oru_r01, facts, self.settings.ae_title, hl7, now)
            sends.append((HL7, lambda: messages.send_mllp(hl7, oru())))
        if fhir is not None:
            bundle = partial(messages.diagnostic_report_bundle, facts, site, now)
            sends.append((FHIR, lambda: messages.post_fhir(fhir, bundle(), self.settings.fhir_ca)))
        sent: set[str] = set()
        failures = []
        for name, send in sends:
            try:
                send()
                sent.add(name)
            except messages.MessageRefused as exc:
                failures.append(str(exc))
            except Exception as exc:  # a value the message cannot carry: its text may quote the patient
                failures.append(f"{name}: the message could not be built ({type(exc).__name__})")
        return StoreResult(frozenset(sent), "; ".join(failures) or None)

    def _read(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read()
        return body

    def _settle(
        self, job: Job, receives: int, result: StoreResult, sent: list[str], destination: Destination
    ) -> Decision:
        """Record the attempt: DELIVERED, or its failure (retried, or FAILED on the last receive)."""
        if result.failure is None:
            self.records.mark_delivered(job.job_id, result.stored)
            log.info("job %s: %s delivered to %s", job.job_id, "+".join(sorted(sent)) or "nothing new", destination)
            self.metrics.add_metric("Deliveries", "Count", 1)
            return Decision(DeliveryOutcome.DELIVERED, True)
        if receives >= self.settings.delivery_attempts:
            return self._give_up(job, f"{result.failure} (attempt {receives}, the last)", result.stored, False)
        self.records.record_failure(job.job_id, f"{result.failure} (attempt {receives})", result.stored)
        self.metrics.add_metric("DeliveryRetries", "Count", 1)
        backoff = self.settings.delivery_backoff_seconds * 2 ** (receives - 1)
        log.warning("job %s: delivery attempt %d failed: %s", job.job_id, receives, result.failure)
        return Decision(DeliveryOutcome.RETRY, False, int(min(MAX_VISIBILITY_SECONDS, backoff)), result.failure)

    def _give_up(self, job: Job, reason: str, stored: Iterable[str], delete: bool) -> Decision:
        if self.records.fail(job.job_id, reason, stored):
            self.metrics.add_metric("DeliveryFailures", "Count", 1)
        log.error("job %s: delivery FAILED: %s", job.job_id, reason)
        # Not deleted (the last receive): visible again at once, so the next receive moves it to the DLQ.
        return Decision(DeliveryOutcome.GAVE_UP, delete, None if delete else 0, reason)
