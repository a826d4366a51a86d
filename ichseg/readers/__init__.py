"""Readers: one module per input family, each turning bytes into a :class:`ichseg.scan.Scan`.

:func:`read_scan` is the single entry point: it detects the format from content and hands the bytes
to the reader for that family (imported only when needed, so reading a video never loads pydicom).
The readers import the types in :mod:`ichseg.scan`, never this dispatcher.
"""

from __future__ import annotations

import os
from pathlib import Path

from ichseg.errors import ScanTooLargeError, UnsupportedFormatError
from ichseg.limits import ScanLimits
from ichseg.readers.detect import HEAD_BYTES, READABLE_SINGLE, Content, detect_content
from ichseg.readers.result import ScanRead
from ichseg.scan import Scan

__all__ = ["ScanRead", "read_scan", "read_scan_and_headers"]


def read_scan(source: str | os.PathLike[str] | bytes, limits: ScanLimits | None = None) -> Scan:
    """Read any supported input: a path (file or directory) or the bytes of an upload.

    The format is detected from content. Raises a :class:`ichseg.errors.ScanError` subclass with
    a user-facing message for anything that is not a readable, reasonably sized CT scan.
    """
    return read_scan_and_headers(source, limits).scan


def read_scan_and_headers(source: str | os.PathLike[str] | bytes, limits: ScanLimits | None = None) -> ScanRead:
    """:func:`read_scan`, plus the headers (no pixel data) of the DICOM instances it read, in slice
    order: what the split keeps for the DICOM SEG, collected in the same pass over the upload."""
    limits = limits or ScanLimits.from_env()
    if isinstance(source, bytes | bytearray | memoryview):
        return _read_blob(bytes(source), name="upload", limits=limits)
    path = Path(source)
    if path.is_dir():
        from ichseg.readers.collection import read_directory

        return read_directory(path, limits)
    if not path.exists():
        raise UnsupportedFormatError(f"{path}: no such file or directory")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ScanTooLargeError(
            f"{path.name} is {size / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB"
        )
    return _read_blob(path.read_bytes(), name=path.name, limits=limits)


def _read_blob(data: bytes, name: str, limits: ScanLimits) -> ScanRead:
    if len(data) > limits.max_bytes:
        raise ScanTooLargeError(
            f"{name} is {len(data) / 2**20:.1f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB"
        )
    content = detect_content(data[:HEAD_BYTES])
    if content not in READABLE_SINGLE:
        raise UnsupportedFormatError(
            f"{name}: detected {content.value}; ichseg reads MP4/MOV or AVI videos, JPEG/PNG slices "
            "(alone, zipped or in a folder), DICOM (an instance or a zipped series) and NIfTI volumes"
        )
    if content in (Content.MP4, Content.MOV, Content.AVI):
        from ichseg.readers.video import read_video

        return ScanRead(read_video(data, content, name, limits))
    if content in (Content.JPEG, Content.PNG):
        from ichseg.readers.images import read_single_image

        return ScanRead(read_single_image(data, content, name, limits))
    if content == Content.ZIP:
        from ichseg.readers.collection import read_zip

        return read_zip(data, name, limits)
    if content == Content.DICOM:
        from ichseg.readers.dicom import read_dicom_series, read_header

        header = read_header(0, name, data)
        return read_dicom_series([header], lambda _: data, fmt="dicom", source=name, limits=limits)
    from ichseg.readers.nifti import read_nifti

    return ScanRead(read_nifti(data, content, name, limits))
