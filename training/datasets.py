"""Loaders for the real head-CT datasets the model trains and is evaluated on, and patient splits.

Plain numpy and dataclasses (no TensorFlow) so that data checks run anywhere:

- **CT-ICH, JPG release** (Hssayeni et al. 2020, PhysioNet; the Kaggle layout):
  ``Patients_CT/<patient>/brain/<n>.jpg`` (brain window), ``.../bone/<n>.jpg``, pixel masks
  ``<n>_HGE_Seg.jpg`` beside the brain slices (only in the full release), and
  ``hemorrhage_diagnosis.csv`` with slice-level labels.
- **CT-ICH, NIfTI release**: ``ct_scans/<id>.nii[.gz]`` (HU) and ``masks/<id>.nii[.gz]``; read with
  :func:`ichseg.readers.read_scan` so image and mask get exactly the serving-side orientation.
- **MBH-Seg mini sample**: ``images/<id>.png`` (pixel value = HU clipped to [0, 255]) and
  ``masks/<id>.png`` (one RGB colour per subtype).

Patients never cross splits (:func:`split_by_patient`): adjacent slices of one scan are nearly
identical, so a slice-level split would leak the test set into training.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ichseg.readers import read_scan
from ichseg.readers.naming import natural_key
from training.synthetic import SUBTYPES

log = logging.getLogger(__name__)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""Where ``../shared/data`` sits beside the checkout (read only; never copied into the repo)."""

SPLITS = ("train", "val", "test")

CT_ICH_DEMO_PATIENT = "051"
"""The committed demo sample (``samples/ct-ich-051``): always in the test split."""

CT_ICH_CSV = "hemorrhage_diagnosis.csv"
CT_ICH_MASK_SUFFIX = "_HGE_Seg"
_CT_ICH_COLUMNS: dict[str, str] = {
    "epidural": "Epidural",
    "subdural": "Subdural",
    "intraparenchymal": "Intraparenchymal",
    "intraventricular": "Intraventricular",
    "subarachnoid": "Subarachnoid",
}
_SLICE_JPG = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)
_MASK_THRESHOLD = 128  # the masks are JPEGs: compression noise around 0 and 255

MBH_COLOURS: dict[str, tuple[int, int, int]] = {
    "epidural": (255, 0, 0),
    "intraparenchymal": (0, 0, 255),
    "intraventricular": (255, 255, 0),
    "subarachnoid": (0, 255, 255),
    "subdural": (0, 255, 0),
}
"""MBH-Seg mask colours (RGB); black is background."""


# --------------------------------------------------------------------------------------------
# CT-ICH, JPG release


@dataclass(frozen=True)
class CtIchSlice:
    """One labelled slice of the CT-ICH JPG release."""

    patient: str
    """Patient folder name, zero-padded as on disk (e.g. ``"049"``)."""
    slice_number: int
    image_path: Path
    """Brain-window JPG (the model's input)."""
    mask_path: Path | None
    """``<n>_HGE_Seg.jpg`` when present (full release, positive slices)."""
    bone_path: Path | None
    any_hemorrhage: bool
    subtypes: dict[str, bool] = field(hash=False)
    """One flag per name in :data:`training.synthetic.SUBTYPES`."""
    fracture: bool

    @property
    def has_pixel_labels(self) -> bool:
        """True when the pixel mask is known: a mask file, or a negative slice (empty mask)."""
        return self.mask_path is not None or not self.any_hemorrhage


def ct_ich_patient_id(number: int | str) -> str:
    """The CSV's patient number as the dataset's folder name: ``49`` -> ``"049"``."""
    return f"{int(number):03d}"


