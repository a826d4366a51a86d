"""Dataset loaders (CT-ICH JPG and NIfTI layouts, MBH-Seg) and patient-wise splits."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from training.datasets import (
    CT_ICH_DEMO_PATIENT,
    CT_ICH_SPLIT_FILE,
    CT_ICH_SPLIT_FILE_0_2,
    MASKED_PATIENTS_HELD_OUT,
    MBH_COLOURS,
    CtIchSlice,
    SplitError,
    decode_colour_mask,
    list_ct_ich_slices,
    list_mbhseg_slices,
    list_physionet_nifti_cases,
    load_ct_ich_image,
    load_ct_ich_mask,
    load_mbhseg,
    load_mbhseg_slice,
    load_physionet_nifti_case,
    mbh_case_id,
    pinned_ct_ich_split,
    split_by_patient,
    split_ct_ich,
)
from training.synthetic import SUBTYPES

# CI always has ../shared beside the repository (see .ci/run): the real data is not optional here.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT_ICH = SHARED_DATA / "ct-ich"
MBH = SHARED_DATA / "mbhseg25-mini"

CSV_HEADER = (
    "PatientNumber,SliceNumber,Intraventricular,Intraparenchymal,Subarachnoid,Epidural,Subdural,"
    "No_Hemorrhage,Fracture_Yes_No"
)


# --------------------------------------------------------------------------------------------
# CT-ICH, JPG layout


def _jpg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture()
def fake_ct_ich(tmp_path: Path) -> Path:
    """Two patients in the Kaggle layout, with the real release's irregularities."""
    brain = np.full((40, 50), 90, np.uint8)
    for patient, numbers in (("049", (1, 2, 10)), ("050", (1,))):
        for n in numbers:
            _jpg(tmp_path / "Patients_CT" / patient / "brain" / f"{n}.jpg", brain)
            _jpg(tmp_path / "Patients_CT" / patient / "bone" / f"{n}.jpg", brain)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 15:35] = 255
    _jpg(tmp_path / "Patients_CT" / "049" / "brain" / "2_HGE_Seg.jpg", mask)  # beside its slice
    rows = [
        "49,1,0,0,0,0,0,1,0",  # negative
        "49,2,0,0,0,0,1,0,1",  # subdural + fracture, has a mask file
        "49,3,0,0,0,0,0,1,0",  # no image on disk (the release lacks a few)
        "50,1,1,1,0,0,0,0,0",  # intraventricular + intraparenchymal, no mask file
    ]  # and 049/10.jpg has no row
    (tmp_path / "hemorrhage_diagnosis.csv").write_text("\n".join([CSV_HEADER, *rows]) + "\n")
    return tmp_path


