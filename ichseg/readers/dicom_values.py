"""Numbers out of DICOM attributes, as the readers and the series rules both read them.

pydicom gives DS/IS values as numbers, their text, or nothing; a vendor may leave a value empty or
malformed. Each helper answers None for anything it cannot read, and the caller decides what a
missing value means (fall back to InstanceNumber order, skip a series, ...).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def dicom_vector(dataset: Any, keyword: str, length: int) -> np.ndarray | None:
    """``dataset.<keyword>`` as a float vector of ``length`` values (ImagePositionPatient: 3,
    ImageOrientationPatient: 6), or None when absent, of another length or not numeric."""
    value = getattr(dataset, keyword, None) if dataset is not None else None
    try:
        if value is None or len(value) != length:
            return None
        return np.array([float(v) for v in value])
    except (TypeError, ValueError):
        return None


def dicom_float(value: object) -> float | None:
    """A DS/IS value (a number or its text) as a float; None when empty or not a number."""
    if value is None or value == "":
        return None
    try:
        return float(str(value))
    except (TypeError, ValueError):
        return None
