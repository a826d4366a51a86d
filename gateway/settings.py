"""The gateway's configuration: environment variables (``ICHSEG_GATEWAY_*`` and the pipeline's
``ICHSEG_BUCKET``, ``ICHSEG_TABLE``, ``ICHSEG_DELIVERY_QUEUE_URL``, ``ICHSEG_MAX_RECEIVE_COUNT``) or
the ``ichseg gateway`` flags that mirror them. boto3 reads its own ``AWS_*`` variables
(``AWS_ENDPOINT_URL`` points every client at moto locally).

Delivery's DICOM TLS material can also come as PEM text in the environment (ECS injects it from
Secrets Manager): ``ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM``, ``ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM`` and
``ICHSEG_GATEWAY_TLS_KEY_PEM``. They have no flags (a command line is visible to every process).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from gateway.result_messages import FhirDestination, MllpDestination
from ichseg.limits import MiB
from ichseg.pipeline import keys

T = TypeVar("T")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
"""DICOM AE titles: 1-16 characters of the default repertoire without backslash (PS3.5 6.2)."""
_DESTINATION = re.compile(
    r"^(?P<ae>[^@]+)@(?P<host>[^:@?]+|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})(?:\?(?P<option>[^?]*))?$"
)
TLS_OPTION = "tls"
"""``AE@host:port?tls``: deliver to this destination over DICOM TLS (PS3.15 Annex B)."""
OVERLAY_OPTION = "overlay"
"""``AE@host:port?overlay``: send this destination the overlay series too (secondary captures with the
outline burned in, for PACS viewers that show no SEG); options combine: ``?tls&overlay``."""
DESTINATION_OPTIONS = (TLS_OPTION, OVERLAY_OPTION)
_SITE_KEPT = re.compile(r"[A-Za-z0-9_-]")
"""AE title characters a site name keeps as they are; every other one is escaped (:func:`site_of`)."""
SITE_ESCAPE = "."


PRIVATE_NETWORKS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.0/8,::1/128,fc00::/7"
"""The default of ``ICHSEG_GATEWAY_STATUS_ALLOWED_NETWORKS``: a hospital's own address space."""
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A gateway setting is missing or malformed (names the variable or flag and the bad value)."""


def valid_ae_title(text: str) -> str:
    """``text`` stripped of padding if it is a usable AE title; :class:`SettingsError` otherwise."""
    title = text.strip()
    if not _AE_TITLE.match(title):
        raise SettingsError(f"{text!r} is not a DICOM AE title (1-16 printable characters, no backslash)")
    return title


def site_of(ae_title: str) -> str:
    """The key-safe site name of a calling AE title: the ``{site}`` in ``ingest/{site}/...``.

    Letters, digits, ``_`` and ``-`` are kept; any other character (space, ``/``, ``.``...) becomes
    ``.`` and its two hex digits (``CT 1`` -> ``CT.201``, ``CT/1`` -> ``CT.2F1``, ``CT.1`` ->
    ``CT.2E1``). The escape character is escaped too, so the mapping is injective: two AE titles
    never share a site, hence never a study folder, an ``ingest/`` prefix or a destination (a
    lossy mapping once filed ``CT 1`` and ``CT_1`` together and sent one's results to the other's
    PACS). A title is at most 16 characters, so a site is at most 48: within the key layout's 64.
    Padding spaces are not part of a title (PS3.5 AE) and are dropped first.
    """
    title = ae_title.strip()
    site = "".join(c if _SITE_KEPT.match(c) else f"{SITE_ESCAPE}{ord(c):02X}" for c in title)
    if not title or not keys.is_valid_site(site):  # the key layout's one rule for a site
        raise SettingsError(f"AE title {ae_title!r} gives no usable site name")
    return site


@dataclass(frozen=True)
class Destination:
    """A PACS (or any C-STORE SCP) the results are sent to."""

    ae_title: str
    host: str
    port: int
    tls: bool = False
    """Deliver over DICOM TLS; the PACS's certificate must chain to ``delivery_tls_ca`` and name ``host``."""
    overlay: bool = False
    """Also send the overlay series (:data:`OVERLAY_OPTION`); the gateway asks the pipeline for it
    when it uploads the site's studies."""

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AE@host:port``, with options after ``?`` joined by ``&``: ``tls`` for DICOM TLS,
        ``overlay`` for the overlay series (IPv6 hosts in brackets); :class:`SettingsError` (a
        ValueError) if malformed."""
        if "://" in text:  # a URL-style scheme would otherwise pass as part of the AE title
            raise SettingsError(f"destination {text!r} is not AE@host:port (for DICOM TLS write AE@host:port?tls)")
        match = _DESTINATION.match(text.strip())
        if not match:
            raise SettingsError(f"destination {text!r} is not AE@host:port")
        port = int(match["port"])
        if not 0 < port < 65536:
            raise SettingsError(f"destination {text!r}: port {port} is out of range")
        options = [o.strip().lower() for o in match["option"].split("&")] if match["option"] is not None else []
        unknown = [o for o in options if o not in DESTINATION_OPTIONS]
        if unknown:
            raise SettingsError(
                f"destination {text!r}: unknown option {unknown[0]!r} (options: ?tls for DICOM TLS, "
                "?overlay for the overlay series, or both: ?tls&overlay)"
            )
        return cls(
            valid_ae_title(match["ae"]),
            match["host"].strip("[]"),
            port,
            tls=TLS_OPTION in options,
            overlay=OVERLAY_OPTION in options,
        )

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        options = [name for name, on in ((TLS_OPTION, self.tls), (OVERLAY_OPTION, self.overlay)) if on]
        return f"{self.ae_title}@{host}:{self.port}" + (f"?{'&'.join(options)}" if options else "")


def parse_networks(text: str) -> tuple[Network, ...]:
    """``10.0.0.0/8,fd00::/8`` -> networks; :class:`SettingsError` naming a bad entry."""
    networks = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise SettingsError(
                f"ICHSEG_GATEWAY_STATUS_ALLOWED_NETWORKS: {entry!r} is not a network (e.g. 10.0.0.0/8)"
            ) from None
    return tuple(networks)


@contextmanager
def private_pem_files(**pems: str) -> Iterator[dict[str, Path]]:
    """Each PEM text written to ``{name}.pem`` in a new private folder under the system temp dir
    (folder 0700, files 0600); yields {name: path}; the folder is removed on leaving, whatever happens.
    For ``ssl.SSLContext.load_cert_chain``, which reads files only."""
    folder = Path(tempfile.mkdtemp(prefix="ichseg-gateway-tls-"))  # mkdtemp creates it 0700
    try:
        paths: dict[str, Path] = {}
        for name, text in pems.items():
            paths[name] = folder / f"{name}.pem"
            descriptor = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(text)
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's passphrase.
    return b""


def load_pem_certificate(context: ssl.SSLContext, certificate_pem: str, key_pem: str) -> None:
    """Load a certificate chain and its unencrypted key, given as PEM text, into ``context``: they are
    written to :func:`private_pem_files` only for the call and removed straight after (the context
    keeps them in memory). :class:`SettingsError` if they do not load; it never quotes the PEM."""
    with private_pem_files(certificate=certificate_pem, key=key_pem) as paths:
        try:
            context.load_cert_chain(paths["certificate"], paths["key"], password=_no_passphrase)
        except ssl.SSLError as exc:
            raise SettingsError(
                "ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM / ICHSEG_GATEWAY_TLS_KEY_PEM are not a PEM certificate "
                f"(chain) and its matching unencrypted private key: {exc.reason or 'it does not parse'}"
            ) from None


def _check_ca_pem(text: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as exc:  # ValueError: not even text OpenSSL can read
        reason = getattr(exc, "reason", None) or "no certificate in it parses"
        raise SettingsError(
            f"ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM is not a PEM CA bundle (BEGIN CERTIFICATE blocks): {reason}"
        ) from None


def parse_destinations(text: str) -> dict[str, Destination]:
    """``AE=PACS@host:port,AE2=...`` -> {site: destination}, each calling AE title made a site by
    :func:`site_of`. :class:`SettingsError` for an entry that is not ``AE=PACS@host:port``, or for
    two entries for one calling AE (``CT1`` and `` CT1 ``): which PACS would get its results is
    ambiguous, and a silent "last one wins" once sent a hospital's results to another hospital."""
    return per_site(text, Destination.parse, "AE@host:port")


