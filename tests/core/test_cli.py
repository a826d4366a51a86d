"""`ichseg inspect`: one JSON object on success; one `error:` line and no traceback on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scan_fixtures import dicom_series, write_dicom_series

ICHSEG = Path(sys.executable).parent / "ichseg"
KEYS = {"format", "slices", "height", "width", "pixel_spacing_mm", "slice_thickness_mm", "hu"}


def run_ichseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ICHSEG), *args], capture_output=True, text=True, timeout=120, check=False)


def test_inspect_sample_video(sample_dir: Path) -> None:
    result = run_ichseg("inspect", str(sample_dir / "brain.mp4"))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info) == KEYS
    assert info == {
        "format": "mp4",
        "slices": 32,
        "height": 650,
        "width": 650,
        "pixel_spacing_mm": None,
        "slice_thickness_mm": None,
        "hu": False,
    }


def test_inspect_dicom_series_reports_geometry(tmp_path: Path) -> None:
    write_dicom_series(tmp_path / "series", dicom_series(count=4, rows=24, cols=20))
    info = json.loads(run_ichseg("inspect", str(tmp_path / "series")).stdout)
    assert info["format"] == "dicom-directory" and info["slices"] == 4
    assert (info["height"], info["width"]) == (24, 20)
    assert info["pixel_spacing_mm"] == [0.5, 0.45] and info["slice_thickness_mm"] == pytest.approx(2.5)
    assert info["hu"] is True


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"hello, this is a text file\n", "detected text"), (b"PK\x03\x04garbage", "zip archive is truncated")],
)
def test_inspect_bad_input_prints_one_error_line(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "upload.mp4"
    path.write_bytes(content)
    result = run_ichseg("inspect", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_preview_writes_video_and_contact_sheet(tmp_path: Path, sample_dir: Path) -> None:
    result = run_ichseg("preview", str(sample_dir / "slices"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 10_000
    video = run_ichseg("inspect", str(tmp_path / "out" / "slices.mp4"))
    assert json.loads(video.stdout)["slices"] == 32
