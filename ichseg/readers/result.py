"""What a reader hands back: the scan and, for DICOM, the headers of the instances it read.

The DICOM SEG written at assembly must reference its source instances; the reader has parsed
every header once already, so it returns them rather than have the split decompress the upload
a second time to find them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ichseg.scan import Scan

if TYPE_CHECKING:  # reading a video must not load pydicom
    from pydicom.dataset import Dataset


@dataclass(frozen=True)
class ScanRead:
    """A scan and the source headers behind it."""

    scan: Scan
    dicom_headers: tuple[Dataset, ...] = ()
    """DICOM: the chosen series' instances in slice order (one for a multi-frame instance),
    parsed without pixel data; empty for every other input."""
