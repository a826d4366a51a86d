"""Content sniffing: what a blob of bytes is, decided from its magic bytes, never its file name."""

from __future__ import annotations

import gzip
import struct
import zlib
from enum import StrEnum


class Content(StrEnum):
    """What a blob holds, as far as its first bytes tell."""

    MP4 = "mp4"
    MOV = "mov"
    AVI = "avi"
    JPEG = "jpeg"
    PNG = "png"
    ZIP = "zip"
    DICOM = "dicom"
    NIFTI = "nifti"
    NIFTI_GZ = "nifti-gz"
    # Recognised but not read: named so the error says what was found.
    GIF = "GIF image"
    BMP = "BMP image"
    TIFF = "TIFF image"
    WEBP = "WebP image"
    PDF = "PDF document"
    MATROSKA = "Matroska/WebM video"
    MPEG_TS = "MPEG transport stream"
    ANALYZE = "Analyze/NIfTI header-only (.hdr/.img pair)"
    GZIP = "gzip data that is not NIfTI"
    NRRD = "NRRD volume"
    METAIMAGE = "MetaImage (.mha/.mhd) volume"
    NUMPY = "NumPy array file"
    HDF5 = "HDF5 file"
    TAR = "tar archive"
    SEVEN_ZIP = "7-Zip archive"
    RAR = "RAR archive"
    TEXT = "text"
    EMPTY = "empty file"
    UNKNOWN = "unrecognised content"


READABLE_SINGLE = {
    Content.MP4,
    Content.MOV,
    Content.AVI,
    Content.JPEG,
    Content.PNG,
    Content.ZIP,
    Content.DICOM,
    Content.NIFTI,
    Content.NIFTI_GZ,
}
"""Contents :func:`ichseg.readers.read_scan` accepts as a whole input."""

SLICE_CONTENTS = {Content.JPEG, Content.PNG, Content.DICOM}
"""Contents accepted as members of a zip or a directory (one slice, or one DICOM instance)."""

HEAD_BYTES = 1024
"""How many leading bytes :func:`detect_content` needs to decide."""

_QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}


def detect_content(head: bytes) -> Content:
    """Identify a blob from its first bytes (at least :data:`HEAD_BYTES` when available)."""
    if not head:
        return Content.EMPTY
    if head[4:8] == b"ftyp":
        return Content.MOV if head[8:12] == b"qt  " else Content.MP4
    if head[4:8] in _QUICKTIME_ATOMS:
        return Content.MOV
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return Content.AVI
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Content.WEBP
    if head[:3] == b"\xff\xd8\xff":
        return Content.JPEG
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return Content.PNG
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return Content.ZIP
    if head[128:132] == b"DICM" or _looks_like_raw_dicom(head):
        return Content.DICOM
    nifti = _nifti_kind(head)
    if nifti is not None:
        return nifti
    if head[:2] == b"\x1f\x8b":
        return Content.NIFTI_GZ if _nifti_kind(_gunzip_head(head)) == Content.NIFTI else Content.GZIP
    return _other_content(head)


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM dataset written without the 128-byte preamble (some old exporters do that)."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    vr = head[4:6]
    return vr.isalpha() and vr.isupper()


def _nifti_kind(head: bytes) -> Content | None:
    if len(head) >= 348:
        for order in "<>":
            (sizeof_hdr,) = struct.unpack(order + "i", head[:4])
            if sizeof_hdr == 348 and head[344:348] == b"n+1\x00":
                return Content.NIFTI
            if sizeof_hdr == 348 and head[344:348] == b"ni1\x00":
                return Content.ANALYZE
    if len(head) >= 8:
        for order in "<>":
            (sizeof_hdr,) = struct.unpack(order + "i", head[:4])
            if sizeof_hdr == 540 and head[4:8] == b"n+2\x00":
                return Content.NIFTI
    return None


def _gunzip_head(head: bytes) -> bytes:
    """Decompress just enough of a gzip stream to see a NIfTI header."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 348)
    except zlib.error:
        try:
            return gzip.decompress(head)[:348]
        except (OSError, EOFError):
            return b""


def _other_content(head: bytes) -> Content:
    signatures: list[tuple[bytes, int, Content]] = [
        (b"GIF8", 0, Content.GIF),
        (b"BM", 0, Content.BMP),
        (b"II*\x00", 0, Content.TIFF),
        (b"MM\x00*", 0, Content.TIFF),
        (b"%PDF", 0, Content.PDF),
        (b"\x1a\x45\xdf\xa3", 0, Content.MATROSKA),
        (b"NRRD", 0, Content.NRRD),
        (b"\x93NUMPY", 0, Content.NUMPY),
        (b"\x89HDF", 0, Content.HDF5),
        (b"ustar", 257, Content.TAR),
        (b"7z\xbc\xaf\x27\x1c", 0, Content.SEVEN_ZIP),
        (b"Rar!", 0, Content.RAR),
    ]
    for magic, offset, content in signatures:
        if head[offset : offset + len(magic)] == magic:
            return content
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return Content.MPEG_TS
    if head.startswith((b"ObjectType", b"NDims")):
        return Content.METAIMAGE
    try:
        head[:512].decode("utf-8")
    except UnicodeDecodeError:
        return Content.UNKNOWN
    return Content.TEXT
