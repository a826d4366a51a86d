"""The committed model: its metadata is complete and it finds the hemorrhage in the held-out sample."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ichseg.inference import OnnxSegmenter, segment_scan
from ichseg.model_metadata import SUBTYPES
from ichseg.paths import SHIPPED_MODEL
from ichseg.preprocess import prepare_batch, restore_probabilities
from ichseg.readers import read_scan


def test_shipped_model_metadata_is_complete() -> None:
    meta = OnnxSegmenter(SHIPPED_MODEL).metadata
    assert meta.name == "ichseg-unet" and meta.version
    assert meta.input.size % 16 == 0 and meta.input.crop_to_head
    assert 0.0 < meta.slice_threshold < 1.0 and 0.0 < meta.pixel_threshold < 1.0
    assert meta.parameters > 100_000 and meta.gflop_per_frame > 0
    # 0.2: the slice and its neighbours, inside the skull only, five subtypes, calibrated on validation.
    assert meta.input.channels == 3 and meta.input.intracranial_only
    assert meta.subtypes == SUBTYPES and len(meta.subtype_calibration) == len(SUBTYPES)
    assert meta.slice_calibration != (1.0, 0.0)
    # Held-out figures travel with the model (written by training.model_card).
    assert meta.metrics["test"]["detection"]["roc_auc"] > 0.5
    assert meta.metrics["test"]["split"] == "test"
    assert (
        meta.metrics["validation"]["calibration"]["ece_calibrated"]
        <= meta.metrics["validation"]["calibration"]["ece_raw"]
    )


def test_the_keras_weights_the_benchmark_needs_ship_beside_the_onnx_model() -> None:
    keras = SHIPPED_MODEL.with_name("ichseg-unet.keras.h5")
    assert keras.is_file() and keras.stat().st_size > 1_000_000
    assert keras.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"  # an HDF5 file, not a Git LFS pointer


def test_shipped_model_detects_the_sample_patients_hemorrhage(sample_dir: Path) -> None:
    """Patient 051 is in the test split (never trained on); its slices 14-32 are labelled hemorrhage."""
    scan = read_scan(sample_dir / "slices")
    with (sample_dir / "labels.csv").open() as handle:
        labels = {row["SliceNumber"]: row["No_Hemorrhage"] == "0" for row in csv.DictReader(handle)}
    _, segmentation = segment_scan(scan, OnnxSegmenter(SHIPPED_MODEL))
    truth = np.array([labels[slice_id] for slice_id in scan.slice_ids])
    flagged = segmentation.slice_probabilities >= OnnxSegmenter(SHIPPED_MODEL).metadata.slice_threshold
    assert flagged[truth].mean() >= 0.6  # most labelled slices are found
    assert flagged[~truth].mean() <= 0.4  # most normal slices are not
    assert segmentation.masks[truth].any(axis=(1, 2)).mean() >= 0.5
    assert not segmentation.masks[~flagged].any()  # the slice gate clears masks
    assert segmentation.subtype_probabilities is not None and segmentation.subtype_probabilities.shape[1] == 5
    # Nothing is painted outside the skull: the scalp swelling beside 051's subdural stays clear.
    slices = np.asarray(scan.slices, np.uint8)
    batch = prepare_batch(slices, OnnxSegmenter(SHIPPED_MODEL).metadata.input)
    inside = restore_probabilities(batch.regions.astype(np.float32), batch.placements) > 0
    assert not (segmentation.masks & ~inside).any()
