"""Calibration (Platt scaling, ECE) and the model metadata that carries it to serving."""

from __future__ import annotations

import numpy as np

from ichseg.calibration import Platt, fit_platt, logit, reliability
from ichseg.model_metadata import SUBTYPES, ModelMetadata
from ichseg.preprocess import InputSpec


def test_platt_scaling_recovers_a_known_miscalibration_and_keeps_the_ranking() -> None:
    rng = np.random.default_rng(3)
    true_logits = rng.normal(-1.5, 2.0, 20000)
    labels = rng.random(true_logits.size) < 1 / (1 + np.exp(-true_logits))
    # A model that is over-confident (x2) and biased towards "bleed" (+1.2), like one trained on
    # oversampled positives.
    shown = 1 / (1 + np.exp(-(2.0 * true_logits + 1.2)))
    platt = fit_platt(shown, labels)
    assert abs(platt.scale - 0.5) < 0.05 and abs(platt.bias + 0.6) < 0.1
    calibrated = platt.apply(shown)
    assert reliability(calibrated, labels).ece < 0.02 < reliability(shown, labels).ece
    assert (np.diff(calibrated[np.argsort(shown)]) >= 0).all()  # monotone: every ranking (AUC) is kept
    assert np.allclose(platt.invert(calibrated), shown, atol=1e-4)


def test_identity_and_degenerate_fits_change_nothing() -> None:
    p = np.array([0.1, 0.5, 0.9], np.float32)
    assert Platt().apply(p) is not None and np.array_equal(Platt().apply(p), p)
    assert fit_platt(p, np.array([1, 1, 1])) == Platt()  # one class only: nothing to fit
    assert np.allclose(logit(np.array([0.5])), 0.0)


def test_reliability_bins_and_ece_by_hand() -> None:
    p = np.array([0.05, 0.05, 0.95, 0.95])
    y = np.array([0, 1, 1, 1])
    curve = reliability(p, y, bins=10)
    assert curve.counts[0] == 2 and curve.counts[9] == 2
    assert np.isclose(curve.observed[0], 0.5) and np.isclose(curve.ece, (2 * 0.45 + 2 * 0.05) / 4, atol=1e-4)


def test_metadata_round_trips_the_0_2_fields_and_reads_0_1_metadata() -> None:
    meta = ModelMetadata(
        name="ichseg-unet",
        version="0.2.0",
        input=InputSpec(size=160, channels=3, intracranial_only=True),
        subtypes=SUBTYPES,
        slice_calibration=(0.9, -1.5),
        subtype_calibration=((1.0, -0.2),) * 5,
    )
    again = ModelMetadata.from_json(meta.to_json())
    assert again == meta and again.input.context == 1
    raw = np.array([[0.5] * 5, [0.9] * 5], np.float32)
    assert again.calibrate_subtypes(raw).shape == (2, 5)
    assert np.isclose(again.slice_platt.apply(np.array([0.5]))[0], 1 / (1 + np.exp(1.5)))
    legacy = ModelMetadata.from_json(
        '{"name": "ichseg-unet", "version": "0.1.0", "input": {"size": 160, "channels": 1, "crop_to_head": true},'
        ' "slice_threshold": 0.253, "pixel_threshold": 0.2}'
    )
    assert legacy.subtypes == () and legacy.slice_calibration == (1.0, 0.0) and not legacy.input.intracranial_only


def test_the_scan_finding_uses_its_own_threshold_and_it_crosses_the_wire() -> None:
    from ichseg.endpoint_protocol import ResponseAttributes
    from ichseg.segmentation import masks_from_probabilities
    from ichseg.writers.report import HEMORRHAGE_DETECTED, NORMAL, build_report

    segmentation = masks_from_probabilities(np.zeros((2, 4, 4)), np.array([0.2, 0.6]), 0.5, 0.5)
    flagged_slice = ModelMetadata(name="m", version="1", slice_threshold=0.5, scan_threshold=0.7)
    report = build_report(["a", "b"], segmentation, flagged_slice, None, None)
    # One slice is flagged for reading, but the scan as a whole is not called hemorrhage.
    assert report["slices_with_hemorrhage"] == ["b"] and report["finding"] == NORMAL
    assert report["thresholds"] == {"scan": 0.7, "slice": 0.5, "pixel": 0.5}
    legacy = ModelMetadata(name="m", version="1", slice_threshold=0.5)  # before 0.2: the slice threshold
    assert build_report(["a", "b"], segmentation, legacy, None, None)["finding"] == HEMORRHAGE_DETECTED
    attributes = ResponseAttributes("m", "1", 0.5, 0.5, (0.2, 0.6), scan_threshold=0.7)
    assert ResponseAttributes.decode(attributes.encode()).scan_threshold == 0.7
    assert ResponseAttributes.decode(ResponseAttributes("m", "1", 0.5, 0.5, (0.2,)).encode()).scan_threshold is None
