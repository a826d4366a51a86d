"""Inputs made of many files: a zip or a directory of slice images or of DICOM instances.

Members are read one at a time: slice images are kept (compressed, they are about the upload's
size), DICOM objects are reduced to their headers at once and their pixels read again only for
the chosen series (:mod:`ichseg.readers.dicom`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

from ichseg.errors import (
    CorruptScanError,
    InconsistentSeriesError,
    NoFramesError,
    ScanTooLargeError,
    UnsupportedFormatError,
)
from ichseg.limits import ScanLimits, check_scan_size
from ichseg.readers.archive import ZipMembers, is_junk
from ichseg.readers.detect import HEAD_BYTES, SLICE_CONTENTS, Content, detect_content
from ichseg.readers.images import decode_slice_image, stack_slices
from ichseg.readers.naming import natural_key
from ichseg.readers.result import ScanRead
from ichseg.scan import Scan

if TYPE_CHECKING:
    from ichseg.readers.dicom import DicomHeader

MASK_SUFFIX = "_HGE_Seg"
"""CT-ICH stores hemorrhage masks beside the slices as ``<n>_HGE_Seg.jpg``: never a slice."""

CT_ICH_WINDOW_FOLDERS = ("brain", "bone")
"""CT-ICH patient folders hold one sub-folder per window; ``brain`` is the one to segment."""


class _Members(Protocol):
    """Files of a zip or a folder: iterated one at a time as ``(index, path, bytes)``, and read
    again by index (the DICOM reader's pixel pass)."""

    def __iter__(self) -> Iterator[tuple[int, str, bytes]]: ...

    def read(self, index: int) -> bytes: ...


def read_zip(data: bytes, name: str, limits: ScanLimits) -> ScanRead:
    """A zip of slice images or of DICOM instances (one series or a study)."""
    with ZipMembers(data, name, limits) as members:
        return _read_members(members, kind="zip", what=name, limits=limits)


class _FolderMembers:
    """A folder's slice files, read from disk one at a time."""

    def __init__(self, root: Path, files: list[Path]) -> None:
        self.root = root
        self.files = files

    def __iter__(self) -> Iterator[tuple[int, str, bytes]]:
        for index, path in enumerate(self.files):
            yield index, path.relative_to(self.root).as_posix(), path.read_bytes()

    def read(self, index: int) -> bytes:
        return self.files[index].read_bytes()


def read_directory(path: Path, limits: ScanLimits) -> ScanRead:
    """A folder of slice images or DICOM files.

    Slices directly in the folder win; otherwise a CT-ICH patient folder (``brain/`` beside
    ``bone/``) reads its brain window; otherwise slices are gathered from sub-folders.
    """
    files = _slice_files(path, recursive=False)
    if not files and (path / "brain").is_dir():
        files = _slice_files(path / "brain", recursive=False)
    if not files:
        files = _slice_files(path, recursive=True)
    total = sum(f.stat().st_size for f in files)
    if total > limits.max_bytes:
        raise ScanTooLargeError(
            f"{path.name}: {total / 2**20:.1f} MiB of files; the limit is {limits.max_bytes / 2**20:.0f} MiB"
        )
    if len(files) > limits.max_archive_members:
        raise ScanTooLargeError(f"{path.name}: {len(files)} files; the limit is {limits.max_archive_members}")
    return _read_members(_FolderMembers(path, files), kind="directory", what=f"{path.name}/", limits=limits)


def _slice_files(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return [
        f
        for f in candidates
        if f.is_file() and not f.is_symlink() and not is_junk(PurePosixPath(f.relative_to(folder).as_posix()))
    ]


def _read_members(members: _Members, kind: str, what: str, limits: ScanLimits) -> ScanRead:
    """Sort the members into slice images and DICOM objects, one member in memory at a time.

    A DICOM object is reduced to its header as soon as it is read (its pixels are read again
    only if its series is chosen); a damaged one's error is kept and raised where a reader that
    parsed everything first would raise it, after the count and mixing checks.
    """
    images: dict[str, bytes] = {}
    dicoms: list[DicomHeader | CorruptScanError] = []
    ignored: dict[str, str] = {}
    for index, member_name, payload in members:
        content = detect_content(payload[:HEAD_BYTES])
        stem = PurePosixPath(member_name).stem
        if content in (Content.JPEG, Content.PNG) and not stem.endswith(MASK_SUFFIX):
            images[member_name] = payload
        elif content == Content.DICOM:
            from ichseg.readers.dicom import read_header  # pydicom only for DICOM input

            try:
                dicoms.append(read_header(index, member_name, payload))
            except CorruptScanError as exc:
                dicoms.append(exc)
        elif content not in SLICE_CONTENTS:
            ignored[member_name] = content.value
        del payload  # the header is all a DICOM member leaves behind
        if len(images) + len(dicoms) > limits.max_frames:
            raise ScanTooLargeError(
                f"{what} has more than {limits.max_frames} slices; the limit is {limits.max_frames}"
            )
    if images and dicoms:
        raise InconsistentSeriesError(
            f"{what} mixes {len(images)} slice images with {len(dicoms)} DICOM files; upload one kind"
        )
    if dicoms:
        from ichseg.readers.dicom import read_dicom_series

        return read_dicom_series(dicoms, members.read, fmt=f"dicom-{kind}", source=what, limits=limits)
    if not images:
        found = ", ".join(sorted({v for v in ignored.values()})) or "nothing"
        if ignored and all(v == Content.ZIP.value for v in ignored.values()):
            raise UnsupportedFormatError(f"{what} holds only nested zip archives; upload the slices themselves")
        raise NoFramesError(f"{what} holds no JPEG/PNG slices or DICOM files (found: {found})")
    return ScanRead(_images_to_scan(images, kind, what, limits))


def _images_to_scan(images: dict[str, bytes], kind: str, what: str, limits: ScanLimits) -> Scan:
    folders = {PurePosixPath(n).parent.as_posix() for n in images}
    if len(folders) > 1:
        raise InconsistentSeriesError(
            f"{what} has slice images in several folders ({', '.join(sorted(folders)[:4])}); "
            "point ichseg at one scan's folder"
        )
    names = sorted(images, key=lambda n: natural_key(PurePosixPath(n).name))
    stems = [PurePosixPath(n).stem for n in names]
    arrays = [decode_slice_image(images[n], n, limits) for n in names]
    slices = stack_slices(arrays, names, what)

    check_scan_size(limits, what, *slices.shape)
    return Scan(slices=slices, slice_ids=tuple(stems), format=f"image-{kind}", hu=False, source=what)
