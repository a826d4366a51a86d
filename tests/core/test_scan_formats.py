"""Every supported input format reads to the right slices, order and geometry."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from ichseg.errors import NoFramesError
from ichseg.readers import read_scan
from tests.conftest import SHARED_DATA
from tests.scan_fixtures import (
    HEAD_HU,
    dicom_bytes,
    dicom_series,
    encode_video,
    grey_frames,
    jpeg_bytes,
    nifti_volume,
    png_bytes,
    write_dicom_series,
    zip_files,
)


@pytest.mark.parametrize(
    ("suffix", "container_format", "codec", "pix_fmt", "expected_format", "tolerance"),
    [
        ("mp4", "mp4", "libx264", "yuv420p", "mp4", 6),
        ("mp4", "mp4", "libx265", "yuv420p", "mp4", 6),
        ("mov", "mov", "libx264", "yuv420p", "mov", 6),
        ("avi", "avi", "mjpeg", "yuvj420p", "avi", 6),
        ("avi", "avi", "rawvideo", "gray", "avi", 0),
    ],
)
def test_video_frames_become_slices_in_order(
    tmp_path: Path, suffix: str, container_format: str, codec: str, pix_fmt: str, expected_format: str, tolerance: int
) -> None:
    frames = grey_frames(count=5, height=48, width=64)
    # A misleading name: the format must come from the content.
    path = encode_video(
        tmp_path / f"scan.{'bin' if suffix == 'mp4' else suffix}", frames, container_format, codec, pix_fmt
    )
    scan = read_scan(path)
    assert scan.format == expected_format
    assert scan.slices.shape == (5, 48, 64)
    assert scan.slice_ids == ("0000", "0001", "0002", "0003", "0004")
    assert not scan.hu and scan.pixel_spacing_mm is None
    assert np.abs(scan.slices.astype(int) - frames.astype(int)).mean() <= tolerance
    assert list(np.argsort(scan.slices.reshape(5, -1).mean(axis=1))) == [0, 1, 2, 3, 4]


def test_video_from_bytes_equals_video_from_path(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "v.mp4", grey_frames(3), "mp4", "libx264", "yuv420p")
    assert np.array_equal(read_scan(path.read_bytes()).slices, read_scan(path).slices)


def test_committed_sample_video_and_slices_agree(sample_dir: Path) -> None:
    video = read_scan(sample_dir / "brain.mp4")
    images = read_scan(sample_dir / "slices")
    assert video.describe()["slices"] == images.describe()["slices"] == 32
    assert video.original_size == images.original_size == (650, 650)
    assert images.slice_ids[:3] == ("1", "2", "3") and images.slice_ids[-1] == "32"
    # H.264 at crf 18 is visually lossless on CT slices.
    assert np.abs(video.slices.astype(int) - images.slices.astype(int)).mean() < 1.5


def test_single_jpeg_andpng_bytes(tmp_path: Path) -> None:
    array = grey_frames(1, 30, 20)[0]
    (tmp_path / "slice_7.dat").write_bytes(png_bytes(array))
    png = read_scan(tmp_path / "slice_7.dat")
    assert png.format == "png" and png.slices.shape == (1, 30, 20) and png.slice_ids == ("slice_7",)
    assert np.array_equal(png.slices[0], array)
    jpeg = read_scan(jpeg_bytes(array))
    assert jpeg.format == "jpeg" and jpeg.slices.shape == (1, 30, 20)


def test_colour_image_is_reduced_to_grey(tmp_path: Path) -> None:
    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., :] = 100
    (tmp_path / "c.png").write_bytes(png_bytes(rgb))
    scan = read_scan(tmp_path / "c.png")
    assert scan.slices.shape == (1, 10, 12) and int(scan.slices[0, 0, 0]) == 100


def test_zip_of_images_is_in_natural_order(tmp_path: Path) -> None:
    frames = grey_frames(12, 16, 16)
    members = {f"scan/{k + 1}.png": png_bytes(frames[k]) for k in range(12)}
    members["scan/3_HGE_Seg.jpg"] = jpeg_bytes(np.zeros((16, 16), np.uint8))  # CT-ICH mask: not a slice
    members["__MACOSX/scan/._1.png"] = b"junk"
    members["scan/readme.txt"] = b"exported by viewer"
    scan = read_scan(zip_files(tmp_path / "upload", dict(reversed(members.items()))))
    assert scan.format == "image-zip"
    assert scan.slice_ids == tuple(str(k) for k in range(1, 13))
    assert np.array_equal(scan.slices, frames)


def test_directory_of_images_and_ct_ich_patient_layout(tmp_path: Path) -> None:
    frames = grey_frames(3, 20, 20)
    patient = tmp_path / "Patients_CT" / "049"
    for window in ("brain", "bone"):
        (patient / window).mkdir(parents=True)
    for k in range(3):
        (patient / "brain" / f"{k + 1}.jpg").write_bytes(jpeg_bytes(frames[k]))
        (patient / "bone" / f"{k + 1}.jpg").write_bytes(jpeg_bytes(255 - frames[k]))
    (patient / "brain" / "2_HGE_Seg.jpg").write_bytes(jpeg_bytes(np.zeros((20, 20), np.uint8)))
    from_patient = read_scan(patient)
    from_brain = read_scan(patient / "brain")
    assert from_patient.format == "image-directory" and from_patient.slice_ids == ("1", "2", "3")
    assert np.array_equal(from_patient.slices, from_brain.slices)
    assert np.abs(from_patient.slices.astype(int) - frames.astype(int)).mean() < 3


@pytest.mark.skipif(not (SHARED_DATA / "ct-ich").is_dir(), reason="../shared/data is beside every checkout and CI")
def test_real_ct_ich_patient_folder() -> None:
    scan = read_scan(SHARED_DATA / "ct-ich" / "Patients_CT" / "066")
    assert scan.num_slices == 29 and scan.original_size == (650, 650)


def _check_dicom_scan(scan, count: int, rows: int, cols: int) -> None:  # type: ignore[no-untyped-def]
    assert scan.hu
    assert scan.slices.shape == (count, rows, cols) and scan.slices.dtype == np.float32
    # Slice k in space carries HEAD_HU + k: the order follows ImagePositionPatient.
    assert [float(s.max()) for s in np.where(scan.slices < 500, scan.slices, -1000)] == [
        HEAD_HU + k for k in range(count)
    ]
    assert float(scan.slices.min()) == -1000.0  # rescale applied
    assert scan.pixel_spacing_mm == (0.5, 0.45)
    assert scan.slice_thickness_mm == pytest.approx(2.5)


def test_dicom_folder_sorted_by_position_not_instance_number(tmp_path: Path) -> None:
    series = dicom_series(count=6)
    write_dicom_series(tmp_path / "series", series)
    scan = read_scan(tmp_path / "series")
    assert scan.format == "dicom-directory"
    _check_dicom_scan(scan, 6, 32, 40)
    assert scan.dicom is not None and scan.dicom.sop_instance_uids == tuple(d.SOPInstanceUID for d in series)


def test_dicom_zip_with_oblique_series(tmp_path: Path) -> None:
    tilt = np.deg2rad(15)
    orientation = (1, 0, 0, 0, np.cos(tilt), np.sin(tilt))
    series = dicom_series(count=5, orientation=orientation)
    members = {f"DICOM/ST0/SE0/IM{i}": dicom_bytes(ds) for i, ds in enumerate(reversed(series))}
    members["DICOMDIR"] = b"index"
    scan = read_scan(zip_files(tmp_path / "study.zip", members))
    assert scan.format == "dicom-zip"
    _check_dicom_scan(scan, 5, 32, 40)


def test_single_dicom_instance(tmp_path: Path) -> None:
    (tmp_path / "one.dcm").write_bytes(dicom_bytes(dicom_series(count=1)[0]))
    scan = read_scan(tmp_path / "one.dcm")
    assert scan.format == "dicom" and scan.num_slices == 1
    assert scan.pixel_spacing_mm == (0.5, 0.45) and scan.slice_thickness_mm == pytest.approx(2.5)


def test_duplicate_dicom_instances_count_once(tmp_path: Path) -> None:
    series = dicom_series(count=3)
    members = {f"a{i}.dcm": dicom_bytes(ds) for i, ds in enumerate(series)}
    members["retry.dcm"] = dicom_bytes(series[1])
    assert read_scan(zip_files(tmp_path / "s.zip", members)).num_slices == 3


@pytest.mark.parametrize("flip_x", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_nifti_volume_oriented_radiologically(tmp_path: Path, gz: bool, flip_x: bool) -> None:
    path = nifti_volume(tmp_path / "ct.nii", shape=(40, 32, 7), zooms=(0.45, 0.5, 5.0), flip_x=flip_x)
    if gz:
        gz_path = tmp_path / "ct.nii.gz"
        gz_path.write_bytes(gzip.compress(path.read_bytes()))
        path = gz_path
    scan = read_scan(path)
    assert scan.format == "nifti" and scan.hu
    assert scan.slices.shape == (7, 32, 40)
    assert scan.pixel_spacing_mm == pytest.approx((0.5, 0.45))
    assert scan.slice_thickness_mm == pytest.approx(5.0)
    assert [float(s.max()) for s in np.where(scan.slices < 500, scan.slices, -1000)] == [HEAD_HU + k for k in range(7)]
    # The asymmetric bone marker sits where the phantom put it (no flips lost).
    assert float(scan.slices[0, 32 // 4, 40 // 3]) == 1000.0


def test_hu_clipped_png_set_reads_as_8bit() -> None:
    folder = SHARED_DATA / "mbhseg25-mini" / "images"
    scan = read_scan(folder)
    assert scan.num_slices == 36 and scan.original_size == (512, 512) and not scan.hu


def test_compressed_dicom_series_jpeg_lossless_and_rle(tmp_path: Path) -> None:
    from pydicom.uid import RLELossless

    from tests.scan_fixtures import jpeg_lossless_dicom

    series = dicom_series(count=4)
    members = {f"IM{i}": jpeg_lossless_dicom(ds, tmp_path) for i, ds in enumerate(series[:2])}
    for i, ds in enumerate(series[2:], start=2):
        ds.compress(RLELossless)
        members[f"IM{i}"] = dicom_bytes(ds)
    scan = read_scan(zip_files(tmp_path / "compressed.zip", members))
    _check_dicom_scan(scan, 4, 32, 40)


def test_enhanced_multiframe_ct_sorted_by_per_frame_positions(tmp_path: Path) -> None:
    from tests.scan_fixtures import enhanced_ct

    (tmp_path / "enhanced.dcm").write_bytes(dicom_bytes(enhanced_ct(count=3, step_mm=1.25)))
    scan = read_scan(tmp_path / "enhanced.dcm")
    assert scan.format == "dicom" and scan.hu and scan.slices.shape == (3, 24, 20)
    assert [float(s.max()) for s in np.where(scan.slices < 500, scan.slices, -1000)] == [HEAD_HU + k for k in range(3)]
    assert float(scan.slices.min()) == -1000.0
    assert scan.pixel_spacing_mm == (0.6, 0.7) and scan.slice_thickness_mm == pytest.approx(1.25)


def _non_image_object(sop_class: str, modality: str = "") -> bytes:
    """A DICOM object without pixels, as exports put beside the images (DICOMDIR, a dose report)."""
    from tests.scan_fixtures import non_image_object

    return dicom_bytes(non_image_object(sop_class, modality))


def test_non_image_objects_in_an_exported_series_folder_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    write_dicom_series(folder, dicom_series(3))
    (folder / "DICOMDIR").write_bytes(_non_image_object("1.2.840.10008.1.3.10"))  # left out by its name
    (folder / "DIRFILE").write_bytes(_non_image_object("1.2.840.10008.1.3.10"))  # Philips' own directory file
    (folder / "DOSE").write_bytes(_non_image_object("1.2.840.10008.5.1.4.1.1.88.67", "SR"))  # dose report
    scan = read_scan(folder)
    assert scan.num_slices == 3 and scan.hu and scan.non_image_objects == 2
    assert scan.describe()["non_image_objects"] == 2
    assert "non_image_objects" not in read_scan(tmp_path / "export" / "IM0000").describe()


def test_a_folder_of_only_non_image_objects_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    (folder / "DOSE").write_bytes(_non_image_object("1.2.840.10008.5.1.4.1.1.88.67", "SR"))
    with pytest.raises(NoFramesError, match=r"none of the 1 DICOM object\(s\) holds pixel data"):
        read_scan(folder)
