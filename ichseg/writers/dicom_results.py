"""The DICOM objects a segmented DICOM series gets back: its SEG and its SR, built the same way by the
assemble stage and by ``ichseg segment``, and, where the site asked for it, the overlay series
(secondary captures with the outline burned in) as one zip of DICOM files.

None is ever fatal. A series a SEG cannot describe (a multi-frame instance, a header highdicom
refuses) gets none, a report the SR cannot carry gets the SEG alone, and an overlay series that
cannot be made leaves the SEG and SR; :attr:`DicomResults.unavailable` says why, for the log and the
CLI's summary.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ichseg.scan import DicomSeriesRef

SEG_FILE = "seg.dcm"
SR_FILE = "sr.dcm"
OVERLAY_SERIES_FILE = "overlay_series.zip"
"""The overlay series' instances, ``0001.dcm``... in slice order, stored (JPEG needs no deflate)."""


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
    overlay_slices: Sequence[np.ndarray] | None = None,
) -> DicomResults:
    """The SEG over ``headers`` (the source instances in slice order, as captured by
    :func:`ichseg.writers.dicom_seg.source_headers`) with ``masks``, and the SR of ``report`` beside it;
    with ``overlay_slices`` (the windowed slices, uint8), the overlay series too.

    Their UIDs come from ``job_id``, so building them again makes the very same instances.
    """
    from ichseg.writers.dicom_sc import OverlayUnavailable, build_overlay_series
    from ichseg.writers.dicom_seg import SegUnavailable, build_seg
    from ichseg.writers.dicom_sr import SrUnavailable, build_sr

    try:
        seg = build_seg(headers, masks, model_name, model_version, job_id)
    except SegUnavailable as exc:
        return DicomResults(unavailable=f"no DICOM SEG: {exc}")
    files = {SEG_FILE: seg}
    missing = []
    try:
        files[SR_FILE] = build_sr(headers, seg, report, model_name, model_version, job_id)
    except SrUnavailable as exc:
        missing.append(f"no DICOM SR: {exc}")
    if overlay_slices is not None:
        try:
            images = build_overlay_series(headers, overlay_slices, masks, report, model_version, job_id)
            files[OVERLAY_SERIES_FILE] = overlay_series_zip(images)
        except OverlayUnavailable as exc:
            missing.append(f"no overlay series: {exc}")
    return DicomResults(files, unavailable="; ".join(missing) or None)


def overlay_series_zip(images: Sequence[bytes]) -> bytes:
    """The overlay series' DICOM files as one zip (:data:`OVERLAY_SERIES_FILE`), byte-identical for
    identical images (fixed member times), so a re-run writes the same object."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for number, image in enumerate(images, start=1):
            archive.writestr(zipfile.ZipInfo(f"{number:04d}.dcm", date_time=(1980, 1, 1, 0, 0, 0)), image)
    return buffer.getvalue()


def local_job_id(series: DicomSeriesRef, model_version: str) -> str:
    """The job id ``ichseg segment`` derives its objects' UIDs from: the same series segmented by the
    same model makes the same SEG and SR (a PACS files a re-import once), another model new ones."""
    digest = hashlib.sha256(f"{series.series_instance_uid}|{model_version}".encode()).hexdigest()
    return f"local-{digest[:24]}"
