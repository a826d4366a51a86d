"""A study folder of several series: the rules pick one and say why they skipped each other one;
every slice is measured by its own extent along the normal (two-stage head protocols, tilt)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from ichseg.errors import InconsistentSeriesError, NotCTError
from ichseg.model_metadata import ModelMetadata
from ichseg.pipeline.messages import BatchRef, ScanManifest
from ichseg.readers import read_scan
from ichseg.readers.series_selection import NoSuitableSeriesError, SeriesRules, slice_extents
from ichseg.scan import Scan, SkipReason
from ichseg.writers.report import report_from_areas
from tests.patient_identifiers import PATIENT_IDENTIFIERS, identifier_leaks
from tests.scan_fixtures import (
    dicom_bytes,
    dicom_series,
    enhanced_ct,
    non_image_object,
    write_dicom_series,
    zip_files,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
PATIENT_TEXT = ("Quetzal^Marisol", "1956-03-17", PATIENT_IDENTIFIERS["PatientID"])
"""Free text a site may put in a series description: never in a reason, a summary or a report."""
"""What a site may type into SeriesDescription: it must never reach a reason or a report."""
AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL")
SAGITTAL = (0, 1, 0, 0, 0, -1)
CORONAL = (1, 0, 0, 0, 0, -1)


def ge_series(
    number: int,
    count: int,
    step_mm: float,
    kernel: str = "STANDARD",
    image_type: tuple[str, ...] = AXIAL,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    modality: str = "CT",
) -> list[Dataset]:
    """A series as a GE scanner writes it: Manufacturer, kernel, ImageType, a free-text description."""
    return dicom_series(
        count,
        step_mm=step_mm,
        orientation=orientation,
        modality=modality,
        study_uid=STUDY,
        attributes={
            "Manufacturer": "GE MEDICAL SYSTEMS",
            "SeriesNumber": number,
            "ConvolutionKernel": kernel,
            "ImageType": list(image_type),
            "SeriesDescription": f"{' '.join(PATIENT_TEXT)} {step_mm} {kernel}",
        },
    )


def scout(number: int = 1) -> list[Dataset]:
    """A two-view scout: one lateral and one frontal image in one series."""
    uid = generate_uid()
    views = []
    for orientation in (SAGITTAL, CORONAL):
        (image,) = dicom_series(1, orientation=orientation, series_uid=uid, study_uid=STUDY)
        image.SeriesNumber, image.ImageType = number, ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        views.append(image)
    return views


def dose_screen(number: int = 999) -> Dataset:
    """A dose summary page stored as a Secondary Capture: pixels and Modality CT, not a CT image."""
    (page,) = dicom_series(1, study_uid=STUDY)
    page.SOPClassUID = page.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    page.SeriesNumber, page.ImageType = number, ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    return page


def ge_study() -> dict[str, list[Dataset]]:
    """What a head CT study folder holds: by subfolder, the series and objects a scanner exports."""
    return {
        "S1": scout(1),
        "S2": ge_series(2, 30, 5.0),  # 5 mm brain, 150 mm
        "S3": ge_series(3, 64, 1.25),  # 1.25 mm brain, 80 mm
        "S4": ge_series(4, 64, 1.25, kernel="BONE"),  # 1.25 mm bone
        "S5": ge_series(5, 30, 5.0, image_type=("DERIVED", "SECONDARY", "REFORMATTED"), orientation=SAGITTAL),
        "S999": [dose_screen()],
        "DIRFILE": [non_image_object("1.2.840.10008.1.3.10")],  # a vendor's directory file
        "DOSE": [non_image_object("1.2.840.10008.5.1.4.1.1.88.67", "SR")],  # radiation dose SR
    }


def write_study(folder: Path, study: dict[str, list[Dataset]]) -> Path:
    for name, datasets in study.items():
        write_dicom_series(folder / name, datasets)
    return folder


def skipped_reasons(scan: Scan) -> dict[int | None, SkipReason]:
    assert scan.series is not None
    return {s.series.series_number: s.reason for s in scan.series.skipped}


def assert_no_patient_text(text: str) -> None:
    assert identifier_leaks(text) == [], text


def test_a_ge_study_folder_segments_the_5mm_soft_tissue_series(tmp_path: Path) -> None:
    study = ge_study()
    scan = read_scan(write_study(tmp_path / "study", study))
    assert scan.series is not None and scan.series.chosen.series_number == 2
    assert scan.num_slices == 30 and scan.slice_thickness_mm == pytest.approx(5.0)
    assert scan.dicom is not None and set(scan.dicom.sop_instance_uids) == {d.SOPInstanceUID for d in study["S2"]}
    assert skipped_reasons(scan) == {
        1: SkipReason.LOCALIZER,
        3: SkipReason.THINNER_THAN_LIMIT,
        4: SkipReason.SHARP_KERNEL,
        5: SkipReason.NOT_AXIAL,
        999: SkipReason.NOT_CT,
    }
    assert scan.series.non_image_objects == 2 and scan.non_image_objects == 2
    chosen = scan.series.chosen
    assert (chosen.images, chosen.kernel, chosen.thickness_mm) == (30, "STANDARD", 5.0)
    bone = next(s for s in scan.series.skipped if s.series.series_number == 4)
    assert (bone.series.kernel, bone.series.thickness_mm, bone.series.images) == ("BONE", 1.25, 64)
    details = {s.series.series_number: s.detail for s in scan.series.skipped}
    assert "thinner than 2.5 mm" in details[3] and "series 2 is 5 mm" in details[3]
    assert "Secondary Capture" in details[999] and "90 degrees" in details[5]
    assert_no_patient_text(json.dumps(scan.describe()))
    described = scan.describe()["series"]
    assert isinstance(described, dict) and described["chosen"]["series_number"] == 2


def test_the_environment_overrides_the_rules_and_changes_the_pick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_study(tmp_path / "study", ge_study())
    monkeypatch.setenv("ICHSEG_SERIES_MIN_THICKNESS_MM", "1")
    scan = read_scan(folder)
    assert scan.series is not None and scan.series.chosen.series_number == 3 and scan.num_slices == 64
    assert skipped_reasons(scan)[2] == SkipReason.THICKER_THAN_CHOSEN
    monkeypatch.setenv("ICHSEG_SERIES_SHARP_KERNELS", "BONE|STANDARD")  # a site that wants neither
    with pytest.raises(NoSuitableSeriesError):
        read_scan(folder)


def test_rules_from_env_are_typed_and_bad_values_are_named() -> None:
    rules = SeriesRules.from_env({"ICHSEG_SERIES_MIN_SLICES": "20", "ICHSEG_SERIES_MAX_TILT_DEG": "15"})
    assert (rules.min_slices, rules.max_tilt_deg, rules.min_thickness_mm) == (20, 15.0, 2.5)
    with pytest.raises(ValueError, match="ICHSEG_SERIES_MIN_SLICES"):
        SeriesRules.from_env({"ICHSEG_SERIES_MIN_SLICES": "many"})
    with pytest.raises(ValueError, match="ICHSEG_SERIES_SOFT_KERNELS is not a regular expression"):
        SeriesRules.from_env({"ICHSEG_SERIES_SOFT_KERNELS": "(STANDARD"})


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("STANDARD", "soft"),
        ("SOFT", "soft"),
        ("BONEPLUS", "sharp"),
        ("LUNG", "sharp"),
        ("DETAIL", "sharp"),
        ("H40s", "soft"),
        ("H31s", "soft"),
        ("H70h", "sharp"),
        ("B70f", "sharp"),
        ("Hr40f\\3", "soft"),
        ("Hr64h\\3", "sharp"),
        ("Br64d\\2", "sharp"),
        ("J45s\\3", "soft"),
        ("FC26", "soft"),
        ("FC30", "sharp"),
        ("UB", "soft"),
        ("YC", "sharp"),
        ("L", "sharp"),
        ("VENDOR9", "unknown"),
        (None, "unknown"),
    ],
)
def test_kernels_are_classified_across_vendors(kernel: str | None, expected: str) -> None:
    assert SeriesRules().kernel_class(kernel) == expected


def test_a_soft_kernel_is_preferred_over_an_unknown_one(tmp_path: Path) -> None:
    study = {"A": ge_series(2, 30, 5.0, kernel="VENDOR9"), "B": ge_series(3, 64, 1.25)}
    scan = read_scan(write_study(tmp_path / "s", study))
    assert scan.series is not None and scan.series.chosen.series_number == 3
    assert skipped_reasons(scan) == {2: SkipReason.UNKNOWN_KERNEL}


def test_only_thin_series_fall_back_to_the_thickest(tmp_path: Path) -> None:
    study = {"A": ge_series(2, 100, 0.625), "B": ge_series(3, 64, 1.25)}
    scan = read_scan(write_study(tmp_path / "s", study))
    assert scan.series is not None and scan.series.chosen.series_number == 3
    assert skipped_reasons(scan) == {2: SkipReason.THINNER_THAN_CHOSEN}


def test_coverage_gaps_and_tilt_rules(tmp_path: Path) -> None:
    gapped = ge_series(3, 30, 5.0)
    del gapped[10]  # one slice lost on the way: a 10 mm hole in a 5 mm series
    tilted = dicom_series(
        30,
        step_mm=5.0,
        orientation=(1, 0, 0, 0, np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))),
        study_uid=STUDY,
        attributes={"SeriesNumber": 6, "ConvolutionKernel": "STANDARD"},
    )
    steep = dicom_series(
        30,
        step_mm=5.0,
        orientation=(1, 0, 0, 0, np.cos(np.deg2rad(40)), np.sin(np.deg2rad(40))),
        study_uid=STUDY,
        attributes={"SeriesNumber": 7, "ConvolutionKernel": "STANDARD"},
    )
    study = {"short": ge_series(2, 12, 2.5), "gap": gapped, "tilt20": tilted, "tilt40": steep}
    scan = read_scan(write_study(tmp_path / "s", study))
    assert scan.series is not None and scan.series.chosen.series_number == 6  # 20 degrees of tilt is axial
    assert skipped_reasons(scan) == {2: SkipReason.SHORT_COVERAGE, 3: SkipReason.GAP, 7: SkipReason.NOT_AXIAL}
    assert all(e == pytest.approx(5.0, abs=1e-3) for e in scan.slice_extents_mm or ())


def test_no_qualifying_series_names_each_by_number_and_reason_only(tmp_path: Path) -> None:
    study = {"S1": scout(1), "S2": ge_series(2, 5, 5.0), "S4": ge_series(4, 64, 1.25, kernel="BONE")}
    with pytest.raises(InconsistentSeriesError) as raised:
        read_scan(write_study(tmp_path / "s", study))
    message = str(raised.value)
    assert isinstance(raised.value, NoSuitableSeriesError) and "3 series in one upload, none fit" in message
    assert "series 1 (2 images): ImageType LOCALIZER" in message
    assert "series 2 (5 images): 5 slices, at least 10 needed" in message
    assert "series 4 (64 images): kernel BONE is a bone/lung/sharp kernel" in message
    assert [s.reason for s in raised.value.skipped] == [
        SkipReason.LOCALIZER,
        SkipReason.TOO_FEW_SLICES,
        SkipReason.SHARP_KERNEL,
    ]
    assert_no_patient_text(message)


def test_a_ct_series_beside_an_mr_one_succeeds_and_mr_alone_is_not_ct(tmp_path: Path) -> None:
    mixed = {"ct": ge_series(2, 30, 5.0), "mr": ge_series(8, 30, 5.0, modality="MR")}
    scan = read_scan(write_study(tmp_path / "mixed", mixed))
    assert scan.series is not None and scan.series.chosen.series_number == 2
    assert skipped_reasons(scan) == {8: SkipReason.NOT_CT}
    only_mr = {"a": ge_series(8, 30, 5.0, modality="MR"), "b": ge_series(9, 30, 5.0, modality="MR")}
    with pytest.raises(NotCTError, match=r"no CT series in the upload.*series 8.*modality MR, not CT"):
        read_scan(write_study(tmp_path / "mr", only_mr))


def two_stage_offsets(lower: int = 14, upper: int = 14) -> tuple[list[float], list[float]]:
    """GE's two-stage head protocol: contiguous 4 mm slices through the posterior fossa, then 7 mm."""
    offsets = [4.0 * i for i in range(lower)]
    first_upper = offsets[-1] + 2.0 + 3.5  # the 4 mm slab ends where the first 7 mm slab begins
    offsets += [first_upper + 7.0 * j for j in range(upper)]
    return offsets, [4.0] * lower + [7.0] * upper


