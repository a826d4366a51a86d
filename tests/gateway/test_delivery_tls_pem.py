"""Delivery's DICOM TLS material as PEM text in the environment (ECS injects it from Secrets Manager):
the CA bundle, and the gateway's client certificate and key written to private files only while they load."""

from __future__ import annotations

import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

import gateway.settings
from gateway.delivery import Deliverer, DeliveryOutcome
from gateway.service import GatewayService
from gateway.settings import GatewaySettings, SettingsError, private_pem_files
from ichseg.pipeline.jobs import DeliveryState, JobStore
from tests.gateway.certificates import CertificateAuthority
from tests.gateway.conftest import Aws, RecordingMetrics
from tests.gateway.test_delivery_tls import TlsPacs, deliver_once, server_context, start_pacs


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def store(aws: Aws) -> JobStore:
    return JobStore(aws.dynamodb, aws.table)


@pytest.fixture
def pacs(ca: CertificateAuthority) -> Iterator[TlsPacs]:
    """A PACS on localhost that requires a client certificate signed by ``ca`` (mutual TLS)."""
    server = start_pacs(server_context(ca, ("localhost",), client_ca=ca.path))
    yield server
    server.server.shutdown()


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp dir, for this test only, so that what is left in it can be seen."""
    root = tmp_path / "system-tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def pem_environment(ca: CertificateAuthority, aws: Aws, spool: Path, destination: str) -> dict[str, str]:
    certificate, key = ca.issue("gateway", ("ichseg-gateway.example",))
    return {
        "ICHSEG_GATEWAY_SPOOL_DIR": str(spool),
        "ICHSEG_GATEWAY_HOST": "127.0.0.1",
        "ICHSEG_GATEWAY_PORT": "0",
        "ICHSEG_GATEWAY_POLL_SECONDS": "1",
        "ICHSEG_BUCKET": aws.bucket,
        "ICHSEG_TABLE": aws.table,
        "ICHSEG_DELIVERY_QUEUE_URL": aws.queue_url,
        "ICHSEG_GATEWAY_DEFAULT_DESTINATION": destination,
        "ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM": ca.path.read_text(),
        "ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM": certificate.read_text(),
        "ICHSEG_GATEWAY_TLS_KEY_PEM": key.read_text(),
    }


@pytest.fixture
def seen_pem_files(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Wraps the real :func:`private_pem_files`: what each folder and file looked like while in use."""
    seen: list[dict[str, Any]] = []

    @contextmanager
    def recording(**pems: str) -> Iterator[dict[str, Path]]:
        with private_pem_files(**pems) as paths:
            folder = next(iter(paths.values())).parent
            seen.append(
                {
                    "folder": folder,
                    "folder_mode": stat.S_IMODE(folder.stat().st_mode),
                    "file_modes": {name: stat.S_IMODE(path.stat().st_mode) for name, path in paths.items()},
                    "texts": {name: path.read_text() for name, path in paths.items()},
                }
            )
            yield paths

    monkeypatch.setattr(gateway.settings, "private_pem_files", recording)
    return seen


