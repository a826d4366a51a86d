"""Typed errors for bad input.

Every error a user can cause carries a message a person can act on. They all derive from
:class:`ScanError`, so an edge (CLI, Lambda, HTTP) catches one type and reports ``str(error)``;
``code`` (an :class:`ErrorCode`) is the stable machine-readable name for job records and API responses.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a job FAILED: the closed set of codes in job records, the API and the OpenAPI schema."""

    BAD_SCAN = "bad_scan"
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT_SCAN = "corrupt_scan"
    NO_FRAMES = "no_frames"
    TOO_LARGE = "too_large"
    UNSAFE_ARCHIVE = "unsafe_archive"
    INCONSISTENT_SERIES = "inconsistent_series"
    NOT_CT = "not_ct"
    UNFIT_INPUT = "unfit_input"
    # The pipeline's own: a stage gave up after its last attempt, the watchdog, a model swap.
    SPLIT_FAILED = "split_failed"
    SEGMENT_FAILED = "segment_failed"
    ASSEMBLE_FAILED = "assemble_failed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    MODEL_CHANGED = "model_changed"


class ScanError(Exception):
    """Base class: the input cannot be turned into a scan. ``str()`` is the user-facing reason."""

    code = ErrorCode.BAD_SCAN


class UnsupportedFormatError(ScanError):
    """The content is recognised (or not) but is not a format ichseg reads."""

    code = ErrorCode.UNSUPPORTED_FORMAT


class CorruptScanError(ScanError):
    """The content looks like a supported format but cannot be decoded (truncated, damaged)."""

    code = ErrorCode.CORRUPT_SCAN


class NoFramesError(ScanError):
    """The input decodes but holds no slices."""

    code = ErrorCode.NO_FRAMES


class ScanTooLargeError(ScanError):
    """The input exceeds a configured limit (bytes, frames, pixels)."""

    code = ErrorCode.TOO_LARGE


class UnsafeArchiveError(ScanError):
    """A zip archive that would be dangerous to extract (bomb, path traversal, links)."""

    code = ErrorCode.UNSAFE_ARCHIVE


class InconsistentSeriesError(ScanError):
    """Slices that do not form one scan (several series, differing sizes or orientation)."""

    code = ErrorCode.INCONSISTENT_SERIES


class NotCTError(ScanError):
    """A DICOM object whose modality is not CT."""

    code = ErrorCode.NOT_CT


class UnfitScanError(ScanError):
    """A scan that reads, but not as head CT in a brain window (values clipped: no bone left)."""

    code = ErrorCode.UNFIT_INPUT
