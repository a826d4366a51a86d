"""From model outputs to what people read: masks, per-slice findings, the report, the files.

Pure numpy (no onnxruntime): the CLI and the assemble Lambda share it, so ``ichseg segment``
and the pipeline write the same report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ichseg.metrics import volume_ml
from ichseg.model_metadata import ModelMetadata
from ichseg.render import caption_frames, overlay_scan, write_contact_sheet, write_h264

HEMORRHAGE_DETECTED = "Hemorrhage detected"
NORMAL = "Normal"
SUBTYPE_SHOWN_FROM = 0.5
"""A subtype is named on a slice's overlay and contact-sheet caption from this (calibrated)
probability; report.json carries every probability."""
SUBTYPE_VOLUME_NOTE = (
    "The mask head outlines hemorrhage of any subtype; it cannot separate the subtypes' pixels, so "
    "no volume per subtype is given. Subtype probabilities come from the classification head."
)


@dataclass(frozen=True)
class Segmentation:
    """The outcome for one scan."""

    masks: np.ndarray
    """(N, H, W) bool."""
    slice_probabilities: np.ndarray
    """(N,) float32."""
    subtype_probabilities: np.ndarray | None = None
    """(N, S) float32, columns in the model's ``subtypes`` order; None for a model without them."""


def masks_from_probabilities(
    probabilities: np.ndarray,
    slice_probabilities: np.ndarray,
    pixel_threshold: float,
    slice_threshold: float,
    subtype_probabilities: np.ndarray | None = None,
) -> Segmentation:
    """Threshold pixel maps, keeping masks only on slices the detection head calls hemorrhage."""
    masks = np.asarray(probabilities) >= pixel_threshold
    gate = np.asarray(slice_probabilities) >= slice_threshold
    masks &= gate[:, None, None]
    subtypes = None
    if subtype_probabilities is not None and np.asarray(subtype_probabilities).size:
        subtypes = np.asarray(subtype_probabilities, dtype=np.float32)
    return Segmentation(masks, np.asarray(slice_probabilities, dtype=np.float32), subtypes)


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


def build_report(
    slice_ids: tuple[str, ...] | list[str],
    segmentation: Segmentation,
    model: ModelMetadata,
    pixel_spacing_mm: tuple[float, float] | None,
    slice_thickness_mm: float | None,
) -> dict[str, Any]:
    """The ``report.json`` document: per-slice probability and area, scan probability, volume."""
    areas = segmentation.masks.reshape(len(slice_ids), -1).sum(axis=1)
    pixel_mm2 = pixel_spacing_mm[0] * pixel_spacing_mm[1] if pixel_spacing_mm else None
    slices = [
        {
            "id": slice_id,
            "probability": round(float(p), 4),
            "hemorrhage": bool(p >= model.slice_threshold),
            "area_px": int(area),
            "area_mm2": round(float(area) * pixel_mm2, 2) if pixel_mm2 is not None else None,
        }
        for slice_id, p, area in zip(slice_ids, segmentation.slice_probabilities, areas, strict=True)
    ]
    subtypes = segmentation.subtype_probabilities
    if subtypes is not None:
        for entry, row in zip(slices, subtypes, strict=True):
            entry["subtypes"] = {name: round(float(q), 4) for name, q in zip(model.subtypes, row, strict=True)}
    scan_probability = float(segmentation.slice_probabilities.max()) if len(slice_ids) else 0.0
    detected = scan_probability >= model.finding_threshold
    volume = (
        round(volume_ml(segmentation.masks, pixel_spacing_mm, slice_thickness_mm), 3)
        if pixel_spacing_mm and slice_thickness_mm
        else None
    )
    return {
        "finding": HEMORRHAGE_DETECTED if detected else NORMAL,
        "hemorrhage_probability": round(scan_probability, 4),
        "slices_with_hemorrhage": [s["id"] for s in slices if s["hemorrhage"]],
        # A scan's subtype probability is its most confident slice's, as for the finding.
        "subtypes": (
            {name: round(float(subtypes[:, i].max()), 4) for i, name in enumerate(model.subtypes)}
            if subtypes is not None and len(slice_ids)
            else None
        ),
        "volume_ml": volume,
        "volume_ml_by_subtype": None,
        "volume_ml_by_subtype_note": SUBTYPE_VOLUME_NOTE if subtypes is not None else None,
        "pixel_spacing_mm": list(pixel_spacing_mm) if pixel_spacing_mm else None,
        "slice_thickness_mm": slice_thickness_mm,
        "thresholds": {"scan": model.finding_threshold, "slice": model.slice_threshold, "pixel": model.pixel_threshold},
        "model": {"name": model.name, "version": model.version},
        "slices": slices,
        "disclaimer": "Research software. Not for clinical use.",
    }


def write_outputs(
    out_dir: str | Path,
    slice_ids: tuple[str, ...] | list[str],
    slices_u8: np.ndarray,
    segmentation: Segmentation,
    report: dict[str, Any],
    fps: float = 5.0,
    model: ModelMetadata | None = None,
) -> dict[str, Path]:
    """Write ``masks/<id>.png`` (0/255), ``overlay.mp4`` (H.264), ``contact_sheet.png``, ``report.json``."""
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for slice_id, mask in zip(slice_ids, segmentation.masks, strict=True):
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{slice_id}.png")
    labels = (
        slice_captions(slice_ids, segmentation, model)
        if model is not None
        else [f"{i} {p:.2f}" for i, p in zip(slice_ids, segmentation.slice_probabilities, strict=True)]
    )
    # The video names what the model found on each slice; the contact sheet captions its thumbnails.
    overlays = overlay_scan(slices_u8, segmentation.masks)
    paths = {
        "overlay": out / "overlay.mp4",
        "contact_sheet": out / "contact_sheet.png",
        "report": out / "report.json",
        "masks": out / "masks",
    }
    # Results are waited for: encode fast; the overlay is for viewing, not archiving.
    write_h264(caption_frames(overlays, labels), paths["overlay"], fps=fps, crf=20, preset="veryfast")
    write_contact_sheet(overlays, paths["contact_sheet"], labels=labels)
    paths["report"].write_text(json.dumps(report, indent=2))
    return paths
