"""The gateway's DICOM application entities, as ichseg names itself on the network."""

from __future__ import annotations

from pynetdicom import AE

from ichseg.dicom_identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def ichseg_ae(ae_title: str) -> AE:
    """A pynetdicom AE with ``ae_title`` that gives ichseg's Implementation Class UID and Version
    Name in every association it requests or accepts (PS3.7 D.3.3.2), not pynetdicom's."""
    ae = AE(ae_title=ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    return ae
