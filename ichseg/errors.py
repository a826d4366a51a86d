"""Typed errors for bad input.

Every error a user can cause carries a message a person can act on. They all derive from
:class:`ScanError`, so an edge (CLI, Lambda, HTTP) catches one type and reports ``str(error)``;
``code`` is a stable machine-readable name for job records and API responses.
"""

from __future__ import annotations


class ScanError(Exception):
    """Base class: the input cannot be turned into a scan. ``str()`` is the user-facing reason."""

    code = "bad_scan"


class UnsupportedFormatError(ScanError):
    """The content is recognised (or not) but is not a format ichseg reads."""

    code = "unsupported_format"


class CorruptScanError(ScanError):
    """The content looks like a supported format but cannot be decoded (truncated, damaged)."""

    code = "corrupt_scan"


class NoFramesError(ScanError):
    """The input decodes but holds no slices."""

    code = "no_frames"


class ScanTooLargeError(ScanError):
    """The input exceeds a configured limit (bytes, frames, pixels)."""

    code = "too_large"


class UnsafeArchiveError(ScanError):
    """A zip archive that would be dangerous to extract (bomb, path traversal, links)."""

    code = "unsafe_archive"


class InconsistentSeriesError(ScanError):
    """Slices that do not form one scan (several series, differing sizes or orientation)."""

    code = "inconsistent_series"


class NotCTError(ScanError):
    """A DICOM object whose modality is not CT."""

    code = "not_ct"
