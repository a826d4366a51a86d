"""A zipped DICOM study costs the chosen series, not the zip: members are read one at a time, the
other series never leave their headers, and the SEG's headers come out of the same pass.

Python's allocation tracer (numpy reports its buffers to it) measures what the reader holds at
its peak: a byte count, the same on every run.
"""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ichseg.errors import ScanTooLargeError
from ichseg.limits import ScanLimits
from ichseg.readers import read_scan, read_scan_and_headers
from ichseg.writers.dicom_seg import capture_headers, source_headers
from tests.scan_fixtures import dicom_bytes, dicom_series, zip_files

STUDY = "1.2.826.0.1.3680043.8.498.4242"


def _study_zip(tmp_path: Path, bone_slices: int = 60, bone_size: int = 256) -> tuple[bytes, int]:
    """A chosen soft-tissue series of 12 x 64x64 and a bone-kernel one of ``bone_slices`` x
    ``bone_size``^2 (never chosen); the zip's bytes and the decompressed size of its members."""
    soft = dicom_series(
        12, rows=64, cols=64, step_mm=5.0, study_uid=STUDY, attributes={"ConvolutionKernel": "STANDARD"}
    )
    bone = dicom_series(
        bone_slices,
        rows=bone_size,
        cols=bone_size,
        step_mm=5.0,
        study_uid=STUDY,
        attributes={"ConvolutionKernel": "BONE", "SeriesNumber": 3},
    )
    members = {f"study/{i:04d}.dcm": dicom_bytes(ds) for i, ds in enumerate(soft + bone)}
    path = zip_files(tmp_path / "study.zip", members, compression=zipfile.ZIP_DEFLATED)
    return path.read_bytes(), sum(len(p) for p in members.values())


def _peak_bytes(action: object) -> int:
    assert callable(action)
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_study_zip_holds_one_member_and_the_chosen_volume_not_every_member(tmp_path: Path) -> None:
    data, expanded = _study_zip(tmp_path)
    assert expanded > 7_500_000  # 60 bone instances of 128 KiB: what reading every member at once costs

    scan = read_scan(data, ScanLimits())
    assert scan.slices.shape == (12, 64, 64) and scan.series is not None
    assert scan.series.chosen.kernel == "STANDARD"

    peak = _peak_bytes(lambda: read_scan(data, ScanLimits()))
    # One bone member (128 KiB) at a time, 72 headers and a 192 KiB volume: far under the members' sum.
    assert peak < expanded / 4, f"peak {peak} bytes for {expanded} bytes of members"


def test_a_series_too_large_is_refused_from_its_headers_before_any_pixels_are_held(tmp_path: Path) -> None:
    """The issue's case in small: many large members that compress well, refused by the voxel limit."""
    data, expanded = _study_zip(tmp_path, bone_slices=40, bone_size=512)
    limits = ScanLimits(max_total_pixels=30 * 512 * 512)
    soft_only = dicom_series(40, rows=512, cols=512, step_mm=5.0, attributes={"ConvolutionKernel": "STANDARD"})
    big = zip_files(tmp_path / "big.zip", {f"{i}.dcm": dicom_bytes(ds) for i, ds in enumerate(soft_only)})
    big_bytes = big.read_bytes()
    big_expanded = sum(len(dicom_bytes(ds)) for ds in soft_only)

    def refuse() -> None:
        with pytest.raises(ScanTooLargeError, match="voxels"):
            read_scan(big_bytes, limits)

    peak = _peak_bytes(refuse)
    assert peak < big_expanded / 8, f"peak {peak} bytes for {big_expanded} bytes of members"
    assert expanded > 0 and data  # the study itself still reads under the same limits
    assert read_scan(data, limits).num_slices == 12


def test_the_reader_returns_the_chosen_series_headers_without_pixels_as_the_seg_needs(tmp_path: Path) -> None:
    data, _ = _study_zip(tmp_path, bone_slices=12, bone_size=64)
    read = read_scan_and_headers(data, ScanLimits())
    assert read.scan.dicom is not None
    assert [str(d.SOPInstanceUID) for d in read.dicom_headers] == list(read.scan.dicom.sop_instance_uids)
    assert all("PixelData" not in d for d in read.dicom_headers)
    assert all(getattr(d, "buffer", None) is None for d in read.dicom_headers)  # no member bytes kept alive

    headers = source_headers(read.dicom_headers, read.scan.dicom)
    # The same headers as reading the zip again for them (what the split did before), in slice order.
    assert headers == capture_headers(data, read.scan.dicom, ScanLimits())
    assert all("7FE00010" not in h["dataset"] for h in headers)
    positions = [float(h["dataset"]["00200032"]["Value"][2]) for h in headers]
    assert positions == sorted(positions)


def test_a_video_or_image_has_no_dicom_headers(tmp_path: Path) -> None:
    from tests.scan_fixtures import png_bytes

    read = read_scan_and_headers(png_bytes(np.zeros((8, 8), np.uint8)), ScanLimits())
    assert read.dicom_headers == () and read.scan.num_slices == 1