def parse_hl7_destination(text: str) -> MllpDestination:
    """``[APPLICATION[^FACILITY]@]host:port``: an HL7 v2 receiver over MLLP, with the receiving
    application and facility its MSH-5 and MSH-6 name (both optional)."""
    who, _, address = text.strip().rpartition("@")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"HL7 destination {text!r} is not [APPLICATION[^FACILITY]@]host:port")
    application, _, facility = who.partition("^")
    return MllpDestination(host.strip("[]"), int(port), application, facility)


def parse_fhir_destination(text: str) -> FhirDestination:
    """``https://fhir.example/r4``: a FHIR R4 server's base URL."""
    try:
        return FhirDestination(text.strip())
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def per_site(text: str, parse: Callable[[str], T], form: str) -> dict[str, T]:
    """``AE=<value>,AE2=<value>`` -> {site: parsed value}; :class:`SettingsError` for a malformed
    entry or two entries for one calling AE title (see :func:`parse_destinations`)."""
    found: dict[str, T] = {}
    written: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        title, sep, destination = entry.partition("=")
        if not sep or not title.strip():
            raise SettingsError(f"destination {entry!r} is not SITE={form}")
        try:
            calling = valid_ae_title(title)
        except SettingsError:
            raise SettingsError(
                f"destination {entry!r}: {title.strip()!r} is not a calling AE title (1-16 characters, no backslash)"
            ) from None
        site = site_of(calling)
        if site in written:
            raise SettingsError(
                f"destinations {written[site]!r} and {title!r} are the same calling AE title {calling!r}: "
                "give each calling AE title one destination"
            )
        written[site] = title
        found[site] = parse(destination)
    return found


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs; see the module docstring for where each comes from."""

    spool_dir: Path
    """Received instances stay here until S3 has them (``incoming/``, ``claimed/``, ``sent/``)."""
    ae_title: str = "ICHSEG"
    host: str = "0.0.0.0"
    port: int = 11112
    """0: any free port (:attr:`gateway.service.GatewayService.address` tells which)."""
    allowed_calling_aes: tuple[str, ...] = ()
    """Calling AE titles allowed to associate; empty: any."""
    idle_seconds: float = 10.0
    """A study none of whose series got an instance for this long is complete (all its series go up as one)."""
    max_associations: int = 8
    """Associations at once. Only an association whose A-ASSOCIATE-RQ arrived counts: a bare TCP
    connection (a load balancer's health check, a port scan) takes no slot."""
    association_request_seconds: float = 5.0
    """How long a TCP connection may stay open without sending its A-ASSOCIATE-RQ (a PACS sends it at
    once) before the gateway closes it: the ARTIM timer of PS3.8 9.1.5, and the wait for the request."""
    max_spool_bytes: int = 8 * 1024 * MiB
    """Past this, instances are refused with 0xA700 (out of resources) until uploads free room."""
    sent_retention_seconds: float = 3600.0
    """How long an uploaded study is kept, so that re-sent instances of it are recognised."""
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    """Site (the calling AE title made key-safe) -> where its results go."""
    default_destination: Destination | None = None
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """With a CA, callers must present a certificate it signed (mutual TLS)."""
    delivery_tls_ca: Path | None = None
    """CA bundle a ``?tls`` destination's certificate must chain to; none: the system trust store.
    With ``tls_certificate``/``tls_key`` set, the gateway presents them to the PACS (mutual TLS)."""
    delivery_tls_ca_pem: str | None = field(default=None, repr=False)
    """``delivery_tls_ca`` given as PEM text instead of a file (``ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM``);
    not both."""
    tls_certificate_pem: str | None = field(default=None, repr=False)
    """The gateway's client certificate (chain) for mutual TLS to ``?tls`` destinations, as PEM text
    (``ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM``), with ``tls_key_pem``; not with ``tls_certificate``.
    Delivery only, on purpose: unlike ``tls_certificate`` it does not turn the receiving port into a
    TLS listener (:attr:`tls` stays False), because in AWS the load balancer terminates the
    receiving side's TLS and forwards plain DICOM to the task."""
    tls_key_pem: str | None = field(default=None, repr=False)
    """Its unencrypted private key, PEM text (``ICHSEG_GATEWAY_TLS_KEY_PEM``); never logged or quoted."""
    delivery_attempts: int = 3
    """The delivery queue's redrive ``maxReceiveCount``: the receive that is the last one fails delivery."""
    delivery_backoff_seconds: float = 30.0
    """Visibility after a failed delivery: this, doubled per receive (SQS's cap: 12 hours)."""
    pending_retry_seconds: int = 5
    """Visibility for a message whose job is not DONE yet (sent just before the job's DONE write)."""
    bucket: str = ""
    table: str = ""
    delivery_queue_url: str = ""
    """Empty: the gateway receives and uploads but delivers nothing."""
    poll_seconds: int = 20
    """SQS long-poll wait (at most 20)."""
    status_port: int | None = None
    """The status page's HTTP port (:mod:`gateway.status`); None: no status page; 0: any free port."""
    status_host: str | None = None
    """Where the status page listens; None: :attr:`host`."""
    status_allowed_networks: tuple[Network, ...] = parse_networks(PRIVATE_NETWORKS)
    """Clients the status page answers; any other gets 403."""
    hl7_destinations: Mapping[str, MllpDestination] = field(default_factory=dict)
    """Site -> the HL7 v2 receiver (RIS, interface engine) its ORU^R01 goes to (:mod:`gateway.result_messages`)."""
    fhir_destinations: Mapping[str, FhirDestination] = field(default_factory=dict)
    """Site -> the FHIR R4 server its DiagnosticReport goes to."""
    fhir_ca: Path | None = None
    """CA bundle the FHIR servers' certificates must chain to; none: the system trust store."""

    def __post_init__(self) -> None:
        valid_ae_title(self.ae_title)
        for title in self.allowed_calling_aes:
            valid_ae_title(title)
        if not 0 <= self.port < 65536:
            raise SettingsError(f"port {self.port} is out of range")
        if self.status_port is not None and not 0 <= self.status_port < 65536:
            raise SettingsError(f"status port {self.status_port} is out of range")
        if (
            self.idle_seconds <= 0
            or self.max_associations < 1
            or self.max_spool_bytes < 1
            or self.association_request_seconds <= 0
        ):
            raise SettingsError(
                "idle seconds, maximum associations, maximum spool bytes and the association request wait "
                "must be positive"
            )
        if self.delivery_attempts < 1 or not 0 <= self.poll_seconds <= 20:
            raise SettingsError("delivery attempts must be >= 1 and the poll wait 0-20 seconds")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise SettingsError("DICOM TLS needs both a certificate and its key")
        self._check_pem_settings()

    def _check_pem_settings(self) -> None:
        """Conflicts and malformed PEM fail here, when the gateway starts, not at its first delivery."""
        if self.delivery_tls_ca is not None and self.delivery_tls_ca_pem is not None:
            raise SettingsError(
                "ICHSEG_GATEWAY_DELIVERY_TLS_CA and ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM are both set: "
                "give the PACS's CA bundle as a file or as PEM text, not both"
            )
        pems = (self.tls_certificate_pem, self.tls_key_pem)
        if self.tls_certificate is not None and any(pem is not None for pem in pems):
            raise SettingsError(
                "ICHSEG_GATEWAY_TLS_CERTIFICATE/_KEY (files) and ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM/_KEY_PEM "
                "are both set: give the gateway's certificate and key one way, not both"
            )
        if (self.tls_certificate_pem is None) != (self.tls_key_pem is None):
            raise SettingsError(
                "ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM and ICHSEG_GATEWAY_TLS_KEY_PEM go together (certificate, key)"
            )
        if self.delivery_tls_ca_pem is not None:
            _check_ca_pem(self.delivery_tls_ca_pem)
        if self.tls_certificate_pem is not None and self.tls_key_pem is not None:
            load_pem_certificate(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), self.tls_certificate_pem, self.tls_key_pem)

    @property
    def tls(self) -> bool:
        """Whether the receiving port is a DICOM TLS listener: with ``tls_certificate`` (a file) only."""
        return self.tls_certificate is not None

    def destination_for(self, site: str) -> Destination | None:
        """Where a site's results go: its own destination, else the default, else nowhere."""
        return self.destinations.get(site, self.default_destination)

    def wants_overlay(self, site: str) -> bool:
        """Whether the site's destination asks for the overlay series (``?overlay``)."""
        destination = self.destination_for(site)
        return destination is not None and destination.overlay

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        """Read the settings from environment variables; :class:`SettingsError` names a bad one."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str:
            return env.get(name, "").strip()

        def number(name: str, kind: type[int] | type[float]) -> int | float | None:
            raw = text(name)
            if not raw:
                return None
            try:
                return kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a number") from None

        def path(name: str) -> Path | None:
            return Path(text(name)) if text(name) else None

        def pem(name: str) -> str | None:
            return text(name) + "\n" if text(name) else None

        allowed = tuple(a.strip() for a in text("ICHSEG_GATEWAY_ALLOWED_AES").split(",") if a.strip())
        values: dict[str, object] = {
            "ae_title": text("ICHSEG_GATEWAY_AE_TITLE") or None,
            "host": text("ICHSEG_GATEWAY_HOST") or None,
            "port": number("ICHSEG_GATEWAY_PORT", int),
            "allowed_calling_aes": allowed or None,
            "idle_seconds": number("ICHSEG_GATEWAY_IDLE_SECONDS", float),
            "max_associations": number("ICHSEG_GATEWAY_MAX_ASSOCIATIONS", int),
            "association_request_seconds": number("ICHSEG_GATEWAY_ASSOCIATION_REQUEST_SECONDS", float),
            "max_spool_bytes": number("ICHSEG_GATEWAY_MAX_SPOOL_BYTES", int),
            "sent_retention_seconds": number("ICHSEG_GATEWAY_SENT_RETENTION_SECONDS", float),
            "destinations": parse_destinations(text("ICHSEG_GATEWAY_DESTINATIONS")) or None,
            "default_destination": (
                Destination.parse(text("ICHSEG_GATEWAY_DEFAULT_DESTINATION"))
                if text("ICHSEG_GATEWAY_DEFAULT_DESTINATION")
                else None
            ),
            "tls_certificate": path("ICHSEG_GATEWAY_TLS_CERTIFICATE"),
            "tls_key": path("ICHSEG_GATEWAY_TLS_KEY"),
            "tls_ca": path("ICHSEG_GATEWAY_TLS_CA"),
            "delivery_tls_ca": path("ICHSEG_GATEWAY_DELIVERY_TLS_CA"),
            "delivery_tls_ca_pem": pem("ICHSEG_GATEWAY_DELIVERY_TLS_CA_PEM"),
            "tls_certificate_pem": pem("ICHSEG_GATEWAY_TLS_CERTIFICATE_PEM"),
            "tls_key_pem": pem("ICHSEG_GATEWAY_TLS_KEY_PEM"),
            "delivery_attempts": number("ICHSEG_MAX_RECEIVE_COUNT", int),
            "delivery_backoff_seconds": number("ICHSEG_GATEWAY_DELIVERY_BACKOFF_SECONDS", float),
            "bucket": text("ICHSEG_BUCKET") or None,
            "table": text("ICHSEG_TABLE") or None,
            "delivery_queue_url": text("ICHSEG_DELIVERY_QUEUE_URL") or None,
            "poll_seconds": number("ICHSEG_GATEWAY_POLL_SECONDS", int),
            "status_port": number("ICHSEG_GATEWAY_STATUS_PORT", int),
            "status_host": text("ICHSEG_GATEWAY_STATUS_HOST") or None,
            "status_allowed_networks": parse_networks(text("ICHSEG_GATEWAY_STATUS_ALLOWED_NETWORKS")) or None,
            "hl7_destinations": per_site(text("ICHSEG_GATEWAY_HL7_DESTINATIONS"), parse_hl7_destination, "host:port")
            or None,
            "fhir_destinations": per_site(
                text("ICHSEG_GATEWAY_FHIR_DESTINATIONS"), parse_fhir_destination, "https://..."
            )
            or None,
            "fhir_ca": path("ICHSEG_GATEWAY_FHIR_CA"),
        }
        spool = text("ICHSEG_GATEWAY_SPOOL_DIR")
        if not spool:
            raise SettingsError("missing configuration: ICHSEG_GATEWAY_SPOOL_DIR")
        return cls(spool_dir=Path(spool), **{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
