"""Slice naming and ordering shared by the readers."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list[object]:
    """Sort key that orders embedded numbers by value: ``2.jpg`` before ``10.jpg``."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


def index_ids(count: int) -> tuple[str, ...]:
    """Ids for slices that have no name of their own (video frames, DICOM instances, NIfTI
    slices): the 0-based index, zero-padded so that ids sort as the slices do."""
    width = max(4, len(str(max(count - 1, 0))))
    return tuple(f"{i:0{width}d}" for i in range(count))