def test_ct_ich_lister_on_a_fake_layout(fake_ct_ich: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        slices = list_ct_ich_slices(fake_ct_ich)
    assert [(s.patient, s.slice_number) for s in slices] == [("049", 1), ("049", 2), ("050", 1)]
    assert "049/3" in caplog.text and "049/10" in caplog.text  # both irregularities are reported

    negative, subdural, mixed = slices
    assert negative.image_path == fake_ct_ich / "Patients_CT" / "049" / "brain" / "1.jpg"
    assert negative.bone_path == fake_ct_ich / "Patients_CT" / "049" / "bone" / "1.jpg"
    assert not negative.any_hemorrhage and not any(negative.subtypes.values()) and not negative.fracture
    assert subdural.any_hemorrhage and subdural.fracture
    assert [k for k, v in subdural.subtypes.items() if v] == ["subdural"]
    assert subdural.mask_path == fake_ct_ich / "Patients_CT" / "049" / "brain" / "2_HGE_Seg.jpg"
    assert {k for k, v in mixed.subtypes.items() if v} == {"intraventricular", "intraparenchymal"}
    assert tuple(mixed.subtypes) == SUBTYPES
    assert negative.mask_path is None and mixed.mask_path is None

    image = load_ct_ich_image(negative)
    assert image.shape == (40, 50) and image.dtype == np.uint8
    # JPEG masks are thresholded at 128: the drawn rectangle comes back (JPEG ringing aside).
    mask = load_ct_ich_mask(subdural)
    assert mask is not None and mask.dtype == bool and mask.shape == (40, 50)
    expected = np.zeros((40, 50), bool)
    expected[10:20, 15:35] = True
    assert (mask & expected).sum() / (mask | expected).sum() > 0.95
    # A negative slice has a known, empty mask; a positive one without a file is unlabelled.
    empty = load_ct_ich_mask(negative)
    assert empty is not None and empty.shape == (40, 50) and not empty.any()
    assert load_ct_ich_mask(mixed) is None
    assert negative.has_pixel_labels and subdural.has_pixel_labels and not mixed.has_pixel_labels


def test_ct_ich_lister_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Patients_CT"):
        list_ct_ich_slices(tmp_path)
    (tmp_path / "Patients_CT").mkdir()
    with pytest.raises(FileNotFoundError, match=r"hemorrhage_diagnosis\.csv"):
        list_ct_ich_slices(tmp_path)
    (tmp_path / "hemorrhage_diagnosis.csv").write_text("PatientNumber,SliceNumber\n49,1\n")
    with pytest.raises(ValueError, match="missing column"):
        list_ct_ich_slices(tmp_path)


def test_ct_ich_lister_on_the_real_data() -> None:
    slices = list_ct_ich_slices(CT_ICH)
    with (CT_ICH / "hemorrhage_diagnosis.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    on_disk = [
        r
        for r in rows
        if (CT_ICH / "Patients_CT" / f"{int(r['PatientNumber']):03d}" / "brain" / f"{r['SliceNumber']}.jpg").exists()
    ]
    assert len(rows) - len(on_disk) == 28  # the release's known gaps
    assert len(slices) == len(on_disk) == 2327
    assert len({s.patient for s in slices}) == 77
    assert all(len(s.patient) == 3 for s in slices)
    # Labels agree with the CSV, overall and per subtype.
    assert sum(s.any_hemorrhage for s in slices) == sum(r["No_Hemorrhage"] == "0" for r in on_disk)
    for name, column in [
        ("epidural", "Epidural"),
        ("subdural", "Subdural"),
        ("subarachnoid", "Subarachnoid"),
        ("intraparenchymal", "Intraparenchymal"),
        ("intraventricular", "Intraventricular"),
    ]:
        assert sum(s.subtypes[name] for s in slices) == sum(r[column] == "1" for r in on_disk), name
    assert sum(s.fracture for s in slices) == sum(r["Fracture_Yes_No"] == "1" for r in on_disk)
    # The demo patient: 32 slices, 14-32 positive (subdural, then intraparenchymal).
    demo = [s for s in slices if s.patient == CT_ICH_DEMO_PATIENT]
    assert [s.slice_number for s in demo] == list(range(1, 33))
    assert [s.slice_number for s in demo if s.any_hemorrhage] == list(range(14, 33))
    assert demo[19].subtypes["subdural"] and demo[19].image_path.name == "20.jpg"
    # The 22 radiologist masks of this copy (13 patients), each on a slice labelled hemorrhage.
    masked = [s for s in slices if s.mask_path is not None]
    assert len(masked) == 22 and len({s.patient for s in masked}) == 13
    assert all(s.any_hemorrhage for s in masked)
    assert load_ct_ich_mask(masked[0]).any()
    image = load_ct_ich_image(demo[19])
    assert image.shape == (650, 650) and image.dtype == np.uint8


# --------------------------------------------------------------------------------------------
# CT-ICH, NIfTI layout


def _write_case(root: Path, case_id: str, hu: np.ndarray, mask: np.ndarray, affine: np.ndarray, gz: bool) -> None:
    suffix = ".nii.gz" if gz else ".nii"
    (root / "ct_scans").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), root / "ct_scans" / f"{case_id}{suffix}")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), root / "masks" / f"{case_id}{suffix}")