def two_stage_scan(folder: Path, lower: int = 14, upper: int = 14, tilt_deg: float = 0.0) -> Scan:
    offsets, thickness = two_stage_offsets(lower, upper)
    tilt = np.deg2rad(tilt_deg)
    series = dicom_series(
        orientation=(1, 0, 0, 0, np.cos(tilt), np.sin(tilt)),
        offsets_mm=offsets,
        thickness_mm=thickness,
        along_table=True,
        pixel_spacing=(0.5, 0.5),
        attributes={"SeriesNumber": 2, "ConvolutionKernel": "STANDARD", "Manufacturer": "GE MEDICAL SYSTEMS"},
    )
    write_dicom_series(folder, series)
    return read_scan(folder)


MODEL = ModelMetadata(name="m", version="1", slice_threshold=0.5)


def report_of(scan: Scan, areas: np.ndarray) -> dict[str, Any]:
    report = report_from_areas(
        scan.slice_ids,
        np.where(areas > 0, 0.9, 0.1).astype(np.float32),
        None,
        areas,
        MODEL,
        scan.pixel_spacing_mm,
        scan.slice_thickness_mm,
        scan.slice_extents_mm,
        scan.series,
    )
    return dict(report)


@pytest.mark.parametrize("tilt_deg", [0.0, 20.0])
def test_two_stage_protocol_slices_count_their_own_extent(tmp_path: Path, tilt_deg: float) -> None:
    scan = two_stage_scan(tmp_path / "s", tilt_deg=tilt_deg)
    assert scan.slice_extents_mm is not None
    assert scan.slice_extents_mm == pytest.approx([4.0] * 14 + [7.0] * 14, abs=1e-3)
    area = 400  # px on every slice, 0.25 mm^2 each
    report = report_of(scan, np.full(28, area))
    assert report["volume_ml"] == pytest.approx(area * 0.25 * (14 * 4.0 + 14 * 7.0) / 1000, abs=1e-3)
    upper = np.array([0] * 14 + [area] * 14)  # a bleed in the upper brain, where slices are 7 mm
    new = report_of(scan, upper)["volume_ml"]
    assert new == pytest.approx(area * 0.25 * 14 * 7.0 / 1000, abs=1e-3)
    old = float(upper.sum()) * 0.25 * float(scan.slice_thickness_mm or 0) / 1000  # the median step's figure
    assert scan.slice_thickness_mm == pytest.approx(5.5, abs=1e-3) and old / float(new) == pytest.approx(5.5 / 7.0)


