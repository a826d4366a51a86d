"""Results back to a PACS over DICOM TLS (``AE@host:port?tls``): a pynetdicom Storage SCP with an SSL
context plays the PACS, certificates come from a test CA; and the destination form's parsing."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from gateway.delivery import Deliverer, DeliveryOutcome
from gateway.settings import Destination, GatewaySettings, SettingsError, parse_destinations
from ichseg.pipeline.jobs import DeliveryState, JobStore
from tests.gateway.certificates import CertificateAuthority
from tests.gateway.conftest import Aws, RecordingMetrics
from tests.gateway.test_delivery import job_in, queued, send
from tests.patient_identifiers import identifier_leaks


@dataclass
class TlsPacs:
    """A Storage SCP; ``received`` lists (SOP class, TLS version or None, client certificate's CN or None)."""

    server: ThreadedAssociationServer
    received: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def destination(self, tls: bool = True, host: str = "127.0.0.1") -> Destination:
        return Destination.parse(f"PACS@{host}:{self.port}" + ("?tls" if tls else ""))


def start_pacs(context: ssl.SSLContext | None) -> TlsPacs:
    ae = AE(ae_title="PACS")
    for sop_class in (SegmentationStorage, Comprehensive3DSRStorage):
        ae.add_supported_context(sop_class)
    pacs: TlsPacs

    def on_store(event: Any) -> int:
        sock = event.assoc.dul.socket.socket
        tls = isinstance(sock, ssl.SSLSocket)
        peer = sock.getpeercert(binary_form=True) if tls else None
        names = x509.load_der_x509_certificate(peer).subject.get_attributes_for_oid(NameOID.COMMON_NAME) if peer else []
        common_name = str(names[0].value) if names else None
        pacs.received.append((str(event.request.AffectedSOPClassUID), sock.version() if tls else None, common_name))
        return 0x0000

    server = ae.start_server(
        ("127.0.0.1", 0), block=False, ssl_context=context, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    pacs = TlsPacs(server)
    return pacs


def server_context(ca: CertificateAuthority, hosts: tuple[str, ...], client_ca: Path | None = None) -> ssl.SSLContext:
    """The PACS's side: its certificate for ``hosts``; with ``client_ca``, callers must present one it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*ca.issue("pacs", hosts))
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def servers() -> Iterator[list[TlsPacs]]:
    started: list[TlsPacs] = []
    yield started
    for pacs in started:
        pacs.server.shutdown()


@pytest.fixture
def store(aws: Aws) -> JobStore:
    return JobStore(aws.dynamodb, aws.table)


def deliver_once(
    settings: GatewaySettings, aws: Aws, store: JobStore, metrics: RecordingMetrics
) -> tuple[DeliveryOutcome, Any]:
    """One DONE job, one message, one receive: the decision's outcome and the job row after it."""
    job = job_in(aws, store)
    send(aws, job.job_id)
    [decision] = Deliverer(settings, store, aws.s3, aws.sqs, metrics).poll_once()
    return decision.outcome, store.require(job.job_id)


def test_a_tls_destination_gets_the_seg_and_sr_over_tls(
    make_settings: Callable[..., GatewaySettings],
    aws: Aws,
    store: JobStore,
    metrics: RecordingMetrics,
    ca: CertificateAuthority,
    servers: list[TlsPacs],
) -> None:
    pacs = start_pacs(server_context(ca, ("localhost", "127.0.0.1")))
    servers.append(pacs)
    settings = make_settings(
        delivery_queue_url=aws.queue_url, default_destination=pacs.destination(), delivery_tls_ca=ca.path
    )
    outcome, job = deliver_once(settings, aws, store, metrics)
    assert outcome == DeliveryOutcome.DELIVERED
    assert job.delivery_state == DeliveryState.DELIVERED and job.delivered_objects == {"seg", "sr"}
    assert [(sop, version in ("TLSv1.2", "TLSv1.3")) for sop, version, _ in pacs.received] == [
        (SegmentationStorage, True),
        (Comprehensive3DSRStorage, True),
    ]
    assert queued(aws) == 0


def test_mutual_tls_presents_the_gateways_certificate(
    make_settings: Callable[..., GatewaySettings],
    aws: Aws,
    store: JobStore,
    metrics: RecordingMetrics,
    ca: CertificateAuthority,
    servers: list[TlsPacs],
) -> None:
    pacs = start_pacs(server_context(ca, ("localhost",), client_ca=ca.path))
    servers.append(pacs)
    certificate, key = ca.issue("gateway", ("ichseg-gateway.example",))
    settings = make_settings(
        delivery_queue_url=aws.queue_url,
        default_destination=pacs.destination(host="localhost"),
        delivery_tls_ca=ca.path,
        tls_certificate=certificate,
        tls_key=key,
    )
    outcome, job = deliver_once(settings, aws, store, metrics)
    assert outcome == DeliveryOutcome.DELIVERED and job.delivery_state == DeliveryState.DELIVERED
    assert [cn for _, _, cn in pacs.received] == ["ichseg-gateway.example"] * 2


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("untrusted CA", "the PACS's certificate failed verification: unable to get local issuer certificate"),
        ("other host name", "the PACS's certificate failed verification: IP address mismatch"),
        ("no client certificate", "TLS handshake failed: TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        ("plain-TCP PACS", "TLS handshake failed: WRONG_VERSION_NUMBER (is this port the PACS's DICOM TLS port?)"),
    ],
)
def test_a_tls_failure_is_a_retried_attempt_whose_reason_names_it(
    make_settings: Callable[..., GatewaySettings],
    aws: Aws,
    store: JobStore,
    metrics: RecordingMetrics,
    ca: CertificateAuthority,
    servers: list[TlsPacs],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
    reason: str,
) -> None:
    caplog.set_level("INFO")
    trusted = ca.path
    if case == "untrusted CA":
        pacs = start_pacs(server_context(ca, ("localhost", "127.0.0.1")))
        trusted = CertificateAuthority(tmp_path / "other", "another CA").path
    elif case == "other host name":
        pacs = start_pacs(server_context(ca, ("pacs.example",)))
    elif case == "no client certificate":
        pacs = start_pacs(server_context(ca, ("127.0.0.1",), client_ca=ca.path))
    else:
        pacs = start_pacs(None)
    servers.append(pacs)
    settings = make_settings(
        delivery_queue_url=aws.queue_url, default_destination=pacs.destination(), delivery_tls_ca=trusted
    )
    outcome, job = deliver_once(settings, aws, store, metrics)
    assert outcome == DeliveryOutcome.RETRY
    assert job.delivery_state == DeliveryState.PENDING and job.delivery_attempts == 1
    assert job.delivery_reason.startswith(f"association with PACS@127.0.0.1:{pacs.port}?tls not established: ")
    assert reason in job.delivery_reason
    assert pacs.received == [] and queued(aws) == 1
    assert identifier_leaks(job.delivery_reason + caplog.text) == []


def test_a_plain_destination_still_delivers_over_tcp(
    make_settings: Callable[..., GatewaySettings],
    aws: Aws,
    store: JobStore,
    metrics: RecordingMetrics,
    ca: CertificateAuthority,
    servers: list[TlsPacs],
) -> None:
    pacs = start_pacs(None)
    servers.append(pacs)
    settings = make_settings(
        delivery_queue_url=aws.queue_url, default_destination=pacs.destination(tls=False), delivery_tls_ca=ca.path
    )
    outcome, job = deliver_once(settings, aws, store, metrics)
    assert outcome == DeliveryOutcome.DELIVERED and job.delivered_objects == {"seg", "sr"}
    assert [version for _, version, _ in pacs.received] == [None, None]


def test_an_unreadable_delivery_ca_stops_the_gateway_at_start(
    make_settings: Callable[..., GatewaySettings], aws: Aws, store: JobStore, metrics: RecordingMetrics, tmp_path: Path
) -> None:
    missing = tmp_path / "missing-ca.pem"
    settings = make_settings(
        delivery_queue_url=aws.queue_url,
        destinations={"SITEA": Destination.parse("PACS@pacs.example:2762?tls")},
        delivery_tls_ca=missing,
    )
    with pytest.raises(SettingsError, match="delivery DICOM TLS: cannot load the CA bundle"):
        Deliverer(settings, store, aws.s3, aws.sqs, metrics)
    # No destination wants TLS: the CA is never needed, and never read.
    plain = make_settings(delivery_queue_url=aws.queue_url, delivery_tls_ca=missing)
    assert Deliverer(plain, store, aws.s3, aws.sqs, metrics).tls_context is None


def test_destination_forms() -> None:
    assert Destination.parse("PACS@10.0.0.5:2762?tls") == Destination("PACS", "10.0.0.5", 2762, tls=True)
    assert Destination.parse(" PACS@pacs.north:104 ") == Destination("PACS", "pacs.north", 104, tls=False)
    assert Destination.parse("MAIN@[fd00::1]:2762?TLS") == Destination("MAIN", "fd00::1", 2762, tls=True)
    assert str(Destination("MAIN", "fd00::1", 2762, tls=True)) == "MAIN@[fd00::1]:2762?tls"
    assert str(Destination("PACS", "10.0.0.5", 104)) == "PACS@10.0.0.5:104"
    # The overlay series is a per-destination option too, alone or with TLS, in either order.
    assert Destination.parse("PACS@h:104?overlay") == Destination("PACS", "h", 104, overlay=True)
    both = Destination("PACS", "h", 2762, tls=True, overlay=True)
    assert Destination.parse("PACS@h:2762?overlay&TLS") == both == Destination.parse(str(both))
    assert str(both) == "PACS@h:2762?tls&overlay"
    assert parse_destinations("CT1=PACS1@10.0.0.5:2762?tls,CT2=PACS2@10.0.0.6:104") == {
        "CT1": Destination("PACS1", "10.0.0.5", 2762, tls=True),
        "CT2": Destination("PACS2", "10.0.0.6", 104),
    }
    settings = GatewaySettings.from_env(
        {
            "ICHSEG_GATEWAY_SPOOL_DIR": "/spool",
            "ICHSEG_GATEWAY_DEFAULT_DESTINATION": "PACS@pacs.example:2762?tls",
            "ICHSEG_GATEWAY_DELIVERY_TLS_CA": "/etc/ichseg/pacs-ca.pem",
        }
    )
    assert settings.default_destination == Destination("PACS", "pacs.example", 2762, tls=True)
    assert settings.delivery_tls_ca == Path("/etc/ichseg/pacs-ca.pem")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PACS@h:2762?ssl", "unknown option 'ssl' (options: ?tls for DICOM TLS, ?overlay for the overlay series"),
        ("PACS@h:2762?", "unknown option '' (options: ?tls"),
        ("PACS@h:2762?tls&sc", "unknown option 'sc'"),
        ("PACS@h:2762?tls?tls", "is not AE@host:port"),
        ("PACS@h?tls:2762", "is not AE@host:port"),
        ("tls://PACS@h:2762", "is not AE@host:port (for DICOM TLS write AE@host:port?tls)"),
        ("PACS@h:99999?tls", "port 99999 is out of range"),
    ],
)
def test_malformed_destinations_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Destination.parse(text)


def test_the_templates_destination_parameters_accept_tls_destinations() -> None:
    from cfnlint.decode import decode

    parsed, errors = decode(str(Path(__file__).resolve().parents[2] / "template.yaml"))
    assert not errors and parsed is not None
    parameters = parsed["Parameters"]
    many, one = (
        re.compile(parameters[name]["AllowedPattern"]) for name in ("GatewayDestinations", "GatewayDefaultDestination")
    )
    accepted = "CT1=PACS1@10.0.0.5:2762?tls,NORTH=PACS2@pacs.north:104"
    assert many.fullmatch(accepted) and parse_destinations(accepted)["CT1"].tls
    assert one.fullmatch("PACS@pacs.example:2762?tls") and one.fullmatch("PACS@pacs.example:104")
    for refused in ("CT1=PACS1@h:2762?ssl", "CT1=PACS1@h?tls:2762"):  # Destination.parse refuses these too
        assert not many.fullmatch(refused)
        with pytest.raises(SettingsError):
            parse_destinations(refused)