def test_physionet_nifti_case_keeps_image_and_mask_aligned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    hu = np.full((8, 6, 4), 35, np.int16)  # (x, y, z) as stored
    mask = np.zeros((8, 6, 4), np.uint8)
    hu[1:3, 4, 2] = 80  # a two-voxel bleed, off-centre so any flip would show
    mask[1:3, 4, 2] = 1
    hu[7, 0, 0] = 1000  # bone marker, no mask
    flipped = np.diag([-0.5, 0.6, 5.0, 1.0])  # left-right flipped storage: the reader reorients
    _write_case(tmp_path, "49", hu, mask, flipped, gz=False)
    _write_case(tmp_path, "50", hu, mask * 2, np.diag([0.5, 0.6, 5.0, 1.0]), gz=True)
    (tmp_path / "ct_scans" / "51.nii").write_bytes((tmp_path / "ct_scans" / "49.nii").read_bytes())  # no mask

    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        assert list_physionet_nifti_cases(tmp_path) == ["49", "50"]
    assert "51" in caplog.text

    for case_id in ("49", "50"):
        case_hu, case_mask, spacing = load_physionet_nifti_case(tmp_path, case_id)
        assert case_hu.shape == case_mask.shape == (4, 6, 8)
        assert case_hu.dtype == np.float32 and case_mask.dtype == bool
        assert case_mask.sum() == 2 and np.all(case_hu[case_mask] == 80)  # same voxels in both
        assert spacing == pytest.approx((5.0, 0.6, 0.5))
    # Both storages show the same anatomy once oriented.
    a = load_physionet_nifti_case(tmp_path, "49")
    b = load_physionet_nifti_case(tmp_path, "50")
    assert not np.array_equal(a.hu, b.hu)  # stored mirrored ...
    assert np.array_equal(a.hu, b.hu[:, :, ::-1]) and np.array_equal(a.mask, b.mask[:, :, ::-1])  # ... shown mirrored


def test_physionet_nifti_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list_physionet_nifti_cases(tmp_path)
    hu = np.zeros((8, 6, 4), np.int16)
    _write_case(tmp_path, "1", hu, np.zeros((8, 6, 4), np.uint8), np.eye(4), gz=False)
    nib.save(nib.Nifti1Image(np.zeros((8, 6, 3), np.uint8), np.eye(4)), tmp_path / "masks" / "1.nii")
    with pytest.raises(ValueError, match="mask shape"):
        load_physionet_nifti_case(tmp_path, "1")
    with pytest.raises(FileNotFoundError):
        load_physionet_nifti_case(tmp_path, "2")


# --------------------------------------------------------------------------------------------
# MBH-Seg mini sample