def test_a_median_of_4mm_would_undercount_the_upper_brain_by_43_percent(tmp_path: Path) -> None:
    scan = two_stage_scan(tmp_path / "s", lower=15, upper=13)
    assert scan.slice_thickness_mm == pytest.approx(4.0, abs=1e-3)
    upper = np.array([0] * 15 + [100] * 13)
    new = float(report_of(scan, upper)["volume_ml"])
    old = float(upper.sum()) * 0.25 * 4.0 / 1000
    assert 1 - old / new == pytest.approx(3 / 7, abs=1e-3)


def test_gantry_tilt_positions_are_measured_along_the_tilted_normal(tmp_path: Path) -> None:
    scan = two_stage_scan(tmp_path / "s", tilt_deg=20.0)
    from pydicom import dcmread

    z = sorted(float(dcmread(p).ImagePositionPatient[2]) for p in (tmp_path / "s").iterdir())
    assert z[1] - z[0] == pytest.approx(4.0 / np.cos(np.deg2rad(20)), abs=1e-3)  # the table's step
    assert scan.slice_extents_mm is not None and scan.slice_extents_mm[0] == pytest.approx(4.0, abs=1e-3)


def test_overlapping_reconstruction_counts_the_step_not_the_thickness(tmp_path: Path) -> None:
    series = dicom_series(24, step_mm=2.5, thickness_mm=[5.0] * 24)  # 5 mm slabs every 2.5 mm
    write_dicom_series(tmp_path / "s", series)
    scan = read_scan(tmp_path / "s")
    extents = scan.slice_extents_mm
    assert extents is not None and extents[1:-1] == pytest.approx([2.5] * 22, abs=1e-3)
    # The end slabs reach half their thickness outward: the series covers 24 x 2.5 + 2.5 mm.
    assert (extents[0], extents[-1]) == pytest.approx((3.75, 3.75), abs=1e-3)
    assert sum(extents) == pytest.approx(62.5, abs=1e-3)


