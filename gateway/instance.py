"""What the gateway checks of a received instance before it answers the C-STORE.

The instance arrives streamed into a file (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``); it is
read here with large values deferred, so checking an instance of any size reads its header only.
A failure is a :class:`Refusal`: its status goes back to the PACS, which reports or resends the
instance, and the instance is not spooled, so one bad instance never fails a whole study in the
pipeline. The checks are the ones the pipeline would otherwise fail the study on:

- the bytes decode, and no element runs past the end of the data set (truncated transfer) -> C000;
- the data set's SOP Class UID is the one the request was sent under (an MR data set on a CT
  presentation context) -> A900;
- Modality is ``CT`` exactly as the pipeline reads it (trailing padding is no part of a value; a
  lower-case ``ct`` is no valid CS value and the pipeline's series rules skip it) -> A900;
- study, series and SOP instance UIDs are UIDs -> C000, and the SOP instance UID is the request's -> A900;
- an image: Pixel Data is there with Rows, Columns, Bits Allocated > 0 -> A900, and native pixel
  data holds at least Rows x Columns x Samples per Pixel x Number of Frames x Bits Allocated / 8
  bytes (encapsulated: the fragments end with their delimiter) -> C000.

Reasons name attributes and SOP classes, never values that could identify a patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from gateway.spool import is_dicom_uid

DEFER_BYTES = 64 * 1024
"""Values larger than this (pixel data, big private blobs) are skipped, not read, when checking."""
PIXEL_DATA = Tag(0x7FE0, 0x0010)
UNDEFINED_LENGTH = 0xFFFFFFFF
REQUIRED_MODALITY = "CT"
"""What the pipeline's series rules segment (:class:`ichseg.readers.series_selection.SeriesRules`)."""


class StoreStatus(IntEnum):
    """The C-STORE response statuses the gateway answers (PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    """Refused: resend later (the spool is full or cannot be written)."""
    DOES_NOT_MATCH_SOP_CLASS = 0xA900
    """Error: the data set is not a CT image of the SOP class it was sent as."""
    CANNOT_UNDERSTAND = 0xC000
    """Error: the bytes do not decode, are truncated, or lack what names the instance."""


class Refusal(Exception):
    """An instance the gateway answers with a failure status and does not spool."""

    def __init__(self, status: StoreStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ReceivedInstance:
    """What the spool needs of an instance that passed the checks."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str


def check_instance(path: Path, request_sop_class: str, request_sop_instance: str) -> ReceivedInstance:
    """Check the received instance in ``path`` (DICOM file format) against its C-STORE request;
    :class:`Refusal` says what is wrong and which status answers it."""
    size = path.stat().st_size
    try:
        dataset = dcmread(path, defer_size=DEFER_BYTES)
        deflated = dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    except Exception:  # pydicom raises many kinds for damaged bytes (EOFError, ValueError, struct.error...)
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, "data set cannot be decoded") from None
    if not deflated:  # a deflated data set's offsets are in its inflated stream; zlib catches a cut one
        _check_complete(dataset, size)  # before values are converted: raw elements carry their offsets
    try:
        sop_class = str(dataset.get("SOPClassUID", "") or "")
        modality = str(dataset.get("Modality", "") or "")
        sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
        study_uid = str(dataset.get("StudyInstanceUID", "") or "")
        series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
    except Exception:
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, "data set cannot be decoded") from None
    if sop_class != request_sop_class:
        raise Refusal(
            StoreStatus.DOES_NOT_MATCH_SOP_CLASS,
            f"SOP class {_sop_name(sop_class)} sent as {_sop_name(request_sop_class)}",
        )
    if modality != REQUIRED_MODALITY:
        raise Refusal(StoreStatus.DOES_NOT_MATCH_SOP_CLASS, f"modality {modality[:16]!r} is not CT: ichseg segments CT")
    if not all(is_dicom_uid(uid) for uid in (sop_uid, study_uid, series_uid)):
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, "missing or malformed SOP/series/study instance UID")
    if sop_uid != request_sop_instance:
        raise Refusal(StoreStatus.DOES_NOT_MATCH_SOP_CLASS, "SOP instance UID differs from the request's")
    _check_pixels(dataset)
    return ReceivedInstance(sop_class, sop_uid, study_uid, series_uid)


def _check_complete(dataset: Dataset, size: int) -> None:
    """No element's value runs past the end of the file: a sender cut short mid-instance (pydicom
    reads a short value, or skips a deferred one, without a word)."""
    last_end = None
    for tag in dataset.keys():  # noqa: SIM118 - iterating the Dataset itself would convert (read) every value
        element = dataset.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            last_end = None  # a sequence or encapsulated value: pydicom read up to its delimiter
            continue
        last_end = element.value_tell + element.length
        if last_end > size:
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, f"data set truncated in {_keyword(tag)}")
    if last_end is not None and last_end != size:  # cut inside the next element's header
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, "data set truncated after its last whole element")


def _check_pixels(dataset: Dataset) -> None:
    """An image with its Image Pixel module, and as many pixel bytes as it says it has."""
    pixels = dataset.get_item(PIXEL_DATA, keep_deferred=True)  # its length, not its bytes
    if pixels is None:
        raise Refusal(StoreStatus.DOES_NOT_MATCH_SOP_CLASS, "no Pixel Data: a CT image storage instance is an image")
    try:
        rows, columns, bits = (int(dataset.get(k) or 0) for k in ("Rows", "Columns", "BitsAllocated"))
        samples = int(dataset.get("SamplesPerPixel") or 1)
        frames = int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise Refusal(StoreStatus.CANNOT_UNDERSTAND, "Image Pixel module values do not decode") from None
    if min(rows, columns, bits, samples, frames) <= 0:
        raise Refusal(
            StoreStatus.DOES_NOT_MATCH_SOP_CLASS, "Image Pixel module incomplete (Rows, Columns, Bits Allocated)"
        )
    length = pixels.length if isinstance(pixels, RawDataElement) else len(pixels.value or b"")
    compressed = UID(dataset.file_meta.TransferSyntaxUID).is_compressed
    if compressed:
        if length != UNDEFINED_LENGTH:
            raise Refusal(StoreStatus.CANNOT_UNDERSTAND, "compressed Pixel Data is not encapsulated")
        return  # its fragments were read up to their delimiter, or dcmread failed above
    needed = (rows * columns * samples * frames * bits + 7) // 8
    if length == UNDEFINED_LENGTH or length < needed:
        raise Refusal(
            StoreStatus.CANNOT_UNDERSTAND,
            f"Pixel Data holds {length if length != UNDEFINED_LENGTH else 'undefined'} bytes, the image needs {needed}",
        )


def _sop_name(uid: str) -> str:
    return (UID(uid).name if uid else "") or (uid[:40] or "none")


def _keyword(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