def test_mbhseg_real_sample() -> None:
    ids = list_mbhseg_slices(MBH)
    assert len(ids) == 36 and ids[0] == "158019"
    slices = load_mbhseg(MBH)
    assert [s.slice_id for s in slices] == ids
    for item in slices:
        assert item.hu.shape == (512, 512) and item.hu.dtype == np.float32
        assert item.hu.min() >= 0 and item.hu.max() <= 255
        assert tuple(item.subtype_masks) == SUBTYPES
        assert item.mask.any()  # only positive slices are in the sample
        union = np.zeros_like(item.mask)
        for m in item.subtype_masks.values():
            assert not (union & m).any()  # one colour per pixel: disjoint classes
            union |= m
        assert np.array_equal(union, item.mask)
    # Labels sit on blood: mostly dense (acute), though some bleeds here are older and hypodense.
    assert np.median(np.concatenate([s.hu[s.mask] for s in slices])) > 45
    assert sum(np.median(s.hu[s.mask]) > 40 for s in slices) >= 24
    by_id = {s.slice_id: s for s in slices}
    # Counts read off the PNG colours: (0,255,0) subdural, (255,255,0) ventricle, (0,255,255) subarachnoid.
    counts = {k: int(v.sum()) for k, v in by_id["159015"].subtype_masks.items()}
    assert counts == {
        "epidural": 0,
        "subdural": 375,
        "intraparenchymal": 0,
        "intraventricular": 253,
        "subarachnoid": 2164,
    }
    assert by_id["173006"].subtypes == ("epidural",)
    assert by_id["161021"].subtypes == ("intraparenchymal",)
    assert {s for item in slices for s in item.subtypes} == set(SUBTYPES)
    # Grouping key: the first three digits (several slices per scan).
    assert mbh_case_id("158019") == "158" and mbh_case_id("scan_7") == "scan_7"
    cases = {s.case_id for s in slices}
    assert len(cases) == 25 and sum(s.case_id == "205" for s in slices) == 3


def test_mbhseg_outside_air_restoration() -> None:
    plain = load_mbhseg_slice(MBH, "158019")
    restored = load_mbhseg_slice(MBH, "158019", outside_air_hu=-1000.0)
    assert plain.hu[0, 0] == 0 and restored.hu[0, 0] == -1000
    changed = plain.hu != restored.hu
    assert 0.3 < changed.mean() < 0.9  # the air around the head, not the head
    assert np.all(plain.hu[changed] == 0)
    centre = (slice(236, 276), slice(236, 276))
    assert np.array_equal(plain.hu[centre], restored.hu[centre])


def test_colour_masks_are_decoded_robustly(caplog: pytest.LogCaptureFixture) -> None:
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)  # epidural
    rgb[1, 1] = (240, 10, 5)  # epidural, slightly off (re-encoded)
    rgb[2, 2] = (0, 0, 250)  # intraparenchymal
    rgb[3, 3] = (250, 250, 10)  # intraventricular
    rgb[0, 5] = (128, 128, 128)  # grey: nothing near it
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        masks = decode_colour_mask(rgb, MBH_COLOURS, tolerance=60)
    assert np.argwhere(masks["epidural"]).tolist() == [[0, 0], [1, 1]]
    assert np.argwhere(masks["intraparenchymal"]).tolist() == [[2, 2]]
    assert np.argwhere(masks["intraventricular"]).tolist() == [[3, 3]]
    assert not masks["subdural"].any() and not masks["subarachnoid"].any()
    assert "1 pixels match no label colour" in caplog.text


# --------------------------------------------------------------------------------------------
# Patient-wise splits


def test_split_by_patient_is_a_deterministic_partition() -> None:
    ids = [f"{i:03d}" for i in range(40)]
    positives = set(ids[::3])
    split = split_by_patient(ids * 3, (0.6, 0.2, 0.2), seed=1, positives=positives)  # repeats are one patient
    assert set(split) == {"train", "val", "test"}
    assert set.union(*split.values()) == set(ids)
    assert sum(len(v) for v in split.values()) == len(ids)  # disjoint
    assert [len(split[k]) for k in ("train", "val", "test")] == [24, 8, 8]
    assert all(split[k] & positives for k in split)  # stratified: positives everywhere
    assert split == split_by_patient(list(reversed(ids)), (0.6, 0.2, 0.2), seed=1, positives=positives)
    assert split != split_by_patient(ids, (0.6, 0.2, 0.2), seed=2, positives=positives)