def test_slice_extents_formula() -> None:
    assert slice_extents([0, 4, 8, 13.5, 20.5], [4, 4, 4, 7, 7]) == pytest.approx((4, 4, 4, 7, 7))
    assert slice_extents([0, 5, 10], [None, None, None]) == pytest.approx((5, 5, 5))  # midpoints
    assert slice_extents([0, 7, 14], [5, 5, 5]) == pytest.approx((6, 7, 6))  # gaps split at midpoints
    assert slice_extents([0, 1, 2], [10, 1, 1]) == pytest.approx((6, 0.5, 1))  # kept between centres
    assert slice_extents([3.0], [5.0]) == (5.0,) and slice_extents([3.0], [None]) == ()


def test_enhanced_ct_two_stage_extents_from_per_frame_groups(tmp_path: Path) -> None:
    offsets, thickness = two_stage_offsets()
    (tmp_path / "e.dcm").write_bytes(dicom_bytes(enhanced_ct(offsets_mm=offsets, thickness_mm=thickness)))
    scan = read_scan(tmp_path / "e.dcm")
    assert scan.num_slices == 28 and scan.slice_extents_mm == pytest.approx([4.0] * 14 + [7.0] * 14, abs=1e-3)


def test_the_report_names_the_series_and_the_spacing_profile(tmp_path: Path) -> None:
    study = ge_study()
    offsets, thickness = two_stage_offsets()
    study["S2"] = dicom_series(
        offsets_mm=offsets,
        thickness_mm=thickness,
        study_uid=STUDY,
        attributes={"SeriesNumber": 2, "ConvolutionKernel": "STANDARD", "SeriesDescription": " ".join(PATIENT_TEXT)},
    )
    scan = read_scan(write_study(tmp_path / "study", study))
    report = report_of(scan, np.full(scan.num_slices, 10))
    ids = scan.slice_ids
    assert report["spacing_profile"] == [
        {"first": ids[0], "last": ids[13], "count": 14, "extent_mm": 4.0},
        {"first": ids[14], "last": ids[27], "count": 14, "extent_mm": 7.0},
    ]
    slices = report["slices"]
    assert isinstance(slices, list) and [s["extent_mm"] for s in slices] == pytest.approx([4.0] * 14 + [7.0] * 14)
    series = report["series"]
    assert isinstance(series, dict)
    assert series["chosen"] == {
        "series_number": 2,
        "series_instance_uid": study["S2"][0].SeriesInstanceUID,
        "images": 28,
        "kernel": "STANDARD",
        "thickness_mm": 5.5,
    }
    assert {s["series_number"]: s["reason"] for s in series["skipped"]} == {
        1: "localizer",
        3: "thinner_than_limit",
        4: "sharp_kernel",
        5: "not_axial",
        999: "not_ct",
    }
    assert series["non_image_objects"] == 2
    text = json.dumps(report)
    assert_no_patient_text(text)
    profile = scan.describe()["spacing_profile"]
    assert isinstance(profile, list) and len(profile) == 2
    # A uniform series has no profile, and a non-DICOM report no series section.
    uniform = read_scan(write_study(tmp_path / "one", {"s": ge_series(2, 30, 5.0)}))
    assert report_of(uniform, np.zeros(30, int))["spacing_profile"] is None
    assert "spacing_profile" not in uniform.describe()


