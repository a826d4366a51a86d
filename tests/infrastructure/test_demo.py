"""`make demo`'s journey (the app against the local stack) with the committed sample scan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ichseg.paths import SAMPLE_VIDEO
from infrastructure.demo import app_journey, run_demo
from infrastructure.local_stack import LocalStack


def test_the_demo_journey_on_the_sample_scan_ends_with_video_report_and_firebase_copy(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = app_journey(stack, SAMPLE_VIDEO, tmp_path, timeout=180)
    assert status["state"] == "DONE"
    assert status["progress"]["done"] == status["progress"]["total"] == 32
    assert status["progress"]["batches_total"] == 8  # ICHSEG_BATCH_SLICES=4 in the test stack
    for name in ("overlay.mp4", "report.json", "contact_sheet.png", "firebase/overlay.mp4", "status.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert len(json.loads((tmp_path / "report.json").read_text())["slices"]) == 32
    printed = capsys.readouterr().out
    assert "H.264 yuv420p, 650x650, 32 frames" in printed
    assert f"users/demo-radiologist/scans/{status['job_id']}/overlay.mp4" in printed
    assert "segment: endpoint inference of every batch" in printed and "end to end" in printed
    assert f"{stack.api_url}/viewer/?job={status['job_id']}#token=ey" in printed  # a signed-in viewer link


def test_the_demo_says_clearly_when_the_model_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(tmp_path / "out", model=tmp_path / "ichseg-unet.onnx") == 2
    assert "is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
