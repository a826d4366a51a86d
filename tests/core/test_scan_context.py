"""The scan head: what it reads of each slice, the shipped head itself, and one consistent report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichseg.findings import Finding
from ichseg.inference import OnnxSegmenter, read_in_context, segment_scan
from ichseg.model_file import read_metadata
from ichseg.model_metadata import SUBTYPES, ModelMetadata
from ichseg.paths import SHIPPED_MODEL
from ichseg.readers import read_scan
from ichseg.scan_context import (
    FEATURES,
    SCAN_HEAD,
    ScanContext,
    ScanHead,
    ScanHeadMetadata,
    ScanOutput,
    load_scan_head,
    map_features,
    scan_context,
    slice_features,
)
from ichseg.writers.report import report_from_areas
from tests.onnx_fixtures import pair_scan_head

MODEL = ModelMetadata(
    name="m", version="1", slice_threshold=0.5, pixel_threshold=0.3, scan_threshold=0.6, subtypes=SUBTYPES
)


def test_map_features_count_the_outline_before_the_gate_and_the_peak_as_the_endpoint_sends_them() -> None:
    maps = np.zeros((3, 10, 10), np.uint8)
    maps[1, :2, :5] = 77  # 77/255 = 0.302 >= 0.3: 10 of 100 pixels
    maps[1, 5, 5] = 76  # 0.298 < 0.3
    maps[2, 0, 0] = 255
    outlined, peak = map_features(maps, 0.3)
    assert outlined.tolist() == pytest.approx([0.0, 0.10, 0.01])
    assert peak.tolist() == pytest.approx([0.0, 77 / 255, 1.0])
    with pytest.raises(ValueError, match="uint8"):
        map_features(maps.astype(np.float32), 0.3)


def test_slice_features_are_one_row_per_slice_in_the_head_s_column_order() -> None:
    x = slice_features(np.array([0.5, 0.99]), np.full((2, 5), 0.5), np.array([0.0, 0.01]), np.array([0.5, 1.0]))
    assert x.shape == (2, len(FEATURES)) and x.dtype == np.float32
    row = dict(zip(FEATURES, x[1], strict=True))
    assert row["slice_logit"] == pytest.approx(np.log(0.99 / 0.01), rel=1e-5)
    assert row["epidural_logit"] == pytest.approx(0.0)
    assert row["outlined"] == pytest.approx(np.log1p(1.0))
    assert row["peak_logit"] == pytest.approx(np.log(0.995 / 0.005), rel=1e-5)  # clipped, never infinite
    assert [r[FEATURES.index("position")] for r in x] == [0.0, 1.0]
    single = slice_features(np.array([0.2]), None, np.array([0.0]), np.array([0.1]))
    assert single[0, FEATURES.index("position")] == 0.5 and np.isfinite(single).all()


def test_the_shipped_head_pairs_with_the_shipped_model_and_answers_any_scan_length() -> None:
    head = ScanHead(SCAN_HEAD)
    assert head.metadata.pairs_with(read_metadata(SHIPPED_MODEL))
    assert 0 < head.metadata.scan_threshold < 1 and head.metadata.parameters > 0
    rng = np.random.default_rng(0)
    for n in (1, 2, 60):
        context = head(rng.normal(0, 2, (n, len(FEATURES))).astype(np.float32))
        assert context.slice_probabilities.shape == (n,) and context.slice_subtypes.shape == (n, len(SUBTYPES))
        assert context.scan_subtypes.shape == (len(SUBTYPES),)
        values = np.concatenate([[context.scan_probability], context.scan_subtypes, context.slice_probabilities])
        assert ((values >= 0) & (values <= 1)).all()
    with pytest.raises(ValueError, match="features"):
        head(np.zeros((0, len(FEATURES)), np.float32))


def test_a_head_for_another_model_is_not_used(tmp_path: Path) -> None:
    head = ScanHead(pair_scan_head(tmp_path / "head.onnx", MODEL))
    x = np.zeros(4, np.float32)
    assert scan_context(head, MODEL, x + 0.9, None, x, x + 0.9) is not None
    other = MODEL.with_updates(version="2")
    assert scan_context(head, other, x + 0.9, None, x, x + 0.9) is None
    assert load_scan_head(str(tmp_path / "absent.onnx")) is None


def test_ichseg_segment_reads_the_shipped_model_s_answers_with_the_shipped_head(sample_dir: Path) -> None:
    segmenter = OnnxSegmenter(SHIPPED_MODEL)
    scan = read_scan(sample_dir / "brain.mp4")
    _, segmentation = segment_scan(scan, segmenter)
    context = read_in_context(segmentation, segmenter.metadata, load_scan_head())
    assert context is not None and len(context.slice_probabilities) == scan.num_slices
    assert context.metadata.segmentation_version == segmenter.metadata.version


def _context(
    probability: float, slices: list[float], adopted: tuple[ScanOutput, ...] = tuple(ScanOutput)
) -> ScanContext:
    meta = ScanHeadMetadata(
        version="9", segmentation_model="m", segmentation_version="1", scan_threshold=0.6, adopted=adopted
    )
    n = len(slices)
    return ScanContext(probability, np.full(5, 0.2, np.float32), np.array(slices, np.float32), np.zeros((n, 5)), meta)


def _report(probabilities: list[float], areas: list[int], context: ScanContext | None) -> dict:
    n = len(probabilities)
    subtypes = np.tile(np.array([0.9, 0.1, 0.1, 0.1, 0.1], np.float32), (n, 1))
    return dict(
        report_from_areas(
            [f"{i:04d}" for i in range(n)],
            np.array(probabilities, np.float32),
            subtypes,
            np.array(areas),
            MODEL,
            (0.5, 0.5),
            5.0,
            context=context,
        )
    )


def test_the_finding_scan_probability_and_subtypes_come_from_the_head_when_it_reads_the_scan() -> None:
    report = _report([0.1, 0.7, 0.8], [0, 40, 60], _context(0.83, [0.1, 0.6, 0.9]))
    assert report["finding"] == Finding.HEMORRHAGE_DETECTED and report["hemorrhage_probability"] == 0.83
    assert report["thresholds"]["scan"] == 0.6 and report["scan_model"] == {"name": "ichseg-scan-head", "version": "9"}
    assert report["subtypes"] == dict.fromkeys(SUBTYPES, 0.2)  # the head's, not the top slice's 0.9
    assert [s["context_probability"] for s in report["slices"]] == [0.1, 0.6, 0.9]
    assert report["finding_note"] is None and report["volume_note"] is None
    without = _report([0.1, 0.7, 0.8], [0, 40, 60], None)
    assert without["hemorrhage_probability"] == 0.8 and without["scan_model"] is None
    assert without["subtypes"]["epidural"] == 0.9 and "context_probability" not in without["slices"][0]


def test_a_head_finding_without_a_flagged_slice_names_the_slices_and_explains_the_zero_volume() -> None:
    report = _report([0.2, 0.4, 0.45, 0.1], [0, 0, 0, 0], _context(0.7, [0.1, 0.5, 0.6, 0.2]))
    assert report["finding"] == Finding.HEMORRHAGE_DETECTED and report["slices_with_hemorrhage"] == []
    assert "no single slice reached the slice threshold" in report["finding_note"]
    assert "0001, 0002, 0003" in report["finding_note"]  # the three it weighs most, in scan order
    assert report["volume_ml"] == 0 and "nothing is outlined" in report["volume_note"]


def test_a_normal_scan_with_slices_the_slice_head_flags_says_to_read_them() -> None:
    report = _report([0.2, 0.55, 0.1], [0, 12, 0], _context(0.3, [0.1, 0.4, 0.1]))
    assert report["finding"] == Finding.NORMAL and report["slices_with_hemorrhage"] == ["0001"]
    assert "reads the scan as a whole as normal" in report["finding_note"] and "0001" in report["finding_note"]


def test_a_normal_finding_beside_slices_flagged_below_the_scan_threshold_names_them() -> None:
    # No head finding: the most confident slice (0.55) is flagged (>= 0.5) but under the scan threshold (0.6).
    report = _report([0.2, 0.55, 0.52, 0.1], [0, 12, 8, 0], None)
    assert report["finding"] == Finding.NORMAL and report["slices_with_hemorrhage"] == ["0001", "0002"]
    note = report["finding_note"]
    assert note.startswith("No slice reaches the scan threshold (0.6; the most confident reaches 0.55)")
    assert "2 slice(s) reach the slice threshold (0.5) and are outlined: 0001, 0002. Read them." in note
    # Flagged and detected agree (0.65 >= 0.6), and nothing flagged is nothing to explain.
    assert _report([0.2, 0.65, 0.1], [0, 12, 0], None)["finding_note"] is None
    assert _report([0.2, 0.3, 0.1], [0, 0, 0], None)["finding_note"] is None


def test_the_report_takes_from_the_head_only_what_its_card_adopted() -> None:
    subtypes_kept = _report([0.1, 0.7, 0.8], [0, 40, 60], _context(0.83, [0.1, 0.6, 0.9], (ScanOutput.FINDING,)))
    assert subtypes_kept["hemorrhage_probability"] == 0.83 and subtypes_kept["subtypes"]["epidural"] == 0.9
    nothing = _report([0.2, 0.65, 0.1], [0, 12, 0], _context(0.3, [0.1, 0.4, 0.1], ()))
    assert nothing["finding"] == Finding.HEMORRHAGE_DETECTED and nothing["hemorrhage_probability"] == 0.65
    assert nothing["scan_model"] is None and nothing["finding_note"] is None
    assert nothing["thresholds"]["scan"] == MODEL.finding_threshold
    assert [s["context_probability"] for s in nothing["slices"]] == [0.1, 0.4, 0.1]  # shown, never deciding


def test_the_shipped_head_adopts_an_output_only_where_it_beat_the_rule_on_validation() -> None:
    meta = ScanHead(SCAN_HEAD).metadata
    head, rule = meta.metrics["validation_out_of_fold"], meta.metrics["validation_most_confident_slice"]
    assert (ScanOutput.FINDING in meta.adopted) == (head["scan_auc"] > rule["scan_auc"])
    assert (ScanOutput.SUBTYPES in meta.adopted) == (head["top_subtype_right"] > rule["top_subtype_right"])
