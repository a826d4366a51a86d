"""The C-STORE SCP: CT instances in, onto the spool; C-ECHO answered.

Only CT image storage (and Verification) is offered, so a PACS proposing anything else (MR,
secondary capture, SR, RT...) has that presentation context rejected at association time, before a
byte of it arrives. An instance is acknowledged (0x0000) only once it passed the checks of
:mod:`gateway.instance` and its file is durably in the spool, under its study and series (the study
is what completes and is uploaded: :mod:`gateway.uploader`).

Memory: each instance is streamed by pynetdicom into a file in the system temp dir as its PDUs
arrive (``STORE_RECV_CHUNKED_DATASET``), checked from its header, and copied to the spool in 1 MiB
chunks, so an association costs about one PDU and one chunk whatever the instance's size (a 200 MiB
Enhanced CT instance, decoded in memory, once took the gateway from 124 to 728 MiB).

Slots: an association counts against ``max_associations`` from its A-ASSOCIATE-RQ until it is
released or aborted. pynetdicom's own limit counts every open TCP connection, so a load balancer's
bare health-check connections (held ~30 s each by its default timeouts) starved real PACS; here
such a connection takes no slot and is closed after ``association_request_seconds``.
"""

from __future__ import annotations

import logging
import ssl
import threading
from enum import Enum
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import _config, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from gateway.application_entity import ichseg_ae
from gateway.instance import Refusal, StoreStatus, check_instance
from gateway.settings import GatewaySettings, SettingsError, site_of
from gateway.spool import SeriesRef, Spool, SpoolFull
from ichseg.pipeline.context import MetricsSink

log = logging.getLogger("gateway.receiver")

CT_STORAGE = (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
"""What ichseg's readers decode (pydicom, with python-gdcm for the compressed ones)."""

UNLIMITED_CONNECTIONS = 10_000
"""pynetdicom's limit, counting TCP connections, set out of the way: :meth:`Receiver.admit` applies ours."""


class Rejection(Enum):
    """The A-ASSOCIATE-RJ the gateway sends itself, as (result, source, reason) (PS3.8 9.3.4)."""

    LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
    """Transient, presentation-service provider, local limit exceeded: the PACS retries later."""
    CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
    """Permanent, service user, calling AE title not recognised: it names no site."""


def _status(code: StoreStatus, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment the sending PACS shows (LO: 64 characters)."""
    status = Dataset()
    status.Status = int(code)
    status.ErrorComment = comment[:64]
    return status


class Receiver:
    """The AE and its C-STORE/C-ECHO handlers over a :class:`~gateway.spool.Spool`."""

    def __init__(self, settings: GatewaySettings, spool: Spool, metrics: MetricsSink) -> None:
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.ae = ichseg_ae(settings.ae_title)
        self.ae.require_calling_aet = list(settings.allowed_calling_aes)
        # A PACS configured with another node's AE title for this address is misrouting: refuse it
        # (called AE title not recognised) rather than file its studies under a site by mistake.
        self.ae.require_called_aet = True
        self.ae.maximum_associations = UNLIMITED_CONNECTIONS
        # The wait for the A-ASSOCIATE-RQ after a connection opens (and the ARTIM timer): a few
        # seconds, not pynetdicom's 30, so bare connections are gone quickly.
        self.ae.acse_timeout = settings.association_request_seconds
        # Instances stream into a file as they arrive (process-wide in pynetdicom; no other SCP here).
        _config.STORE_RECV_CHUNKED_DATASET = True
        self._slots_lock = threading.Lock()
        self._admitted: set[Any] = set()
        self.ae.add_supported_context(Verification)
        for sop_class in CT_STORAGE:
            self.ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        self.server: ThreadedAssociationServer | None = None

    def start(self) -> tuple[str, int]:
        """Listen (non-blocking); returns the bound address (port 0 picks a free port)."""
        self.server = self.ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            ssl_context=self._ssl_context(),
            evt_handlers=[
                (evt.EVT_REQUESTED, self.handle_request),
                (evt.EVT_C_STORE, self.handle_store),
                (evt.EVT_C_ECHO, self.handle_echo),
            ],
        )
        assert self.server is not None  # block=False always returns the server
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        """Stop listening and end the associations in progress (their unacknowledged instances are resent)."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if settings.tls_certificate is None or settings.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(settings.tls_certificate, settings.tls_key)
        if settings.tls_ca is not None:
            context.load_verify_locations(settings.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    @property
    def associations(self) -> int:
        """Associations holding a slot now (requested, not yet released or aborted)."""
        with self._slots_lock:
            return len(self._live())

    def _live(self) -> set[Any]:
        """The admitted associations still going (caller holds the lock); forgets the ended ones."""
        self._admitted = {a for a in self._admitted if a.is_alive() and not (a.is_released or a.is_aborted)}
        return self._admitted

    def admit(self, assoc: Any) -> Rejection | None:
        """Take a slot for an association whose A-ASSOCIATE-RQ just arrived; the rejection if none."""
        try:  # requestor.ae_title is filled in later, by pynetdicom's negotiation
            site_of(str(assoc.requestor.primitive.calling_ae_title))
        except SettingsError:
            return Rejection.CALLING_AE_NOT_RECOGNISED  # a title no site can be named after: nothing could be filed
        with self._slots_lock:
            if len(self._live()) >= self.settings.max_associations:
                return Rejection.LOCAL_LIMIT_EXCEEDED
            self._admitted.add(assoc)
        return None

    def handle_request(self, event: Any) -> None:
        """EVT_REQUESTED: admit the association or reject it (pynetdicom then skips its negotiation)."""
        rejection = self.admit(event.assoc)
        if rejection is not None:
            log.warning("association refused: %s", rejection.name.lower().replace("_", " "))
            event.assoc.acse.send_reject(*rejection.value)
            event.assoc.kill()

    def handle_echo(self, event: Any) -> int:
        return int(StoreStatus.SUCCESS)

    def handle_store(self, event: Any) -> int | Dataset:
        """Check one instance and copy it to the spool; the status tells the PACS what happened."""
        try:
            site = site_of(event.assoc.requestor.ae_title)
        except SettingsError:  # admit() refused such titles already
            return _status(StoreStatus.CANNOT_UNDERSTAND, "calling AE title gives no site name")
        path = Path(event.dataset_path)
        try:
            instance = check_instance(
                path, str(event.request.AffectedSOPClassUID), str(event.request.AffectedSOPInstanceUID)
            )
        except Refusal as refusal:
            log.warning("C-STORE from %s refused (%04X): %s", site, refusal.status, refusal.reason)
            self.metrics.add_metric("GatewayInstancesRefused", "Count", 1)
            return _status(refusal.status, refusal.reason)
        try:
            self.spool.store_file(
                SeriesRef(site, instance.study_uid, instance.series_uid), instance.sop_instance_uid, path
            )
        except SpoolFull:
            log.error("C-STORE from %s refused: the spool is full (%d bytes)", site, self.spool.accounted_bytes)
            self.metrics.add_metric("GatewaySpoolFull", "Count", 1)
            return _status(StoreStatus.OUT_OF_RESOURCES, "gateway spool full: resend later")
        except OSError as exc:
            log.error("C-STORE from %s failed writing the spool: %s", site, exc.strerror or exc)
            return _status(StoreStatus.OUT_OF_RESOURCES, "gateway cannot write its spool: resend later")
        return int(StoreStatus.SUCCESS)
