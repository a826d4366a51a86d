"""ichseg names itself on the network: its Implementation Class UID and Version Name in every
association the gateway accepts (from a PACS) and requests (results back to a PACS), PS3.7 D.3.3.2."""

from __future__ import annotations

import threading
from typing import Any

from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from gateway.delivery import store_objects
from gateway.service import GatewayService
from gateway.settings import Destination
from ichseg.dicom_identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.scan_fixtures import dicom_bytes, new_instance


def test_the_gateway_accepts_associations_as_ichseg(gateway: GatewayService) -> None:
    host, port = gateway.address
    scu = AE(ae_title="SITEA")
    scu.add_requested_context(Verification)
    assoc = scu.associate(host, port, ae_title=gateway.settings.ae_title)
    try:
        assert assoc.is_established
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_results_go_back_to_the_pacs_from_ichseg() -> None:
    requestors: list[tuple[str, str]] = []
    received = threading.Event()

    def on_store(event: Any) -> int:
        requestor = event.assoc.requestor
        requestors.append((str(requestor.implementation_class_uid), requestor.implementation_version_name))
        received.set()
        return 0x0000

    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(Comprehensive3DSRStorage, ExplicitVRLittleEndian)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        sr = new_instance(Comprehensive3DSRStorage, "SR")
        sr.StudyInstanceUID, sr.SeriesInstanceUID = generate_uid(), generate_uid()
        port = server.server_address[1]
        result = store_objects("ICHSEG", Destination("PACS", "127.0.0.1", port), {"sr.dcm": dicom_bytes(sr)})
        assert result.stored == frozenset({"sr.dcm"}), result
        assert received.is_set()
        assert requestors == [(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)]
    finally:
        server.shutdown()
