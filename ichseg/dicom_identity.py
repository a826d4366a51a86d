"""ichseg's own identity in DICOM: in every object it writes and every association it opens or accepts.

PS3.7 D.3.3.2: an implementation names itself by an Implementation Class UID (and, optionally, an
Implementation Version Name) in the A-ASSOCIATE exchange, and PS3.10 7.1 puts the same pair in the
file meta information of every DICOM file it writes. A PACS vendor's integration team reads them in
their logs to know which product (and which release of it) they are talking to; without them
ichseg's objects would carry highdicom's identity and its associations pynetdicom's.

The UID is ichseg's own, under the ``2.25`` root (PS3.5 B.2: a UUID as a UID, no registration
needed), fixed forever: it names the implementation, not a release. The version name changes with
each release (SH, at most 16 characters).
"""

from __future__ import annotations

import io

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ichseg import __version__

IMPLEMENTATION_CLASS_UID = "2.25.222616874271932370383073255249678550750"
"""``uuid5(NAMESPACE_URL, "https://ichseg/implementation")`` as a ``2.25`` UID."""

IMPLEMENTATION_VERSION_NAME = f"ICHSEG_{__version__}"
if len(IMPLEMENTATION_VERSION_NAME) > 16:  # SH: a release named too long must not make invalid files
    raise ValueError(f"implementation version name {IMPLEMENTATION_VERSION_NAME!r} exceeds 16 characters")


def dicom_file_bytes(dataset: Dataset) -> bytes:
    """``dataset`` as a DICOM file (PS3.10) whose file meta names ichseg as its implementation."""
    dataset.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    dataset.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