def test_a_zipped_study_end_to_end_and_through_the_manifest(tmp_path: Path) -> None:
    members = {
        f"DICOM/{folder}/IM{i:04d}": dicom_bytes(ds)
        for folder, datasets in ge_study().items()
        for i, ds in enumerate(datasets)
    }
    scan = read_scan(zip_files(tmp_path / "study.zip", members))
    assert scan.format == "dicom-zip" and scan.num_slices == 30
    assert scan.series is not None and scan.series.chosen.series_number == 2 and len(scan.series.skipped) == 5
    manifest = ScanManifest(
        job_id="j",
        format=scan.format,
        slice_ids=scan.slice_ids,
        height=32,
        width=40,
        hu=True,
        window="brain",
        batches=(BatchRef("b0000", 0, 30),),
        pixel_spacing_mm=scan.pixel_spacing_mm,
        slice_thickness_mm=scan.slice_thickness_mm,
        slice_extents_mm=scan.slice_extents_mm,
        series=scan.series,
    )
    again = ScanManifest.from_json(manifest.to_json())
    assert again == manifest
    # A manifest written before extents and series were carried still reads.
    old = json.loads(manifest.to_json())
    del old["slice_extents_mm"], old["series"]
    legacy = ScanManifest.from_json(json.dumps(old))
    assert legacy.slice_extents_mm is None and legacy.series is None