def list_ct_ich_slices(root: str | Path, csv_path: str | Path | None = None) -> list[CtIchSlice]:
    """Every brain slice that has both an image and a CSV row, ordered by patient and slice.

    ``root`` holds ``Patients_CT/`` and (unless ``csv_path`` is given) ``hemorrhage_diagnosis.csv``.
    CSV rows without an image (a few in the public release) and images without a row are skipped
    with a warning.
    """
    root = Path(root)
    patients_dir = root / "Patients_CT"
    if not patients_dir.is_dir():
        raise FileNotFoundError(f"{patients_dir}: not found (expected the CT-ICH Patients_CT folder)")
    labels = _read_ct_ich_csv(Path(csv_path) if csv_path else root / CT_ICH_CSV)

    # Folder names are zero-padded, CSV numbers are not: match on the integer value.
    images: dict[tuple[int, int], tuple[str, Path]] = {}
    for patient_dir in sorted(patients_dir.iterdir(), key=lambda p: natural_key(p.name)):
        if not (patient_dir.is_dir() and patient_dir.name.isdigit()):
            continue
        brain_dir = patient_dir / "brain"
        if not brain_dir.is_dir():
            log.warning("CT-ICH patient %s has no brain/ folder; skipped", patient_dir.name)
            continue
        for path in brain_dir.iterdir():
            match = _SLICE_JPG.match(path.name)
            if match:
                images[(int(patient_dir.name), int(match.group(1)))] = (patient_dir.name, path)

    missing = sorted(set(labels) - set(images))
    if missing:
        log.warning("CT-ICH: %d CSV rows have no brain image (skipped): %s", len(missing), _pairs(missing))
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        log.warning("CT-ICH: %d brain images have no CSV row (skipped): %s", len(unlabelled), _pairs(unlabelled))

    slices = []
    for key in sorted(set(labels) & set(images)):
        patient, image_path = images[key]
        row = labels[key]
        mask_path = _sibling(image_path, f"{key[1]}{CT_ICH_MASK_SUFFIX}")
        bone_path = _sibling(image_path.parent.parent / "bone" / image_path.name, str(key[1]))
        subtypes = {name: row[column] for name, column in _CT_ICH_COLUMNS.items()}
        slices.append(
            CtIchSlice(
                patient=patient,
                slice_number=key[1],
                image_path=image_path,
                mask_path=mask_path,
                bone_path=bone_path,
                any_hemorrhage=not row["No_Hemorrhage"],
                subtypes={name: subtypes[name] for name in SUBTYPES},
                fracture=row["Fracture_Yes_No"],
            )
        )
    return slices


def load_ct_ich_image(item: CtIchSlice) -> np.ndarray:
    """The brain-window slice as ``(H, W) uint8``."""
    return _read_gray(item.image_path)


def load_ct_ich_mask(item: CtIchSlice) -> np.ndarray | None:
    """The hemorrhage mask as ``(H, W) bool``; empty for a negative slice without a mask file,
    ``None`` for a positive slice without one (its pixels are unlabelled)."""
    if item.mask_path is not None:
        return _read_gray(item.mask_path) >= _MASK_THRESHOLD
    if item.any_hemorrhage:
        return None
    height, width = _image_size(item.image_path)
    return np.zeros((height, width), dtype=bool)