def test_pem_settings_from_the_environment_deliver_over_mutual_tls(
    aws: Aws,
    store: JobStore,
    metrics: RecordingMetrics,
    ca: CertificateAuthority,
    pacs: TlsPacs,
    tmp_path: Path,
    temp_root: Path,
    seen_pem_files: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    environ = pem_environment(ca, aws, tmp_path / "spool", f"PACS@localhost:{pacs.port}?tls")
    settings = GatewaySettings.from_env(environ)
    assert settings.delivery_tls_ca is None and settings.tls_certificate is None and not settings.tls
    outcome, job = deliver_once(settings, aws, store, metrics)
    assert outcome == DeliveryOutcome.DELIVERED and job.delivery_state == DeliveryState.DELIVERED
    # over TLS, the PACS saw the certificate that came from the environment
    assert [(version in ("TLSv1.2", "TLSv1.3"), cn) for _, version, cn in pacs.received] == [
        (True, "ichseg-gateway.example")
    ] * 2
    # Loaded at settings (start-time check) and for the delivery context: each time in a private
    # folder under the system temp dir, with exactly the PEM, and nothing of it left afterwards.
    assert len(seen_pem_files) == 2
    for seen in seen_pem_files:
        assert seen["folder"].parent == temp_root
        assert seen["folder_mode"] == 0o700 and seen["file_modes"] == {"certificate": 0o600, "key": 0o600}
        assert seen["texts"]["key"].strip() == environ["ICHSEG_GATEWAY_TLS_KEY_PEM"].strip()
        assert not seen["folder"].exists()
    assert list(temp_root.iterdir()) == []
    assert "PRIVATE KEY" not in caplog.text and "BEGIN CERTIFICATE" not in caplog.text
    assert "PRIVATE KEY" not in repr(settings)


def test_a_pem_client_certificate_is_for_delivery_only_and_leaves_nothing_on_disk(
    aws: Aws,
    metrics: RecordingMetrics,
    ca: CertificateAuthority,
    pacs: TlsPacs,
    tmp_path: Path,
    temp_root: Path,
    seen_pem_files: list[dict[str, Any]],
) -> None:
    settings = GatewaySettings.from_env(pem_environment(ca, aws, tmp_path / "spool", f"PACS@localhost:{pacs.port}?tls"))
    with GatewayService(settings, metrics=metrics) as service:
        assert service.deliverer is not None and service.deliverer.tls_context is not None
        assert service.deliverer.tls_context.cert_store_stats()["x509_ca"] == 1  # the PEM CA, not the system's
        # The receiving port stays plain DICOM (in AWS the load balancer terminates its TLS).
        ae = AE(ae_title="SITEA")
        ae.add_requested_context(Verification)
        assoc = ae.associate(*service.address, ae_title="ICHSEG")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        # the key was on disk only while it loaded: nothing under the temp dir while the gateway runs
        assert list(temp_root.iterdir()) == []
        assert seen_pem_files and all(not seen["folder"].exists() for seen in seen_pem_files)
    assert list(temp_root.iterdir()) == []


def test_private_pem_files_are_private_and_removed_even_on_failure(temp_root: Path) -> None:
    with private_pem_files(certificate="C\n", key="K\n") as paths:
        folder = paths["key"].parent
        assert folder.parent == temp_root and folder.name.startswith("ichseg-gateway-tls-")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert {stat.S_IMODE(p.stat().st_mode) for p in paths.values()} == {0o600}
        assert (paths["certificate"].read_text(), paths["key"].read_text()) == ("C\n", "K\n")
    assert not folder.exists()
    with pytest.raises(RuntimeError), private_pem_files(key="K\n") as paths:
        raise RuntimeError("loading failed")
    assert not paths["key"].parent.exists() and list(temp_root.iterdir()) == []


def encrypted(key_path: Path) -> str:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("CA file and PEM", "ICHSEG_GATEWAY_DELIVERY_TLS_CA and ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM are both set"),
        ("certificate file and PEM", "_KEY (files) and ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM/_KEY_PEM are both set"),
        (
            "PEM certificate without key",
            "ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM and ICHSEG_GATEWAY_TLS_KEY_PEM go together",
        ),
        ("malformed CA", "ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM is not a PEM CA bundle"),
        ("a key as the CA", "ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM is not a PEM CA bundle"),
        ("malformed certificate", "are not a PEM certificate (chain) and its matching unencrypted private key"),
        ("swapped", "are not a PEM certificate (chain) and its matching unencrypted private key"),
        ("another certificate's key", "matching unencrypted private key: KEY_VALUES_MISMATCH"),
        ("encrypted key", "are not a PEM certificate (chain) and its matching unencrypted private key"),
    ],
)
def test_pem_conflicts_and_malformed_pem_fail_at_start_without_quoting_it(
    ca: CertificateAuthority, tmp_path: Path, temp_root: Path, case: str, message: str
) -> None:
    certificate, key = ca.issue("gateway")
    _, other_key = ca.issue("other")
    cert_pem, key_pem = certificate.read_text(), key.read_text()
    environ = {
        "CA file and PEM": {
            "ICHSEG_GATEWAY_DELIVERY_TLS_CA": str(ca.path),
            "ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM": ca.path.read_text(),
        },
        "certificate file and PEM": {
            "ICHSEG_GATEWAY_TLS_CERTIFICATE": str(certificate),
            "ICHSEG_GATEWAY_TLS_KEY": str(key),
            "ICHSEG_GATEWAY_TLS_KEY_PEM": key_pem,
        },
        "PEM certificate without key": {"ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM": cert_pem},
        "malformed CA": {"ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM": ca.path.read_text()[:200]},
        "a key as the CA": {"ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM": key_pem},
        "malformed certificate": {
            "ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM": cert_pem.replace("\n", "", 3),
            "ICHSEG_GATEWAY_TLS_KEY_PEM": key_pem,
        },
        "swapped": {"ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM": key_pem, "ICHSEG_GATEWAY_TLS_KEY_PEM": cert_pem},
        "another certificate's key": {
            "ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM": cert_pem,
            "ICHSEG_GATEWAY_TLS_KEY_PEM": other_key.read_text(),
        },
        # no prompt on the terminal for a passphrase (stdin is closed in a container): a clear error
        "encrypted key": {"ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM": cert_pem, "ICHSEG_GATEWAY_TLS_KEY_PEM": encrypted(key)},
    }[case]
    with pytest.raises(SettingsError, match=re.escape(message)) as error:
        GatewaySettings.from_env({"ICHSEG_GATEWAY_SPOOL_DIR": str(tmp_path / "spool"), **environ})
    text = str(error.value)
    assert "-----" not in text and not any(line in text for line in key_pem.splitlines()[1:-1])
    assert list(temp_root.iterdir()) == []  # a failed load leaves no file behind either