def test_split_forces_patients_into_test(caplog: pytest.LogCaptureFixture) -> None:
    ids = [f"{i:03d}" for i in range(45, 60)]
    for seed in range(5):
        split = split_by_patient(ids, seed=seed, force_test=("051", "052"), positives={"051", "053", "054", "055"})
        assert {"051", "052"} <= split["test"]
        assert sum(len(v) for v in split.values()) == len(ids) and set.union(*split.values()) == set(ids)
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        split = split_by_patient(ids, force_test=("999",))
    assert "999" in caplog.text and "999" not in set.union(*split.values())
    # More forced patients than the test share: they still all go to test.
    split = split_by_patient(ids, (0.8, 0.1, 0.1), force_test=ids[:6])
    assert set(ids[:6]) <= split["test"] and set.union(*split.values()) == set(ids)


def test_split_edge_cases() -> None:
    assert split_by_patient([]) == {"train": set(), "val": set(), "test": set()}
    assert split_by_patient(["a"], (1.0, 0.0, 0.0)) == {"train": {"a"}, "val": set(), "test": set()}
    two = split_by_patient(["a", "b"])
    assert sum(len(v) for v in two.values()) == 2
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(["a"], (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="fractions"):
        split_by_patient(["a"], (1.2, -0.1, -0.1))


def test_ct_ich_split_on_the_real_data() -> None:
    slices: list[CtIchSlice] = list_ct_ich_slices(CT_ICH)
    split = split_ct_ich(slices, seed=0)
    patients = {s.patient for s in slices}
    positives = {s.patient for s in slices if s.any_hemorrhage}
    assert CT_ICH_DEMO_PATIENT in split["test"]
    assert set.union(*split.values()) == patients and sum(len(v) for v in split.values()) == len(patients)
    assert all(split[k] & positives for k in split)
    assert split == split_ct_ich(reversed(slices), seed=0)
    # The few patients with radiologist masks are not all left in train: Dice on real CT-ICH masks
    # can be chosen on and reported.
    masked = {s.patient for s in slices if s.mask_path is not None}
    assert len(masked) >= 6
    assert len(split["val"] & masked) >= MASKED_PATIENTS_HELD_OUT and len(split["test"] & masked) >= 2
    assert split["train"] & masked


def test_the_pinned_split_holds_every_patient_once_with_masks_held_out() -> None:
    slices = list_ct_ich_slices(CT_ICH)
    split = pinned_ct_ich_split(slices)
    patients = {s.patient for s in slices}
    assert set.union(*split.values()) == patients and sum(len(v) for v in split.values()) == len(patients)
    assert CT_ICH_DEMO_PATIENT in split["test"]
    masked = {s.patient for s in slices if s.mask_path is not None}
    assert len(split["val"] & masked) >= 3 and len(split["test"] & masked) >= 3 and split["train"] & masked
    positives = {s.patient for s in slices if s.any_hemorrhage}
    assert all(split[k] & positives for k in split)


def test_0_2_0_s_held_out_patients_stay_held_out_from_0_3_on() -> None:
    # The 0.2.0 card's validation and test patients never train a later model: their figures stay honest.
    slices = list_ct_ich_slices(CT_ICH)
    old, new = pinned_ct_ich_split(slices, CT_ICH_SPLIT_FILE_0_2), pinned_ct_ich_split(slices)
    assert old["val"] <= new["val"] and old["test"] <= new["test"]
    assert new["val"] - old["val"] == {"071"} and new["test"] - old["test"] == {"087"}


def test_a_pinned_split_refuses_a_patient_it_does_not_name_or_names_twice(tmp_path: Path) -> None:
    slices = list_ct_ich_slices(CT_ICH)
    document = json.loads(CT_ICH_SPLIT_FILE.read_text())
    document["train"].remove("049")
    (tmp_path / "missing.json").write_text(json.dumps(document))
    with pytest.raises(SplitError, match="049 in no split"):
        pinned_ct_ich_split(slices, tmp_path / "missing.json")
    document["val"].extend(["049", "050"])
    (tmp_path / "twice.json").write_text(json.dumps(document))
    with pytest.raises(SplitError, match="050 in more than one split"):
        pinned_ct_ich_split(slices, tmp_path / "twice.json")
