"""Assemble: per-batch probabilities -> masks, the H.264 overlay, report, contact sheet, DICOM SEG.

The report is :func:`ichseg.segmentation.build_report`'s, built from the model identity and the
thresholds the endpoint returned with each batch, so the pipeline and ``ichseg segment`` write the
same document. Results go to ``results/{job}/``; an app job's video and report are mirrored to
Firebase Storage. Only then does the job become DONE (ASSEMBLING -> DONE is conditional, so a
duplicate assemble message finds the job DONE and does nothing).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.endpoint_protocol import ResponseAttributes, decode_slices, trim_context
from ichseg.model_metadata import ModelMetadata
from ichseg.pipeline import keys
from ichseg.pipeline.context import PipelineContext
from ichseg.pipeline.failures import fail_job, last_attempt_fails_job
from ichseg.pipeline.jobs import JobSource, JobState
from ichseg.pipeline.messages import AssembleMessage, BatchRef, ScanManifest
from ichseg.pipeline.mirror import MirrorFile, mirror_files
from ichseg.segmentation import Segmentation, build_report, masks_from_probabilities, write_outputs

log = logging.getLogger("ichseg.pipeline.assemble")

STAGE = "assemble"
CONTENT_TYPES = {".mp4": "video/mp4", ".png": "image/png", ".json": "application/json", ".dcm": "application/dicom"}
MIRRORED = ("overlay.mp4", "report.json")


@dataclass(frozen=True)
class AssembleResult:
    job_id: str
    outcome: str
    """``done``, ``duplicate`` (not ASSEMBLING any more) or ``failed`` (model changed mid-job)."""
    slices: int = 0
    seconds: float = 0.0
    end_to_end_seconds: float | None = None
    mirror_error: str | None = None


class ModelChanged(ValueError):
    """Batches of one job were segmented by different models or thresholds (a redeploy mid-job)."""


def assemble_results(ctx: PipelineContext, message: AssembleMessage, receive_count: int = 1) -> AssembleResult:
    """Write every result of a fully segmented job and mark it DONE (see the module doc)."""
    with last_attempt_fails_job(ctx, message.job_id, STAGE, receive_count):
        return _assemble(ctx, message.job_id)


def _assemble(ctx: PipelineContext, job_id: str) -> AssembleResult:
    started = time.perf_counter()
    job = ctx.store.require(job_id)
    if job.state != JobState.ASSEMBLING:
        log.info("assembly skipped: job is %s", job.state.value)
        return AssembleResult(job_id, "duplicate")
    manifest = ScanManifest.from_json(ctx.get(keys.manifest_key(job_id)))
    frames, probabilities, attributes = _load_batches(ctx, manifest)
    try:
        model, segmentation = combine(probabilities, attributes)
    except ModelChanged as exc:
        fail_job(ctx, job_id, "model_changed", f"{exc}; resubmit the scan", STAGE)
        return AssembleResult(job_id, "failed")
    report = build_report(
        manifest.slice_ids, segmentation, model, manifest.pixel_spacing_mm, manifest.slice_thickness_mm
    )
    results, files = _write_results(ctx, manifest, frames, segmentation, report, model)

    mirror_prefix = mirror_error = None
    if job.source == JobSource.APP and job.owner and ctx.mirror is not None:
        mirror_prefix = keys.mirror_prefix(job.owner, job_id)
        mirror_error = mirror_files(
            ctx.mirror,
            mirror_prefix,
            [MirrorFile(name, files[name], CONTENT_TYPES[Path(name).suffix]) for name in MIRRORED],
            attempts=ctx.config.mirror_attempts,
            sleep=ctx.sleep,
        )
        if mirror_error:
            ctx.metrics.add_metric("MirrorFailures", "Count", 1)

    ctx.store.mark_done(job_id, results, _summary(report), mirror_prefix, mirror_error)
    seconds = time.perf_counter() - started
    created = job.stamps.get("created")
    end_to_end = ctx.clock() - created if created else None
    ctx.metrics.add_metric("JobsCompleted", "Count", 1)
    if end_to_end is not None:
        ctx.metrics.add_metric("EndToEndLatency", "Seconds", round(end_to_end, 3))
    log.info("job DONE: %s, %d slices, assembled in %.2f s", report["finding"], manifest.num_slices, seconds)
    return AssembleResult(job_id, "done", manifest.num_slices, seconds, end_to_end, mirror_error)


def _load_batches(
    ctx: PipelineContext, manifest: ScanManifest
) -> tuple[np.ndarray, np.ndarray, list[ResponseAttributes]]:
    """Frames, probability maps (uint8 x255) and endpoint attributes of every batch, in slice order."""
    job_id = manifest.job_id

    def load(batch: BatchRef) -> tuple[np.ndarray, np.ndarray, ResponseAttributes]:
        frames = decode_slices(ctx.get(keys.frames_key(job_id, batch.batch_id)))
        return (
            trim_context(frames, batch.context_before, batch.context_after),
            decode_slices(ctx.get(keys.probabilities_key(job_id, batch.batch_id))),
            ResponseAttributes.decode(ctx.get(keys.attributes_key(job_id, batch.batch_id)).decode()),
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        loaded = list(pool.map(load, manifest.batches))
    frames = np.concatenate([f for f, _, _ in loaded])
    probabilities = np.concatenate([p for _, p, _ in loaded])
    if len(frames) != manifest.num_slices or probabilities.shape != frames.shape:
        raise ValueError(
            f"batches hold {frames.shape} frames / {probabilities.shape} maps for {manifest.num_slices} slices"
        )
    return frames, probabilities, [a for _, _, a in loaded]


def combine(probabilities_u8: np.ndarray, attributes: list[ResponseAttributes]) -> tuple[ModelMetadata, Segmentation]:
    """One model identity and one segmentation from the per-batch endpoint answers."""
    identities = {
        (a.model, a.version, a.slice_threshold, a.pixel_threshold, a.subtype_names, a.scan_threshold)
        for a in attributes
    }
    if len(identities) != 1:
        shown = ", ".join(f"{m} {v} (slice {s}, pixel {p})" for m, v, s, p, *_ in sorted(identities, key=str))
        raise ModelChanged(f"the endpoint's model changed while this job ran: {shown}")
    first = attributes[0]
    model = ModelMetadata(
        name=first.model,
        version=first.version,
        slice_threshold=first.slice_threshold,
        pixel_threshold=first.pixel_threshold,
        subtypes=first.subtype_names,
        scan_threshold=first.scan_threshold,
    )
    slice_probabilities = np.array([p for a in attributes for p in a.slice_probabilities], dtype=np.float32)
    subtypes = None
    if model.subtypes:
        subtypes = np.array([row for a in attributes for row in a.subtype_probabilities], dtype=np.float32)
    segmentation = masks_from_probabilities(
        probabilities_u8.astype(np.float32) / 255.0,
        slice_probabilities,
        model.pixel_threshold,
        model.slice_threshold,
        subtypes,
    )
    return model, segmentation


def _write_results(
    ctx: PipelineContext,
    manifest: ScanManifest,
    frames: np.ndarray,
    segmentation: Segmentation,
    report: dict[str, Any],
    model: ModelMetadata,
) -> tuple[dict[str, str], dict[str, bytes]]:
    """Render with :func:`write_outputs`, upload under ``results/{job}/``; (result keys, file bytes)."""
    prefix = keys.results_prefix(manifest.job_id)
    with tempfile.TemporaryDirectory(prefix="ichseg-assemble-") as tmp:
        out = Path(tmp)
        write_outputs(out, manifest.slice_ids, frames, segmentation, report, fps=ctx.config.video_fps, model=model)
        seg = _dicom_seg(ctx, manifest, segmentation, model)
        if seg is not None:
            (out / "seg.dcm").write_bytes(seg)
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    def upload(item: tuple[str, bytes]) -> None:
        name, data = item
        ctx.put(prefix + name, data, CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(upload, files.items()))
    results = {
        "overlay": prefix + "overlay.mp4",
        "report": prefix + "report.json",
        "contact_sheet": prefix + "contact_sheet.png",
        "masks": prefix + "masks/",
    }
    if "seg.dcm" in files:
        results["seg"] = prefix + "seg.dcm"
    return results, files


def _dicom_seg(
    ctx: PipelineContext, manifest: ScanManifest, segmentation: Segmentation, model: ModelMetadata
) -> bytes | None:
    """The DICOM SEG for DICOM input, or None (not DICOM, or a series a SEG cannot describe)."""
    if manifest.dicom is None or manifest.dicom.get("seg_unavailable"):
        return None
    from ichseg.pipeline.dicom_seg import SegUnavailable, build_seg

    headers = json.loads(ctx.get(keys.dicom_headers_key(manifest.job_id)))
    try:
        return build_seg(headers, segmentation.masks, model.name, model.version)
    except SegUnavailable as exc:
        log.warning("no DICOM SEG: %s", exc)
        return None


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The report's headline, kept on the job for the status API."""
    return {
        "finding": report["finding"],
        "hemorrhage_probability": report["hemorrhage_probability"],
        "slices_with_hemorrhage": len(report["slices_with_hemorrhage"]),
        "subtypes": report["subtypes"],
        "volume_ml": report["volume_ml"],
        "model": report["model"],
    }