def test_the_path_settings_still_work_and_no_pem_means_no_files(
    make_settings: Callable[..., GatewaySettings],
    aws: Aws,
    store: JobStore,
    metrics: RecordingMetrics,
    ca: CertificateAuthority,
    pacs: TlsPacs,
    seen_pem_files: list[dict[str, Any]],
) -> None:
    certificate, key = ca.issue("gateway", ("ichseg-gateway.example",))
    settings = make_settings(
        delivery_queue_url=aws.queue_url,
        default_destination=pacs.destination(host="localhost"),
        delivery_tls_ca=ca.path,
        tls_certificate=certificate,
        tls_key=key,
    )
    outcome, _ = deliver_once(settings, aws, store, metrics)
    assert outcome == DeliveryOutcome.DELIVERED and [cn for _, _, cn in pacs.received] == ["ichseg-gateway.example"] * 2
    assert seen_pem_files == []
    assert settings.tls  # a certificate file still makes the receiving port a TLS listener, as before


def test_the_deliverer_takes_the_pem_ca_alone(
    make_settings: Callable[..., GatewaySettings],
    aws: Aws,
    store: JobStore,
    metrics: RecordingMetrics,
    ca: CertificateAuthority,
) -> None:
    pacs = start_pacs(server_context(ca, ("localhost", "127.0.0.1")))
    try:
        settings = make_settings(
            delivery_queue_url=aws.queue_url,
            default_destination=pacs.destination(),
            delivery_tls_ca_pem=ca.path.read_text(),
        )
        outcome, _ = deliver_once(settings, aws, store, metrics)
        assert outcome == DeliveryOutcome.DELIVERED and [cn for _, _, cn in pacs.received] == [None, None]
        assert Deliverer(settings, store, aws.s3, aws.sqs, metrics).tls_context is not None
    finally:
        pacs.server.shutdown()
