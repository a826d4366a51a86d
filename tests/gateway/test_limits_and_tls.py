"""Association bound, DICOM TLS, and the metrics the service emits (CloudWatch EMF)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from gateway.service import EmfMetrics, GatewayService
from gateway.settings import GatewaySettings
from tests.gateway.certificates import CertificateAuthority
from tests.gateway.conftest import Aws, RecordingMetrics, ct_series, wait_until


def scu(calling: str = "SITEA") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae


def test_associations_beyond_the_bound_are_rejected(
    make_settings: Callable[..., GatewaySettings], aws: Aws, metrics: RecordingMetrics
) -> None:
    with GatewayService(make_settings(max_associations=1), metrics=metrics) as service:
        host, port = service.address
        first = scu().associate(host, port, ae_title="ICHSEG")
        assert first.is_established
        second = scu().associate(host, port, ae_title="ICHSEG")
        assert second.is_rejected  # local limit exceeded (transient): the PACS retries later
        first.release()
        third = wait_until(lambda: (a := scu().associate(host, port, ae_title="ICHSEG")).is_established and a)
        third.release()


def test_dicom_tls_receives_a_series(
    make_settings: Callable[..., GatewaySettings], aws: Aws, metrics: RecordingMetrics, tmp_path: Path
) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    certificate, key = ca.issue("gateway")
    settings = make_settings(tls_certificate=certificate, tls_key=key)
    files = ct_series(tmp_path / "series", 2)
    with GatewayService(settings, metrics=metrics) as service:
        host, port = service.address
        plain = scu().associate(host, port, ae_title="ICHSEG")
        assert not plain.is_established  # a plain-TCP caller gets no association from a TLS port
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.path))
        assoc = scu().associate(host, port, ae_title="ICHSEG", tls_args=(client, "localhost"))
        assert assoc.is_established
        assert [assoc.send_c_store(dcmread(f)).Status for f in files] == [0, 0]
        assoc.release()
        [key_name] = wait_until(aws.ingest_keys)
    assert key_name.startswith("ingest/SITEA/")


def test_the_services_metrics_are_embedded_metric_format_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    EmfMetrics().add_metric("DeliveryFailures", "Count", 1)
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "DeliveryFailures" in line]
    [directive] = line["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "ichseg"
    assert directive["Metrics"] == [{"Name": "DeliveryFailures", "Unit": "Count"}]
    assert line["DeliveryFailures"] == [1.0] or line["DeliveryFailures"] == 1.0
