"""The held-out measures the card reports at scan level: the subtype named first, the scan ROC, the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ichseg.model_metadata import ModelMetadata
from training.evaluate import (
    PIXEL_GRID,
    SliceResult,
    detection_summary,
    markdown_table,
    predicted_top_subtype,
    scan_subtype_summary,
)
from training.figures import write_split_figures

META = ModelMetadata(name="m", version="1", slice_threshold=0.5, pixel_threshold=0.5, subtypes=("epidural", "subdural"))


def _slice(
    patient: str, label: bool, probability: float, truth: dict[str, bool], shown: dict[str, float]
) -> SliceResult:
    painted = tuple(0 for _ in PIXEL_GRID)  # nothing outlined (the outline figure's slice sets its own map)
    return SliceResult(patient, f"{len(truth)}", "ct-ich", label, truth, probability, shown, painted)


def _bleeding(patient: str, truth: str, shown: dict[str, float]) -> list[SliceResult]:
    return [
        _slice(patient, True, 0.9, {truth: True}, shown),
        _slice(patient, False, 0.1, {}, {name: q / 4 for name, q in shown.items()}),
    ]


def test_the_subtype_named_first_is_the_highest_scan_level_probability() -> None:
    group = [
        _slice("1", True, 0.9, {"subdural": True}, {"epidural": 0.6, "subdural": 0.5}),
        _slice("1", True, 0.9, {"subdural": True}, {"epidural": 0.2, "subdural": 0.7}),
    ]
    assert predicted_top_subtype(group) == "subdural"  # 0.7 on its best slice beats epidural's 0.6
    assert predicted_top_subtype([_slice("2", False, 0.1, {}, {})]) is None


def test_top_subtype_accuracy_and_confusion_count_bleeding_patients_only() -> None:
    results = (
        _bleeding("a", "epidural", {"epidural": 0.8, "subdural": 0.3})  # right
        + _bleeding("b", "subdural", {"epidural": 0.9, "subdural": 0.4})  # wrong: epidural named first
        + _bleeding("c", "subdural", {"epidural": 0.2, "subdural": 0.6})  # right
        + [_slice("n", False, 0.2, {}, {"epidural": 0.9, "subdural": 0.1})]  # normal: not counted
    )
    summary = scan_subtype_summary(results)
    assert (summary["bleeding_patients"], summary["top_subtype_right"]) == (3, 2)
    assert summary["top_subtype_accuracy"] == round(2 / 3, 4)
    assert summary["confusion"] == {"epidural": {"epidural": 1}, "subdural": {"epidural": 1, "subdural": 1}}
    assert [p["patient"] for p in summary["per_patient"] if not p["right"]] == ["b"]
    table = markdown_table({"model": {"name": "m", "version": "1"}, "split": "val", "scan_subtypes": summary})
    assert "| top subtype right, per bleeding patient | 2 of 3 (0.6667) |" in table
    assert "| subdural | 1 | 1 |" in table


def test_scan_auc_comes_with_a_bootstrap_interval_over_patients() -> None:
    rng = np.random.default_rng(0)
    results = []
    for index in range(12):
        bleeding = index % 2 == 0
        for _ in range(5):
            p = float(rng.uniform(0.4, 1.0) if bleeding else rng.uniform(0.0, 0.7))
            results.append(_slice(f"p{index}", bleeding, p, {"epidural": bleeding}, {}))
    detection = detection_summary(results, 0.5, 0.5, 0.6)
    low, high = detection["scan_roc_auc_ci95"]
    assert 0 <= low <= detection["scan_roc_auc"] <= high <= 1


def test_the_figures_include_the_scan_roc_and_the_outlines(tmp_path: Path) -> None:
    results = _bleeding("a", "epidural", {"epidural": 0.8}) + _bleeding("b", "subdural", {"subdural": 0.6})
    results.append(_slice("n", False, 0.2, {}, {"epidural": 0.1, "subdural": 0.1}))
    masked = results[0]
    truth = np.zeros((40, 40), bool)
    truth[10:20, 10:20] = True
    masked.image, masked.truth = np.full((40, 40), 60, np.uint8), truth
    masked.probability_map = np.where(truth, 0.9, 0.1).astype(np.float16)
    written = write_split_figures(results, META, "val", tmp_path)
    names = {path.name for path in written}
    assert {"roc-scan-val.png", "outlines-val.png"} <= names
    for path in written:
        assert min(Image.open(path).size) > 200
