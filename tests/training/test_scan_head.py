"""Training the scan head: out-of-fold validation answers, the threshold chosen on them, the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichseg.model_metadata import SUBTYPES, ModelMetadata
from ichseg.scan_context import FEATURES, ScanHead
from model_export.scan_head import train_and_export
from training.scan_head import (
    HeadAnswer,
    PatientScan,
    choose_threshold,
    load_scans,
    max_rule,
    out_of_fold,
    save_scans,
    scan_metrics,
)

SEGMENTATION = ModelMetadata(name="ichseg-unet", version="0.0-test", slice_threshold=0.5, scan_threshold=0.6)


def _scan(patient: str, split: str, bleeding: bool, rng: np.random.Generator, n: int = 12) -> PatientScan:
    hemorrhage = np.zeros(n, np.float32)
    subtypes = np.zeros((n, len(SUBTYPES)), np.float32)
    features = rng.normal(-3, 0.5, (n, len(FEATURES))).astype(np.float32)
    features[:, -1] = np.linspace(0, 1, n)
    if bleeding:
        hemorrhage[4:8] = 1
        subtypes[4:8, 1] = 1  # subdural
        features[4:8, 0] = rng.normal(2, 0.5, 4)
        features[4:8, 2] = rng.normal(1, 0.5, 4)
    labelled = np.ones(n, bool)
    labelled[0] = False  # a slice without a CSV row adds no loss
    return PatientScan(patient, split, features, labelled, hemorrhage, subtypes)


@pytest.fixture(scope="module")
def scans() -> list[PatientScan]:
    rng = np.random.default_rng(0)
    splits = ["train"] * 16 + ["val"] * 10 + ["test"] * 4
    return [_scan(f"{i:03d}", split, i % 2 == 0, rng) for i, split in enumerate(splits)]


def test_the_answers_cache_round_trips(scans: list[PatientScan], tmp_path: Path) -> None:
    save_scans(scans, tmp_path / "answers.npz")
    again = load_scans(tmp_path / "answers.npz")
    assert [(s.patient, s.split, s.bleeding) for s in again] == [(s.patient, s.split, s.bleeding) for s in scans]
    assert all(np.array_equal(a.features, b.features) for a, b in zip(again, scans, strict=True))


def test_the_threshold_finds_the_target_share_of_bleeds_not_the_one_the_model_missed() -> None:
    bleeding = [True] * 7 + [False] * 3
    scans = [
        PatientScan(str(i), "val", np.zeros((1, 9)), np.ones(1, bool), np.full(1, float(b)), np.zeros((1, 5)))
        for i, b in enumerate(bleeding)
    ]
    # one bleed scored 0.05 (missed by the segmentation model): finding it would call every normal scan
    scores = [0.99, 0.95, 0.9, 0.8, 0.7, 0.65432, 0.05, 0.6, 0.2, 0.1]
    answers = [HeadAnswer(str(i), s, np.zeros(5), np.zeros(1)) for i, s in enumerate(scores)]
    threshold = choose_threshold(scans, answers)
    assert threshold == 0.6543  # 6 of 7 bleeds (0.857 >= 0.85), rounded down so 0.65432 stays found
    metrics = scan_metrics(scans, answers, threshold)
    assert (metrics["sensitivity"], metrics["specificity"]) == (round(6 / 7, 4), 1.0)


def test_out_of_fold_answers_come_from_heads_that_never_saw_the_patient(scans: list[PatientScan]) -> None:
    val = [s for s in scans if s.split == "val"]
    answers = out_of_fold(scans, folds=2, epochs=6)
    assert [a.patient for a in answers] == [s.patient for s in val]
    # separable toy answers: even a few epochs rank bleeding patients above normal ones
    assert scan_metrics(val, answers)["scan_auc"] >= 0.9
    assert scan_metrics(val, max_rule(val))["scan_auc"] >= 0.9


def test_the_exported_head_matches_keras_and_names_its_segmentation_model(
    scans: list[PatientScan], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.scan_head as scan_head

    monkeypatch.setattr(scan_head, "EPOCHS", 4)
    monkeypatch.setattr(scan_head, "FOLDS", 2)
    summary = train_and_export(scans, tmp_path / "head.onnx", SEGMENTATION, "0.9.0")
    assert summary["parity_max_difference"] < 1e-4
    head = ScanHead(tmp_path / "head.onnx")
    assert head.metadata.pairs_with(SEGMENTATION) and head.metadata.version == "0.9.0"
    assert head.metadata.scan_threshold == summary["scan_threshold"]
    assert head.metadata.metrics["validation_out_of_fold"]["patients"] == 10
    test = next(s for s in scans if s.split == "test" and s.bleeding)
    context = head(test.features)
    assert context.slice_probabilities.shape == (12,)


def test_an_output_is_adopted_only_where_the_head_beats_the_rule_out_of_fold() -> None:
    from ichseg.scan_context import ScanOutput
    from training.scan_head import adopted_outputs

    rule = {"scan_auc": 0.71, "top_subtype_right": 5}
    assert adopted_outputs({"scan_auc": 0.82, "top_subtype_right": 4}, rule) == (ScanOutput.FINDING,)
    assert adopted_outputs({"scan_auc": 0.71, "top_subtype_right": 6}, rule) == (ScanOutput.SUBTYPES,)
    assert adopted_outputs({"scan_auc": None, "top_subtype_right": 5}, rule) == ()
