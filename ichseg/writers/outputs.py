"""The result files people look at: the captioned overlay video, the contact sheet, mask PNGs and
plain frames, rendered batch by batch and joined (:func:`output_files`), or written at once by
``ichseg segment`` (:func:`write_outputs`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ichseg.model_metadata import ModelMetadata
from ichseg.segmentation import Segmentation
from ichseg.writers.render import (
    OVERLAY_CRF,
    OVERLAY_PRESET,
    caption_frame,
    concat_h264,
    contact_sheet_from_thumbnails,
    encode_h264_segment,
    overlay_mask,
    png_bytes,
    thumbnail,
)
from ichseg.writers.report import Report

SUBTYPE_SHOWN_FROM = 0.5
"""A subtype is named on a slice's overlay and contact-sheet caption from this (calibrated)
probability; report.json carries every probability."""


def slice_captions(
    slice_ids: tuple[str, ...] | list[str], segmentation: Segmentation, model: ModelMetadata
) -> list[str]:
    """One line per slice for people: id, probability and, on hemorrhage slices, the likely subtypes."""
    captions = []
    for index, (slice_id, p) in enumerate(zip(slice_ids, segmentation.slice_probabilities, strict=True)):
        text = f"{slice_id} {p:.2f}"
        if p >= model.slice_threshold and segmentation.subtype_probabilities is not None:
            row = segmentation.subtype_probabilities[index]
            named = [f"{name} {q:.2f}" for name, q in zip(model.subtypes, row, strict=True) if q >= SUBTYPE_SHOWN_FROM]
            text += " " + ", ".join(named) if named else ""
        captions.append(text)
    return captions


@dataclass(frozen=True)
class RenderedSlices:
    """What people see of a run of consecutive slices: rendered once, joined by :func:`output_files`."""

    video: bytes
    """The captioned overlays as one :func:`ichseg.writers.render.encode_h264_segment` segment."""
    thumbnails: tuple[np.ndarray, ...]
    """The (uncaptioned) overlays as contact-sheet thumbnails."""
    mask_pngs: tuple[bytes, ...]
    """Each slice's mask as a 0/255 PNG."""
    frame_jpegs: tuple[bytes, ...] = ()
    """Each windowed slice without overlay or caption as a grey JPEG (the viewer's "overlay off";
    empty where a caller has no use for them)."""


def render_slices(
    slices_u8: np.ndarray, masks: np.ndarray, labels: Sequence[str], fps: float = 5.0, threads: int = 0
) -> RenderedSlices:
    """Overlays, captions, the video segment, thumbnails and mask PNGs of consecutive slices.

    Each slice's overlay is made once and used for its thumbnail and (captioned in place) its
    video frame. ``threads`` is x264's (0: its choice; 1 where the caller runs beside other work).
    """
    overlays = [overlay_mask(s, m) for s, m in zip(slices_u8, masks, strict=True)]
    # The contact sheet shows the overlays without the video's caption (the sheet has its own labels).
    thumbnails = tuple(thumbnail(o) for o in overlays)
    for frame, text in zip(overlays, labels, strict=True):
        caption_frame(frame, text)
    video = encode_h264_segment(overlays, fps=fps, crf=OVERLAY_CRF, preset=OVERLAY_PRESET, threads=threads)
    frames = tuple(frame_jpeg(s) for s in slices_u8)
    return RenderedSlices(video, thumbnails, tuple(mask_png(m) for m in masks), frames)


FRAME_JPEG_QUALITY = 90
"""Plain slices for the viewer: at 90 a 512x512 grey slice is ~20-40 KB and shows no blocking at
CT window contrast; encoding costs under a millisecond (libjpeg-turbo via OpenCV)."""


def frame_jpeg(slice_u8: np.ndarray) -> bytes:
    """One windowed slice as a grey JPEG, for the viewer to draw its own (switchable) outline on."""
    import cv2

    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(slice_u8, dtype=np.uint8), [cv2.IMWRITE_JPEG_QUALITY, FRAME_JPEG_QUALITY]
    )
    if not ok:
        raise ValueError(f"cannot encode a slice of shape {slice_u8.shape} as JPEG")
    return bytes(data)


def mask_png(mask: np.ndarray) -> bytes:
    """One slice's mask as a 0/255 8-bit grey PNG; the (usual) empty mask is encoded once per size."""
    if not mask.any():
        return _empty_mask_png(*mask.shape)
    return png_bytes(mask.astype(np.uint8) * 255)


@lru_cache(maxsize=8)
def _empty_mask_png(height: int, width: int) -> bytes:
    return png_bytes(np.zeros((height, width), np.uint8))


def output_files(
    slice_ids: Sequence[str],
    parts: Sequence[RenderedSlices],
    report: Report,
    labels: Sequence[str],
    masks: bool = True,
) -> dict[str, bytes]:
    """The result files of a scan rendered in ``parts`` (in slice order), by name: ``overlay.mp4``
    (the segments joined without re-encoding), ``contact_sheet.png``, ``report.json`` and, with
    ``masks``, ``masks/<id>.png``. Each file has its own function too, for callers that make them
    side by side."""
    files = {
        "overlay.mp4": joined_video(parts),
        "contact_sheet.png": joined_contact_sheet(parts, labels),
        "report.json": report_json(report),
    }
    if masks:
        files.update(mask_files(slice_ids, parts))
    return files


def joined_video(parts: Sequence[RenderedSlices]) -> bytes:
    """``overlay.mp4``: the parts' video segments as one H.264 mp4."""
    return concat_h264([part.video for part in parts])


def joined_contact_sheet(parts: Sequence[RenderedSlices], labels: Sequence[str]) -> bytes:
    """``contact_sheet.png`` from the parts' thumbnails."""
    return png_bytes(contact_sheet_from_thumbnails([t for part in parts for t in part.thumbnails], labels))


def report_json(report: Report) -> bytes:
    """``report.json``."""
    return json.dumps(report, indent=2).encode()


def mask_files(slice_ids: Sequence[str], parts: Sequence[RenderedSlices]) -> dict[str, bytes]:
    """``masks/<id>.png`` for every slice."""
    pngs = [png for part in parts for png in part.mask_pngs]
    return {f"masks/{slice_id}.png": png for slice_id, png in zip(slice_ids, pngs, strict=True)}


def write_outputs(
    out_dir: str | Path,
    slice_ids: tuple[str, ...] | list[str],
    slices_u8: np.ndarray,
    segmentation: Segmentation,
    report: Report,
    fps: float = 5.0,
    model: ModelMetadata | None = None,
) -> dict[str, Path]:
    """Write ``masks/<id>.png`` (0/255), ``overlay.mp4`` (H.264), ``contact_sheet.png``, ``report.json``."""
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    labels = (
        slice_captions(slice_ids, segmentation, model)
        if model is not None
        else [f"{i} {p:.2f}" for i, p in zip(slice_ids, segmentation.slice_probabilities, strict=True)]
    )
    # The video names what the model found on each slice; the contact sheet captions its thumbnails.
    # One part for the whole scan: the pipeline renders the same way batch by batch.
    rendered = render_slices(slices_u8, segmentation.masks, labels, fps=fps)
    for name, data in output_files(slice_ids, [rendered], report, labels).items():
        (out / name).write_bytes(data)
    return {
        "overlay": out / "overlay.mp4",
        "contact_sheet": out / "contact_sheet.png",
        "report": out / "report.json",
        "masks": out / "masks",
    }
