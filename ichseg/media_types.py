"""The media types ichseg reads and writes, in one place: the uploads the API accepts (and the
presigned policy pins), and the Content-Type each result file is stored with.

Free of numpy and image libraries: the API's and the authorizer's slim images import it.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePath


class MediaType(StrEnum):
    """A Content-Type ichseg reads or writes."""

    MP4 = "video/mp4"
    QUICKTIME = "video/quicktime"
    AVI = "video/x-msvideo"
    ZIP = "application/zip"
    DICOM = "application/dicom"
    OCTET_STREAM = "application/octet-stream"
    JPEG = "image/jpeg"
    PNG = "image/png"
    GZIP = "application/gzip"
    JSON = "application/json"


UPLOAD_TYPES: tuple[MediaType, ...] = (
    MediaType.MP4,
    MediaType.QUICKTIME,
    MediaType.AVI,
    MediaType.ZIP,
    MediaType.DICOM,
    MediaType.OCTET_STREAM,
    MediaType.JPEG,
    MediaType.PNG,
    MediaType.GZIP,
)
"""Content-Type values a presigned upload may declare. The format is still sniffed from the bytes
(a declared type is a policy gate, never trusted for decoding). ``application/octet-stream`` is
NIfTI's (which has no registered type)."""

_BY_SUFFIX = {
    ".mp4": MediaType.MP4,
    ".mov": MediaType.QUICKTIME,
    ".avi": MediaType.AVI,
    ".zip": MediaType.ZIP,
    ".dcm": MediaType.DICOM,
    ".png": MediaType.PNG,
    ".jpg": MediaType.JPEG,
    ".jpeg": MediaType.JPEG,
    ".gz": MediaType.GZIP,
    ".nii": MediaType.OCTET_STREAM,
    ".json": MediaType.JSON,
}


def media_type_of(name: str) -> MediaType:
    """The Content-Type a file named ``name`` is stored or uploaded with (octet-stream if unknown)."""
    return _BY_SUFFIX.get(PurePath(name).suffix.lower(), MediaType.OCTET_STREAM)


MIRRORED_FILES = ("overlay.mp4", "report.json")
"""The results an app job's Firebase Storage copy holds (the app shows them; the rest stays in S3)."""
