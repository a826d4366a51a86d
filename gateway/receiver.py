"""The C-STORE SCP: CT instances in, onto the spool; C-ECHO answered.

Only CT image storage (and Verification) is offered, so a PACS proposing anything else (MR,
secondary capture, SR, RT...) has that presentation context rejected at association time, before a
byte of it arrives. An instance is acknowledged (0x0000) only once its file is durably in the spool,
under its study and series (the study is what completes and is uploaded: :mod:`gateway.uploader`).
"""

from __future__ import annotations

import logging
import ssl
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
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from gateway.settings import GatewaySettings, SettingsError, site_of
from gateway.spool import SeriesRef, Spool, SpoolFull, is_dicom_uid
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

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


def _status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment the sending PACS shows (LO: 64 characters)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


class Receiver:
    """The AE and its C-STORE/C-ECHO handlers over a :class:`~gateway.spool.Spool`."""

    def __init__(self, settings: GatewaySettings, spool: Spool, metrics: MetricsSink) -> None:
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.require_calling_aet = list(settings.allowed_calling_aes)
        # A PACS configured with another node's AE title for this address is misrouting: refuse it
        # (called AE title not recognised) rather than file its studies under a site by mistake.
        self.ae.require_called_aet = True
        self.ae.maximum_associations = settings.max_associations
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
            evt_handlers=[(evt.EVT_C_STORE, self.handle_store), (evt.EVT_C_ECHO, self.handle_echo)],
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

    def handle_echo(self, event: Any) -> int:
        return SUCCESS

    def handle_store(self, event: Any) -> int | Dataset:
        """Validate one instance and write it to the spool; the status tells the PACS what happened."""
        try:
            site = site_of(event.assoc.requestor.ae_title)
        except SettingsError:
            return _status(CANNOT_UNDERSTAND, "calling AE title gives no site name")
        try:
            dataset = event.dataset
            modality = str(dataset.get("Modality", "")).strip().upper()
            sop_uid = str(dataset.get("SOPInstanceUID", ""))
            study_uid = str(dataset.get("StudyInstanceUID", ""))
            series_uid = str(dataset.get("SeriesInstanceUID", ""))
        except Exception:  # a data set pydicom cannot decode under the negotiated transfer syntax
            log.warning("C-STORE from %s refused: data set cannot be decoded", site)
            return _status(CANNOT_UNDERSTAND, "data set cannot be decoded")
        if modality != "CT":
            log.warning("C-STORE from %s refused: modality %r is not CT", site, modality[:16])
            self.metrics.add_metric("GatewayInstancesRefused", "Count", 1)
            return _status(DOES_NOT_MATCH_SOP_CLASS, f"modality {modality[:16]!r} is not CT: ichseg segments CT")
        if not all(is_dicom_uid(uid) for uid in (sop_uid, study_uid, series_uid)):
            log.warning("C-STORE from %s refused: missing or malformed instance/series/study UID", site)
            return _status(CANNOT_UNDERSTAND, "missing or malformed SOP/series/study instance UID")
        if sop_uid != str(event.request.AffectedSOPInstanceUID):
            return _status(DOES_NOT_MATCH_SOP_CLASS, "SOP instance UID differs from the request's")
        try:
            self.spool.store(SeriesRef(site, study_uid, series_uid), sop_uid, event.encoded_dataset())
        except SpoolFull:
            log.error("C-STORE from %s refused: the spool is full (%d bytes)", site, self.spool.used_bytes)
            self.metrics.add_metric("GatewaySpoolFull", "Count", 1)
            return _status(OUT_OF_RESOURCES, "gateway spool full: resend later")
        except OSError as exc:
            log.error("C-STORE from %s failed writing the spool: %s", site, exc.strerror)
            return _status(OUT_OF_RESOURCES, "gateway cannot write its spool: resend later")
        return SUCCESS
