"""A series with no skull left (HU or 8-bit) is refused before the model reads it; real head CT is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ichseg.errors import ErrorCode, UnfitScanError
from ichseg.fitness import require_brain_window_ct
from ichseg.inference import OnnxSegmenter, segment_scan
from ichseg.readers import read_scan
from ichseg.scan import Scan
from tests.scan_fixtures import phantom_hu


def _scan(slices: np.ndarray, hu: bool = True) -> Scan:
    return Scan(slices, tuple(f"{i:04d}" for i in range(len(slices))), "dicom", hu=hu)


def _head(count: int = 4) -> np.ndarray:
    return np.stack([phantom_hu(k, 64, 80) for k in range(count)])


@pytest.mark.parametrize(
    ("low", "high"),
    [(0, 80), (-20, 100), (0, 255)],  # clipped to a brain window; to a subdural one; grey levels stored as HU
)
def test_a_series_without_bone_is_refused_with_its_range(low: float, high: float) -> None:
    with pytest.raises(UnfitScanError) as refused:
        require_brain_window_ct(_scan(np.clip(_head(), low, high)))
    assert refused.value.code == ErrorCode.UNFIT_INPUT
    assert f"its values run from {low} to {high} HU" in str(refused.value)
    assert "send the original CT series" in str(refused.value)


def test_head_ct_with_its_skull_passes() -> None:
    require_brain_window_ct(_scan(_head()))


def _brain_window(hu: np.ndarray, level: float = 40, width: float = 80) -> np.ndarray:
    return np.clip((hu - (level - width / 2)) / width * 255, 0, 255).astype(np.uint8)


def test_8_bit_head_ct_in_a_brain_window_passes_and_the_real_sample_too(sample_dir: Path) -> None:
    require_brain_window_ct(_scan(_brain_window(_head()), hu=False))
    require_brain_window_ct(read_scan(sample_dir / "brain.mp4"))


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("bone window", _brain_window(_head(), level=500, width=3000)),  # skull grey, not white
        ("dimmed to half", _brain_window(_head()) // 2),
        ("blank", np.zeros((3, 32, 32), np.uint8)),
    ],
)
def test_8_bit_input_without_a_white_skull_is_refused_with_its_brightest_grey(name: str, frames: np.ndarray) -> None:
    with pytest.raises(UnfitScanError) as refused:
        require_brain_window_ct(_scan(frames, hu=False))
    assert refused.value.code == ErrorCode.UNFIT_INPUT, name
    assert f"its brightest grey is {int(frames.max())}" in str(refused.value)
    assert "brain window" in str(refused.value)


def test_segmenting_refuses_it_before_the_model_runs(tiny_onnx: OnnxSegmenter) -> None:
    with pytest.raises(UnfitScanError):
        segment_scan(_scan(np.clip(_head(), 0, 80)), tiny_onnx)


@pytest.fixture
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> OnnxSegmenter:
    from tests.onnx_fixtures import build_tiny_model

    return OnnxSegmenter(build_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx"))
