"""Safe reading of zip uploads: every check happens on the central directory, before extraction."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath

from ichseg.errors import CorruptScanError, ScanTooLargeError, UnsafeArchiveError, UnsupportedFormatError
from ichseg.limits import ScanLimits

_JUNK_PARTS = {"__MACOSX"}
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "DICOMDIR"}


def is_junk(path: PurePosixPath) -> bool:
    """Files that archivers and viewers add next to the slices (resource forks, indexes)."""
    return any(part in _JUNK_PARTS for part in path.parts) or path.name in _JUNK_NAMES or path.name.startswith(".")


def _check_member_name(name: str) -> None:
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"zip member {name!r} has an absolute or non-POSIX path; refusing to extract")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"zip member {name!r} points outside the archive ('..'); refusing to extract")


def iter_zip_members(data: bytes, name: str, limits: ScanLimits) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member path, bytes)`` for the regular files of a zip, junk excluded.

    Declared sizes, compression ratios, member count, names and link entries are all checked
    before a single member is decompressed; reads are then capped at the declared size so a
    lying header cannot inflate past the limits.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise CorruptScanError(f"{name}: the zip archive is truncated or damaged ({exc})") from exc
    if len(infos) > limits.max_archive_members:
        raise ScanTooLargeError(f"{name}: {len(infos)} entries in the zip; the limit is {limits.max_archive_members}")
    files = []
    total = 0
    for info in infos:
        _check_member_name(info.filename)
        if info.is_dir():
            continue
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"zip member {info.filename!r} is a symbolic link; refusing to extract")
        if info.flag_bits & 0x1:
            raise UnsupportedFormatError(f"{name}: zip member {info.filename!r} is encrypted; upload it unencrypted")
        if is_junk(PurePosixPath(info.filename)):
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_compression_ratio:
            raise UnsafeArchiveError(
                f"{name}: zip member {info.filename!r} expands {ratio:.0f}x "
                f"({info.compress_size} -> {info.file_size} bytes), beyond the {limits.max_compression_ratio:.0f}x "
                "allowed; this looks like a zip bomb"
            )
        total += info.file_size
        files.append(info)
    if total > limits.max_uncompressed_bytes:
        raise ScanTooLargeError(
            f"{name}: the zip expands to {total / 2**20:.0f} MiB; the limit is "
            f"{limits.max_uncompressed_bytes / 2**20:.0f} MiB"
        )
    with archive:
        for info in files:
            try:
                with archive.open(info) as member:
                    payload = member.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
                raise CorruptScanError(f"{name}: zip member {info.filename!r} cannot be extracted ({exc})") from exc
            if len(payload) != info.file_size:
                raise UnsafeArchiveError(
                    f"{name}: zip member {info.filename!r} does not match its declared size; refusing it"
                )
            yield info.filename, payload


def redact_member_names(message: str, data: bytes) -> str:
    """``message`` with every path of the zip ``data`` replaced by its place in the archive.

    Hospital routers name folders and files after patients (``DOE_JANE_MRN123/IM0001``); a reason
    that quotes a member's path would carry the patient into job records, the API and logs. The
    member's number still tells a site which file it was.
    """
    try:
        names = [info.filename for info in zipfile.ZipFile(io.BytesIO(data)).infolist()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError):
        return message
    # Longest first: a folder's path is a prefix of its files' paths.
    order = sorted(range(len(names)), key=lambda i: len(names[i]), reverse=True)
    for index in order:
        if names[index]:
            message = message.replace(names[index], f"member #{index + 1}")
    return message