def test_a_broken_or_unplaced_series_beside_a_good_one_is_skipped_with_its_reason(tmp_path: Path) -> None:
    mixed_sizes = ge_series(3, 30, 5.0)
    uid = mixed_sizes[0].SeriesInstanceUID
    (odd,) = dicom_series(1, rows=30, series_uid=uid, study_uid=STUDY)
    odd.SeriesNumber = 3
    mixed_sizes[5] = odd
    unplaced = ge_series(4, 30, 5.0)
    for ds in unplaced:  # a converter that dropped the geometry
        del ds.ImagePositionPatient
    study = {"good": ge_series(2, 30, 5.0), "sizes": mixed_sizes, "unplaced": unplaced}
    scan = read_scan(write_study(tmp_path / "s", study))
    assert scan.series is not None and scan.series.chosen.series_number == 2
    assert skipped_reasons(scan) == {3: SkipReason.INCONSISTENT, 4: SkipReason.NO_GEOMETRY}


@pytest.mark.parametrize(
    ("series", "said"),
    [
        (scout(1), "LOCALIZER (a scout)"),
        ([dose_screen()], "not CT images (a summary or dose page)"),
        (ge_series(5, 12, 5.0, image_type=("DERIVED", "SECONDARY", "REFORMATTED"), orientation=SAGITTAL), "90 degrees"),
    ],
    ids=["scout", "dose screen", "sagittal reformat"],
)
def test_a_sole_series_that_is_no_axial_ct_volume_is_refused_not_segmented(
    tmp_path: Path, series: list[Dataset], said: str
) -> None:
    # What a PACS routing a whole study may send one series at a time: a segmentation of these
    # would look like a result and be garbage.
    with pytest.raises(NoSuitableSeriesError, match="send the axial head CT series") as refused:
        read_scan(write_study(tmp_path / "one", {"S": series}))
    assert said in str(refused.value)
    assert_no_patient_text(str(refused.value))


def test_a_sole_series_keeps_the_senders_choice_of_kernel_and_thickness(tmp_path: Path) -> None:
    # A bone-kernel, thin, short series sent alone was chosen by a person: segmented as sent.
    scan = read_scan(write_study(tmp_path / "one", {"S": ge_series(4, 6, 1.25, kernel="BONE")}))
    assert scan.num_slices == 6 and scan.series is not None and scan.series.chosen.series_number == 4
