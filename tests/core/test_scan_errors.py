"""Bad input ends in a specific, typed error whose message says what is wrong."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichseg.errors import (
    CorruptScanError,
    InconsistentSeriesError,
    NoFramesError,
    NotCTError,
    ScanTooLargeError,
    UnsafeArchiveError,
    UnsupportedFormatError,
)
from ichseg.limits import ScanLimits
from ichseg.readers import read_scan
from tests.patient_identifiers import PATIENT_IDENTIFIERS, identifier_leaks
from tests.scan_fixtures import (
    dicom_bytes,
    dicom_series,
    encode_video,
    grey_frames,
    nifti_volume,
    png_bytes,
    write_dicom_series,
    zip_files,
)


@pytest.mark.parametrize(
    ("payload", "detected"),
    [
        (b"name,age\nalice,3\n", "detected text"),
        (b"GIF89a" + b"\x00" * 64, "detected GIF image"),
        (b"%PDF-1.7\n" + b"\x00" * 64, "detected PDF document"),
        (b"\x1a\x45\xdf\xa3" + b"\x00" * 64, "detected Matroska/WebM video"),
        (b"\x00\x01\x02\xff\xfe" * 40, "detected unrecognised content"),
        (b"", "detected empty file"),
    ],
)
def test_unsupported_content_names_what_was_detected(tmp_path: Path, payload: bytes, detected: str) -> None:
    path = tmp_path / "scan.mp4"  # the extension lies; content decides
    path.write_bytes(payload)
    with pytest.raises(UnsupportedFormatError, match=detected):
        read_scan(path)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="no such file"):
        read_scan(tmp_path / "nope.mp4")


def test_truncated_mp4(tmp_path: Path) -> None:
    data = encode_video(tmp_path / "v.mp4", grey_frames(8), "mp4", "libx264", "yuv420p").read_bytes()
    with pytest.raises(CorruptScanError, match="truncated or damaged"):
        read_scan(data[: len(data) // 2])


def test_truncated_avi_reports_missing_frames(tmp_path: Path) -> None:
    data = encode_video(tmp_path / "v.avi", grey_frames(8, 64, 64), "avi", "rawvideo", "gray").read_bytes()
    with pytest.raises(CorruptScanError):
        read_scan(data[: len(data) // 2])


def test_truncatedjpeg_bytes(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(grey_frames(1, 64, 64)[0]).save(buffer, format="JPEG")
    with pytest.raises(CorruptScanError, match="truncated or damaged"):
        read_scan(buffer.getvalue()[:200])


def test_damaged_zip(tmp_path: Path) -> None:
    data = zip_files(tmp_path / "a.zip", {f"{i}.png": png_bytes(grey_frames(1)[0]) for i in range(3)}).read_bytes()
    with pytest.raises(CorruptScanError, match="zip archive is truncated or damaged"):
        read_scan(data[: len(data) - 30])


def test_zip_without_slices(tmp_path: Path) -> None:
    with pytest.raises(NoFramesError, match="no JPEG/PNG slices or DICOM files"):
        read_scan(zip_files(tmp_path / "a.zip", {"notes.txt": b"hello"}))
    with pytest.raises(NoFramesError):
        read_scan(zip_files(tmp_path / "b.zip", {}))


def test_nested_zip_is_explained(tmp_path: Path) -> None:
    inner = zip_files(tmp_path / "inner.zip", {"1.png": png_bytes(grey_frames(1)[0])}).read_bytes()
    with pytest.raises(UnsupportedFormatError, match="nested zip"):
        read_scan(zip_files(tmp_path / "outer.zip", {"inner.zip": inner}))


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(NoFramesError):
        read_scan(tmp_path)


def test_too_many_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(grey_frames(1, 64, 64)[0]))
    with pytest.raises(ScanTooLargeError, match="MiB"):
        read_scan(path, ScanLimits(max_bytes=100))


def test_too_many_frames(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "v.mp4", grey_frames(6), "mp4", "libx264", "yuv420p")
    with pytest.raises(ScanTooLargeError, match="6 slices; the limit is 4"):
        read_scan(path, ScanLimits(max_frames=4))


def test_a_small_video_of_huge_frames_is_refused_from_its_header_before_decoding(tmp_path: Path) -> None:
    """A few KB can declare frames worth gigabytes: the limit is checked before any frame is decoded."""
    import tracemalloc

    frames = np.zeros((12, 1200, 1600), np.uint8)  # 23 Mi voxels, a few KB of H.264
    path = encode_video(tmp_path / "huge.mp4", frames, "mp4", "libx264", "yuv420p")
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ScanTooLargeError, match="voxels"):
            read_scan(path, ScanLimits(max_total_pixels=12 * 1200 * 1600 - 1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1200 * 1600  # less than one decoded frame was ever allocated


def test_too_many_pixels(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(png_bytes(np.zeros((40, 50), np.uint8)))
    with pytest.raises(ScanTooLargeError, match="pixels per slice"):
        read_scan(path, ScanLimits(max_pixels_per_slice=1000))


def test_nifti_too_many_voxels_is_refused_before_loading(tmp_path: Path) -> None:
    path = nifti_volume(tmp_path / "v.nii", shape=(40, 32, 7))
    with pytest.raises(ScanTooLargeError, match="voxels"):
        read_scan(path, ScanLimits(max_total_pixels=5000))


def test_zip_bomb_refused_by_ratio(tmp_path: Path) -> None:
    bomb = zip_files(tmp_path / "bomb.zip", {"1.png": b"\x00" * 5_000_000})
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        read_scan(bomb)


def test_zip_bomb_refused_by_total_size(tmp_path: Path) -> None:
    members = {f"{i}.png": png_bytes(grey_frames(1, 64, 64)[0]) for i in range(4)}
    with pytest.raises(ScanTooLargeError, match="expands to"):
        read_scan(zip_files(tmp_path / "a.zip", members), ScanLimits(max_uncompressed_bytes=100))


def test_zip_lying_about_its_size_is_refused(tmp_path: Path) -> None:
    """A header that under-declares the member size cannot smuggle more bytes out."""
    payload = png_bytes(grey_frames(1, 64, 64)[0])
    data = bytearray(zip_files(tmp_path / "a.zip", {"1.png": payload}, compression=zipfile.ZIP_STORED).read_bytes())
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, len(payload) - 10)  # uncompressed size in the central directory
    with pytest.raises((UnsafeArchiveError, CorruptScanError)):
        read_scan(bytes(data))


@pytest.mark.parametrize("name", ["../../etc/evil.png", "/abs/evil.png", "C:\\evil.png", "a/../../b.png"])
def test_unsafe_member_paths(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo(name), png_bytes(grey_frames(1)[0]))
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        read_scan(archive)


def test_symlink_member_refused(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    info = zipfile.ZipInfo("1.png")
    info.external_attr = 0o120777 << 16  # S_IFLNK
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        read_scan(archive)


def test_images_of_different_sizes(tmp_path: Path) -> None:
    members = {"1.png": png_bytes(np.zeros((10, 10), np.uint8)), "2.png": png_bytes(np.zeros((12, 10), np.uint8))}
    with pytest.raises(InconsistentSeriesError, match="differ in size"):
        read_scan(zip_files(tmp_path / "a.zip", members))


def test_sixteen_bit_png_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "hu.png"
    Image.fromarray(np.full((8, 8), 1200, dtype=np.uint16)).save(path)
    with pytest.raises(UnsupportedFormatError, match="DICOM or NIfTI"):
        read_scan(path)


def test_several_dicom_series(tmp_path: Path) -> None:
    study = "1.2.3.4"
    first = dicom_series(3, study_uid=study)
    second = dicom_series(2, study_uid=study)
    for ds in second:  # free text a site may fill with patient details: never in an error reason
        ds.SeriesDescription = f"{PATIENT_IDENTIFIERS['PatientName']} 1956-03-17 {PATIENT_IDENTIFIERS['PatientID']}"
        ds.SeriesNumber = 7
    write_dicom_series(tmp_path / "mixed", first + second)
    with pytest.raises(InconsistentSeriesError, match="2 series in one upload") as raised:
        read_scan(tmp_path / "mixed")
    assert "series 7 (2 images)" in str(raised.value)
    assert identifier_leaks(str(raised.value)) == []


def test_dicom_instances_of_different_sizes(tmp_path: Path) -> None:
    uid = "1.2.3.5"
    series = dicom_series(2, rows=32, series_uid=uid) + dicom_series(1, rows=30, series_uid=uid)
    write_dicom_series(tmp_path / "s", series)
    with pytest.raises(InconsistentSeriesError, match="differ in size"):
        read_scan(tmp_path / "s")


def test_dicom_instances_with_different_orientations(tmp_path: Path) -> None:
    uid = "1.2.3.6"
    axial = dicom_series(2, series_uid=uid)
    sagittal = dicom_series(1, series_uid=uid, orientation=(0, 1, 0, 0, 0, -1))
    write_dicom_series(tmp_path / "s", axial + sagittal)
    with pytest.raises(InconsistentSeriesError, match="different orientations"):
        read_scan(tmp_path / "s")


def test_non_ct_modality(tmp_path: Path) -> None:
    (tmp_path / "mr.dcm").write_bytes(dicom_bytes(dicom_series(1, modality="MR")[0]))
    with pytest.raises(NotCTError, match="modality is MR, not CT"):
        read_scan(tmp_path / "mr.dcm")


def test_truncated_dicom(tmp_path: Path) -> None:
    data = dicom_bytes(dicom_series(1)[0])
    with pytest.raises((CorruptScanError, NoFramesError)):
        read_scan(data[: len(data) - 1000])


def test_mixed_dicom_and_images(tmp_path: Path) -> None:
    members = {"1.png": png_bytes(np.zeros((8, 8), np.uint8)), "2.dcm": dicom_bytes(dicom_series(1)[0])}
    with pytest.raises(InconsistentSeriesError, match="mixes"):
        read_scan(zip_files(tmp_path / "a.zip", members))


def test_truncated_nifti(tmp_path: Path) -> None:
    data = nifti_volume(tmp_path / "v.nii").read_bytes()
    with pytest.raises(CorruptScanError, match="NIfTI"):
        read_scan(data[: len(data) // 2])


def test_gzip_bomb_nifti(tmp_path: Path) -> None:
    import gzip

    data = nifti_volume(tmp_path / "v.nii", shape=(64, 64, 20)).read_bytes()
    with pytest.raises(ScanTooLargeError, match="expands beyond"):
        read_scan(gzip.compress(data), ScanLimits(max_uncompressed_bytes=10_000))


def test_limits_from_environment() -> None:
    limits = ScanLimits.from_env({"ICHSEG_LIMIT_MAX_FRAMES": "12", "ICHSEG_LIMIT_MAX_COMPRESSION_RATIO": "3.5"})
    assert limits.max_frames == 12 and limits.max_compression_ratio == 3.5
