"""Input the model reads poorly is answered with warnings, and the answer never contradicts itself."""

from __future__ import annotations

import numpy as np
import pytest

from ichseg.findings import Finding
from ichseg.input_warnings import InputWarning, input_warnings
from ichseg.model_metadata import ModelMetadata
from ichseg.writers.report import headline, report_from_areas

MODEL = ModelMetadata(name="m", version="1", slice_threshold=0.5, pixel_threshold=0.3)


def codes(num_slices: int, thickness: float | None, extents: list[float] | None = None) -> list[InputWarning]:
    return [w["code"] for w in input_warnings(num_slices, thickness, extents)]


@pytest.mark.parametrize(
    ("num_slices", "thickness", "extents", "expected"),
    [
        (30, 5.0, None, []),  # a CT-ICH head scan
        (22, 7.0, [4.0] * 10 + [7.0] * 12, []),  # a two-stage 4/7 mm protocol covering 124 mm
        (30, None, None, []),  # a whole video: no geometry, enough slices
        (1, 5.0, None, [InputWarning.SINGLE_SLICE]),
        (1, None, None, [InputWarning.SINGLE_SLICE]),
        (2, 5.0, None, [InputWarning.FEW_SLICES, InputWarning.PARTIAL_COVERAGE]),
        (200, 0.625, None, [InputWarning.THIN_SLICES]),  # 125 mm of thin slices
        (40, 0.625, None, [InputWarning.THIN_SLICES, InputWarning.PARTIAL_COVERAGE]),
        (14, 12.0, None, [InputWarning.THICK_SLICES]),
        (8, 5.0, None, [InputWarning.PARTIAL_COVERAGE]),  # 40 mm: part of the brain
        (6, None, None, [InputWarning.PARTIAL_COVERAGE]),  # a short clip of unknown spacing
    ],
)
def test_warnings_name_what_the_model_reads_poorly(
    num_slices: int, thickness: float | None, extents: list[float] | None, expected: list[InputWarning]
) -> None:
    assert codes(num_slices, thickness, extents) == expected


def test_every_warning_says_what_it_means_with_the_scan_s_own_numbers() -> None:
    [thin, coverage] = input_warnings(40, 0.625)
    assert "0.625 mm apart" in thin["message"] and "5 mm" in thin["message"]
    assert "cover 25 mm" in coverage["message"]


def _report(probabilities: list[float], areas: list[int], spacing: tuple[float, float] | None = (0.5, 0.5)) -> dict:
    n = len(probabilities)
    return dict(
        report_from_areas(
            [f"{i:04d}" for i in range(n)],
            np.array(probabilities, np.float32),
            None,
            np.array(areas),
            MODEL,
            spacing,
            5.0 if spacing else None,
        )
    )


def test_a_slice_called_hemorrhage_without_an_outline_says_why() -> None:
    report = _report([0.1] * 20 + [0.9, 0.8] + [0.1] * 8, [0] * 20 + [0, 40] + [0] * 8)
    flagged = {s["id"]: s for s in report["slices"] if s["hemorrhage"]}
    assert set(flagged) == {"0020", "0021"}
    assert "no pixel reached the outline threshold (0.3)" in flagged["0020"]["outline_note"]
    assert "outline_note" not in flagged["0021"]  # outlined: nothing to explain
    assert all("outline_note" not in s for s in report["slices"] if not s["hemorrhage"])
    assert report["volume_ml"] > 0 and report["volume_note"] is None


def test_hemorrhage_detected_never_stands_beside_an_unexplained_zero_volume() -> None:
    report = _report([0.1] * 20 + [0.9, 0.8] + [0.1] * 8, [0] * 30)
    assert report["finding"] == Finding.HEMORRHAGE_DETECTED and report["volume_ml"] == 0
    assert report["volume_note"].startswith("0 mL: the hemorrhage was detected on 2 slice(s)")
    assert headline(report)["volume_note"] == report["volume_note"]  # the API's result says it too


def test_a_normal_scan_at_zero_volume_needs_no_note_and_no_volume_is_explained() -> None:
    assert _report([0.1] * 30, [0] * 30)["volume_note"] is None
    without_spacing = _report([0.1] * 30, [0] * 30, spacing=None)
    assert without_spacing["volume_ml"] is None and "does not say how large" in without_spacing["volume_note"]


def test_the_report_and_the_api_result_carry_the_warnings() -> None:
    report = _report([0.9], [30])
    assert [w["code"] for w in report["warnings"]] == [InputWarning.SINGLE_SLICE]
    assert headline(report)["warnings"] == report["warnings"]
    assert _report([0.1] * 30, [0] * 30)["warnings"] == []
