"""The DICOM objects a segmented DICOM series gets back: its SEG and its SR, built the same way by the
assemble stage and by ``ichseg segment``.

Neither is ever fatal. A series a SEG cannot describe (a multi-frame instance, a header highdicom
refuses) gets neither, and a report the SR cannot carry gets the SEG alone; :attr:`DicomResults.unavailable`
says why, for the log and the CLI's summary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ichseg.scan import DicomSeriesRef

SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"


@dataclass(frozen=True)
class DicomResults:
    """The files made (``seg.dcm``, ``sr.dcm``, by name) and, where one is missing, why."""

    files: dict[str, bytes] = field(default_factory=dict)
    unavailable: str | None = None


def dicom_results(
    headers: Sequence[dict[str, Any]],
    masks: np.ndarray,
    report: Mapping[str, Any],
    model_name: str,
    model_version: str,
    job_id: str,
) -> DicomResults:
    """The SEG over ``headers`` (the source instances in slice order, as captured by
    :func:`ichseg.writers.dicom_seg.source_headers`) with ``masks``, and the SR of ``report`` beside it.

    Their UIDs come from ``job_id``, so building them again makes the very same instances.
    """
    from ichseg.writers.dicom_seg import SegUnavailable, build_seg
    from ichseg.writers.dicom_sr import SrUnavailable, build_sr

    try:
        seg = build_seg(headers, masks, model_name, model_version, job_id)
    except SegUnavailable as exc:
        return DicomResults(unavailable=f"no DICOM SEG: {exc}")
    try:
        sr = build_sr(headers, seg, report, model_name, model_version, job_id)
    except SrUnavailable as exc:
        return DicomResults({SEG_FILE: seg}, unavailable=f"no DICOM SR: {exc}")
    return DicomResults({SEG_FILE: seg, SR_FILE: sr})


def local_job_id(series: DicomSeriesRef, model_version: str) -> str:
    """The job id ``ichseg segment`` derives its objects' UIDs from: the same series segmented by the
    same model makes the same SEG and SR (a PACS files a re-import once), another model new ones."""
    digest = hashlib.sha256(f"{series.series_instance_uid}|{model_version}".encode()).hexdigest()
    return f"local-{digest[:24]}"