def _read_ct_ich_csv(path: Path) -> dict[tuple[int, int], dict[str, bool]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected the CT-ICH {CT_ICH_CSV})")
    needed = ["PatientNumber", "SliceNumber", "No_Hemorrhage", "Fracture_Yes_No", *_CT_ICH_COLUMNS.values()]
    labels: dict[tuple[int, int], dict[str, bool]] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        absent = [name for name in needed if name not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{path}: missing column(s) {', '.join(absent)}")
        for line, row in enumerate(reader, start=2):
            try:
                key = (int(row["PatientNumber"]), int(row["SliceNumber"]))
                flags = {name: bool(int(row[name])) for name in needed[2:]}
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: unreadable row {row!r}") from exc
            if key in labels:
                log.warning("CT-ICH CSV %s:%d repeats patient %d slice %d; the last row wins", path, line, *key)
            labels[key] = flags
    return labels


def _sibling(path: Path, stem: str) -> Path | None:
    """``<dir>/<stem>.jpg`` (or .jpeg, any case) if it exists."""
    for suffix in (".jpg", ".jpeg", ".JPG", ".JPEG"):
        candidate = path.parent / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _pairs(keys: list[tuple[int, int]], limit: int = 20) -> str:
    shown = ", ".join(f"{ct_ich_patient_id(p)}/{s}" for p, s in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _read_gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise OSError(f"{path}: cannot read the image")
    return image


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image  # reads only the header

    with Image.open(path) as image:
        width, height = image.size
    return height, width


# --------------------------------------------------------------------------------------------
# CT-ICH, NIfTI release


class NiftiCase(NamedTuple):
    """One NIfTI case; unpacks as ``hu, mask, spacing``."""

    hu: np.ndarray
    """(N, H, W) float32 HU, slices inferior to superior, oriented as :func:`read_scan` shows them."""
    mask: np.ndarray
    """(N, H, W) bool, hemorrhage where the mask volume is non-zero."""
    spacing: tuple[float | None, float, float] | None
    """(slice, row, column) spacing in mm, matching the array axes; ``None`` if the header has no
    pixel spacing; the slice entry is ``None`` for a single-slice volume."""


_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def list_physionet_nifti_cases(root: str | Path) -> list[str]:
    """Case ids having both ``ct_scans/<id>.nii[.gz]`` and ``masks/<id>.nii[.gz]``, naturally sorted."""
    root = Path(root)
    scans = _nifti_ids(root / "ct_scans")
    if not scans:
        raise FileNotFoundError(f"{root / 'ct_scans'}: no NIfTI volumes found")
    masks = _nifti_ids(root / "masks")
    unmasked = sorted(set(scans) - set(masks), key=natural_key)
    if unmasked:
        log.warning("PhysioNet NIfTI: %d scans have no mask (skipped): %s", len(unmasked), ", ".join(unmasked[:20]))
    return sorted(set(scans) & set(masks), key=natural_key)


def load_physionet_nifti_case(root: str | Path, case_id: str) -> NiftiCase:
    """Read one case's HU volume and mask through the same reader, so their voxels line up."""
    root = Path(root)
    scan_path = _nifti_ids(root / "ct_scans").get(case_id)
    mask_path = _nifti_ids(root / "masks").get(case_id)
    if scan_path is None or mask_path is None:
        raise FileNotFoundError(f"{root}: case {case_id!r} needs ct_scans/{case_id}.nii and masks/{case_id}.nii")
    scan = read_scan(scan_path)
    mask_scan = read_scan(mask_path)
    if not scan.hu:
        raise ValueError(f"{scan_path}: expected Hounsfield units, found an 8-bit (windowed) volume")
    if mask_scan.slices.shape != scan.slices.shape:
        raise ValueError(
            f"case {case_id}: mask shape {mask_scan.slices.shape} differs from scan shape {scan.slices.shape}"
        )
    spacing = None
    if scan.pixel_spacing_mm is not None:
        spacing = (scan.slice_thickness_mm, *scan.pixel_spacing_mm)
    return NiftiCase(
        hu=np.asarray(scan.slices, dtype=np.float32),
        mask=np.asarray(mask_scan.slices) != 0,
        spacing=spacing,
    )


def _nifti_ids(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    if folder.is_dir():
        for path in folder.iterdir():
            for suffix in _NIFTI_SUFFIXES:
                if path.name.lower().endswith(suffix) and path.is_file():
                    found.setdefault(path.name[: -len(suffix)], path)
                    break
    return found


# --------------------------------------------------------------------------------------------
# MBH-Seg mini sample


@dataclass(frozen=True, eq=False)
class MbhSlice:
    """One MBH-Seg slice with its 5-class mask."""

    slice_id: str
    """File stem, e.g. ``"158019"``."""
    case_id: str
    """Grouping key for patient-wise splits: see :func:`mbh_case_id`."""
    hu: np.ndarray = field(repr=False)
    """(H, W) float32; the PNG value is the HU clipped to [0, 255]."""
    mask: np.ndarray = field(repr=False)
    """(H, W) bool, union of the subtype masks."""
    subtype_masks: dict[str, np.ndarray] = field(repr=False)
    """One (H, W) bool mask per name in :data:`training.synthetic.SUBTYPES` (all keys present)."""

    @property
    def subtypes(self) -> tuple[str, ...]:
        return tuple(name for name in SUBTYPES if self.subtype_masks[name].any())


def mbh_case_id(slice_id: str) -> str:
    """The scan a MBH-Seg slice belongs to: the first three digits of its six-digit name.

    The names read as ``<case:3><slice:3>``: stems sharing a prefix have nearby suffixes (006-037,
    a slice index within one ~40-slice scan), and their head outlines overlap far more than those
    of different prefixes (adjacent suffixes such as 203015/203016 are near-identical slices).
    So slices are grouped by prefix; this is a deduction from the file names, not a documented
    convention, which errs on the safe side: if a prefix held several patients, a group would
    only be larger than needed, never leak. Other names group as themselves.
    """
    return slice_id[:3] if re.fullmatch(r"\d{6}", slice_id) else slice_id


def list_mbhseg_slices(root: str | Path) -> list[str]:
    """Stems of ``images/*.png`` that have a mask, naturally sorted."""
    root = Path(root)
    images = {p.stem for p in (root / "images").glob("*.png")}
    if not images:
        raise FileNotFoundError(f"{root / 'images'}: no PNG slices found")
    masks = {p.stem for p in (root / "masks").glob("*.png")}
    if images - masks:
        log.warning("MBH-Seg: %d images have no mask (skipped): %s", len(images - masks), sorted(images - masks)[:20])
    return sorted(images & masks, key=natural_key)


def load_mbhseg_slice(
    root: str | Path, slice_id: str, tolerance: float = 60.0, outside_air_hu: float | None = None
) -> MbhSlice:
    """Read one slice: HU image and per-subtype masks (nearest mask colour within ``tolerance``).

    The PNG clips HU at 0, so air reads as 0 HU, like CSF. ``outside_air_hu`` (e.g. -1000) restores
    air outside the head (zero-valued pixels connected to the border) so that a brain window renders
    the background black, as in the training data; the default keeps the pixels as stored.
    """
    root = Path(root)
    image = cv2.imread(str(root / "images" / f"{slice_id}.png"), cv2.IMREAD_UNCHANGED)
    colour = cv2.imread(str(root / "masks" / f"{slice_id}.png"), cv2.IMREAD_COLOR)
    if image is None or colour is None:
        raise FileNotFoundError(f"{root}: cannot read images/{slice_id}.png and masks/{slice_id}.png")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.shape != colour.shape[:2]:
        raise ValueError(f"MBH-Seg {slice_id}: image {image.shape} and mask {colour.shape[:2]} differ in size")
    hu = image.astype(np.float32)
    if outside_air_hu is not None:
        hu[_outside_zero(image)] = outside_air_hu
    subtype_masks = decode_colour_mask(cv2.cvtColor(colour, cv2.COLOR_BGR2RGB), MBH_COLOURS, tolerance, slice_id)
    union = np.zeros(image.shape, dtype=bool)
    for mask in subtype_masks.values():
        union |= mask
    return MbhSlice(slice_id, mbh_case_id(slice_id), hu, union, subtype_masks)


def load_mbhseg(root: str | Path, tolerance: float = 60.0, outside_air_hu: float | None = None) -> list[MbhSlice]:
    """Every slice of an MBH-Seg style folder (options as in :func:`load_mbhseg_slice`)."""
    return [load_mbhseg_slice(root, slice_id, tolerance, outside_air_hu) for slice_id in list_mbhseg_slices(root)]


def decode_colour_mask(
    rgb: np.ndarray, colours: Mapping[str, tuple[int, int, int]], tolerance: float = 60.0, name: str = "mask"
) -> dict[str, np.ndarray]:
    """Split an RGB label image into one bool mask per class of :data:`SUBTYPES`.

    Each pixel takes the nearest of the class colours and black; pixels farther than ``tolerance``
    (Euclidean RGB distance) from all of them count as background, with a warning.
    """
    palette = np.array([(0, 0, 0), *colours.values()], dtype=np.int32)
    flat = rgb.reshape(-1, 3).astype(np.int32)
    # Fast path: PNG label colours are exact, so match packed RGB values first.
    packed = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    palette_packed = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    nearest = np.full(packed.shape, -1, dtype=np.int64)
    for i, key in enumerate(palette_packed):
        nearest[packed == key] = i
    inexact = np.flatnonzero(nearest < 0)
    if inexact.size:  # anti-aliased or re-encoded labels: nearest colour, within the tolerance
        distance = ((flat[inexact, None, :] - palette[None, :, :]) ** 2).sum(axis=-1)
        best = distance.argmin(axis=1)
        off = np.sqrt(distance[np.arange(inexact.size), best]) > tolerance
        if off.any():
            log.warning(
                "%s: %d pixels match no label colour within %.0f; taken as background", name, off.sum(), tolerance
            )
        nearest[inexact] = np.where(off, 0, best)
    labels = nearest.reshape(rgb.shape[:2])
    index = {name_: i + 1 for i, name_ in enumerate(colours)}
    return {sub: (labels == index[sub]) if sub in index else np.zeros(labels.shape, bool) for sub in SUBTYPES}


def _outside_zero(image: np.ndarray) -> np.ndarray:
    """Zero-valued pixels connected to the image border (the air around the head)."""
    zero = (image == 0).astype(np.uint8)
    count, labels = cv2.connectedComponents(zero, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[(border > 0) & (border < count)]
    outside = np.isin(labels, border)
    return outside & (zero > 0)


# --------------------------------------------------------------------------------------------
# Patient-wise splits


def split_by_patient(
    patient_ids: Iterable[str],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    force_test: Iterable[str] = (),
    positives: Collection[str] | None = None,
) -> dict[str, set[str]]:
    """Assign every patient to exactly one of ``train``, ``val``, ``test``; deterministic for a seed.

    ``patient_ids`` may repeat (e.g. one id per slice). Patients in ``positives`` (those with any
    hemorrhage) and the rest are split separately with the same fractions, so each split gets
    positive patients whenever there are enough of them. ``force_test`` patients go to test and
    count toward its share; ids in it that are not among ``patient_ids`` are ignored with a warning.
    """
    valid = len(fractions) == len(SPLITS) and all(f >= 0 for f in fractions)
    if not (valid and math.isclose(sum(fractions), 1.0, abs_tol=1e-6)):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = sorted(set(patient_ids), key=natural_key)
    forced = set(force_test)
    unknown = sorted(forced - set(ids), key=natural_key)
    if unknown:
        log.warning("split_by_patient: forced test patient(s) %s not in the data; ignored", ", ".join(unknown))
    positive_set = set(positives) if positives is not None else set()
    rng = np.random.default_rng(seed)
    splits: dict[str, set[str]] = {name: set() for name in SPLITS}
    for stratum in ([p for p in ids if p in positive_set], [p for p in ids if p not in positive_set]):
        if not stratum:
            continue
        targets = _allocate(len(stratum), fractions)
        pinned = [p for p in stratum if p in forced]
        free = [stratum[i] for i in rng.permutation(len(stratum)) if stratum[i] not in forced]
        splits["test"].update(pinned)
        # Forced patients use up the test share first; any excess comes out of train, then val.
        targets[2] = max(0, targets[2] - len(pinned))
        excess = sum(targets) - len(free)
        for i in (0, 1, 2):
            cut = min(excess, targets[i])
            targets[i] -= cut
            excess -= cut
        start = 0
        for name, count in zip(SPLITS, targets, strict=True):
            splits[name].update(free[start : start + count])
            start += count
    return splits


CT_ICH_SPLIT_FILE = Path(__file__).with_name("splits") / "ct-ich.json"
"""The CT-ICH split every model from 0.3 on trains, calibrates and is tested on (a committed file)."""
CT_ICH_SPLIT_FILE_0_2 = Path(__file__).with_name("splits") / "ct-ich-0.2.json"
"""The split of ichseg-unet 0.2.0: to evaluate that model on the patients it never saw."""


class SplitError(ValueError):
    """A pinned split that does not fit the data: a patient in none or several of its splits."""


def pinned_ct_ich_split(slices: Iterable[CtIchSlice], path: Path = CT_ICH_SPLIT_FILE) -> dict[str, set[str]]:
    """The CT-ICH split read from ``path``, checked against the data: every patient in exactly one split.

    The split is data, not a function of the data: :func:`split_ct_ich` moved masked patients
    between splits whenever masks were added, so new masks silently put 0.2.0's test patients in
    train. A patient the file does not name is an error (assign it by hand), never a guess.
    """
    document = json.loads(Path(path).read_text())
    splits = {name: set(document[name]) for name in SPLITS}
    seen = [p for name in SPLITS for p in splits[name]]
    doubled = sorted({p for p in seen if seen.count(p) > 1}, key=natural_key)
    if doubled:
        raise SplitError(f"{path}: patient(s) {', '.join(doubled)} in more than one split")
    unassigned = sorted({s.patient for s in slices} - set(seen), key=natural_key)
    if unassigned:
        raise SplitError(f"{path}: patient(s) {', '.join(unassigned)} in no split; assign each to one by hand")
    return splits


MASKED_PATIENTS_HELD_OUT = 2
"""Patients with radiologist masks that validation and test each get at least (see split_ct_ich)."""


def split_ct_ich(
    slices: Iterable[CtIchSlice], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, set[str]]:
    """:func:`split_by_patient` for CT-ICH: stratified on hemorrhage, demo patient 051 in test, and
    at least :data:`MASKED_PATIENTS_HELD_OUT` patients with pixel masks in validation and in test.
    How the 0.2 split was made; training and evaluation read the pinned split
    (:func:`pinned_ct_ich_split`), which this result changes under as masks are added.

    Only 10 patients have radiologist masks, and the hemorrhage-stratified split left all but the
    demo patient in train: there would be no real-mask Dice to choose on or to report. So after the
    split (unchanged for every other patient), masked patients move from train to validation, then
    to test, chosen with ``seed``, until each holds enough of them.
    """
    slices = list(slices)
    splits = split_by_patient(
        [s.patient for s in slices],
        fractions,
        seed,
        force_test=(CT_ICH_DEMO_PATIENT,),
        positives={s.patient for s in slices if s.any_hemorrhage},
    )
    masked = sorted({s.patient for s in slices if s.mask_path is not None}, key=natural_key)
    rng = np.random.default_rng(seed)
    movable = [p for p in masked if p in splits["train"]]
    movable = [movable[i] for i in rng.permutation(len(movable))]
    for name in ("val", "test"):
        while len(splits[name] & set(masked)) < MASKED_PATIENTS_HELD_OUT and len(movable) > 1:
            patient = movable.pop()
            splits["train"].discard(patient)
            splits[name].add(patient)
    return splits


def _allocate(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``n`` items by ``fractions`` (largest remainder), giving every non-zero share at
    least one item when there are enough items to go round."""
    raw = [n * f for f in fractions]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts
