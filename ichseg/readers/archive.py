"""Safe reading of zip uploads: every check happens on the central directory, before extraction.

Members are then read one at a time (:class:`ZipMembers`): a study of a few hundred instances is
never all in memory at once, and each read is capped at the member's declared size and counted
against the decompressed-bytes budget as it streams.
"""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from types import TracebackType

from ichseg.errors import CorruptScanError, ScanTooLargeError, UnsafeArchiveError, UnsupportedFormatError
from ichseg.limits import ScanLimits

_JUNK_PARTS = {"__MACOSX"}
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "DICOMDIR"}

READ_CHUNK = 8 * 1024 * 1024
"""Bytes decompressed per read: a CT instance (~0.5 MB) is one read; a larger member is read in
chunks, each counted against the budget before the next is decompressed."""


def is_junk(path: PurePosixPath) -> bool:
    """Files that archivers and viewers add next to the slices (resource forks, indexes)."""
    return any(part in _JUNK_PARTS for part in path.parts) or path.name in _JUNK_NAMES or path.name.startswith(".")


def _check_member_name(name: str) -> None:
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"zip member {name!r} has an absolute or non-POSIX path; refusing to extract")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"zip member {name!r} points outside the archive ('..'); refusing to extract")


def _expands_too_far(name: str, size: int, limits: ScanLimits) -> ScanTooLargeError:
    return ScanTooLargeError(
        f"{name}: the zip expands to {size / 2**20:.0f} MiB; the limit is "
        f"{limits.max_uncompressed_bytes / 2**20:.0f} MiB"
    )


class ZipMembers:
    """The regular files of a zip upload (junk excluded), checked up front, read one at a time.

    Declared sizes, compression ratios, member count, names and link entries are all checked
    before a single member is decompressed (the constructor raises). Iterating yields
    ``(index, member path, bytes)``, one member alive at a time on the caller's side; every read
    is capped at the declared size (a lying header cannot inflate past the limits) and the bytes
    actually decompressed are counted against ``max_uncompressed_bytes`` as they stream.
    :meth:`read` reads one member again by its index (the DICOM reader's pixel pass).
    """

    def __init__(self, data: bytes, name: str, limits: ScanLimits) -> None:
        self.name = name
        self.limits = limits
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            infos = archive.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
            raise CorruptScanError(f"{name}: the zip archive is truncated or damaged ({exc})") from exc
        if len(infos) > limits.max_archive_members:
            archive.close()
            raise ScanTooLargeError(
                f"{name}: {len(infos)} entries in the zip; the limit is {limits.max_archive_members}"
            )
        try:
            self.files = self._regular_files(infos)
        except Exception:
            archive.close()
            raise
        self._archive = archive

    def _regular_files(self, infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
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
                raise UnsupportedFormatError(
                    f"{self.name}: zip member {info.filename!r} is encrypted; upload it unencrypted"
                )
            if is_junk(PurePosixPath(info.filename)):
                continue
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > self.limits.max_compression_ratio:
                raise UnsafeArchiveError(
                    f"{self.name}: zip member {info.filename!r} expands {ratio:.0f}x "
                    f"({info.compress_size} -> {info.file_size} bytes), beyond the "
                    f"{self.limits.max_compression_ratio:.0f}x allowed; this looks like a zip bomb"
                )
            total += info.file_size
            files.append(info)
        if total > self.limits.max_uncompressed_bytes:
            raise _expands_too_far(self.name, total, self.limits)
        return files

    def __enter__(self) -> ZipMembers:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._archive.close()

    def __iter__(self) -> Iterator[tuple[int, str, bytes]]:
        spent = 0
        for index, info in enumerate(self.files):
            payload = self._read(info, budget_left=self.limits.max_uncompressed_bytes - spent)
            spent += len(payload)
            yield index, info.filename, payload

    def read(self, index: int) -> bytes:
        """Member ``index`` (its place in iteration order) again; the same caps apply to it alone."""
        return self._read(self.files[index], budget_left=self.limits.max_uncompressed_bytes)

    def _read(self, info: zipfile.ZipInfo, budget_left: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            with self._archive.open(info) as member:
                # One byte past the declared size tells a member that holds more than it declares.
                while size <= info.file_size:
                    chunk = member.read(min(READ_CHUNK, info.file_size + 1 - size))
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > budget_left:
                        raise _expands_too_far(
                            self.name, self.limits.max_uncompressed_bytes - budget_left + size, self.limits
                        )
                    chunks.append(chunk)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError) as exc:
            raise CorruptScanError(f"{self.name}: zip member {info.filename!r} cannot be extracted ({exc})") from exc
        if size != info.file_size:
            raise UnsafeArchiveError(
                f"{self.name}: zip member {info.filename!r} does not match its declared size; refusing it"
            )
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def iter_zip_members(data: bytes, name: str, limits: ScanLimits) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member path, bytes)`` for the regular files of a zip, junk excluded, one at a time
    (see :class:`ZipMembers` for the checks)."""
    with ZipMembers(data, name, limits) as members:
        for _, member_name, payload in members:
            yield member_name, payload


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
