"""Builders for test inputs with known geometry: DICOM series, NIfTI volumes, videos, zips.

Each builder writes real files with the real libraries (pydicom, nibabel, PyAV), so readers are
tested against the formats as the world produces them.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

import av
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

HEAD_HU = 40.0


def phantom_hu(index: int, rows: int, cols: int) -> np.ndarray:
    """A head-like disc in air whose brightest value encodes the slice index (HEAD_HU + index)."""
    yy, xx = np.mgrid[:rows, :cols]
    disc = ((yy - rows / 2) / (rows * 0.4)) ** 2 + ((xx - cols / 2) / (cols * 0.35)) ** 2 <= 1
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)
    hu[disc] = HEAD_HU + index
    # An asymmetric marker (top-left of the disc) to check orientation handling.
    hu[rows // 4 : rows // 4 + 3, cols // 3 : cols // 3 + 3] = 1000.0
    return hu


def dicom_series(
    count: int = 6,
    rows: int = 32,
    cols: int = 40,
    pixel_spacing: tuple[float, float] = (0.5, 0.45),
    step_mm: float = 2.5,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    offsets_mm: Sequence[float] | None = None,
    thickness_mm: Sequence[float] | None = None,
    along_table: bool = False,
    attributes: dict[str, object] | None = None,
) -> list[Dataset]:
    """A CT series whose slice k (in true spatial order) holds :func:`phantom_hu` (k).

    InstanceNumber runs opposite to space, so readers that trust it instead of the position
    sort are caught. ``offsets_mm`` places slice k that far along the slice normal (instead of
    k x ``step_mm``; count follows it) and ``thickness_mm`` gives each its SliceThickness. With
    ``along_table`` positions advance along the patient's z axis (a tilted gantry's table moves
    that way), by offset / cos(tilt) so that their projection on the normal is the offset.
    ``attributes`` are set on every instance (Manufacturer, ConvolutionKernel, ImageType...).
    """
    if offsets_mm is not None:
        count = len(offsets_mm)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    cosines = np.array(orientation, dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    datasets = []
    for k in range(count):
        ds = new_instance(CTImageStorage, modality)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID = "ICHSEG-TEST"
        ds.SeriesDescription = "Head 2.5mm"
        ds.InstanceNumber = count - k
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in cosines]
        offset = float(offsets_mm[k]) if offsets_mm is not None else k * step_mm
        direction = np.array([0.0, 0.0, 1.0 / normal[2]]) if along_table else normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (np.array([-100.0, -120.0, 30.0]) + offset * direction)]
        ds.PixelSpacing = [str(pixel_spacing[0]), str(pixel_spacing[1])]
        ds.SliceThickness = str(thickness_mm[k] if thickness_mm is not None else step_mm)
        for keyword, value in (attributes or {}).items():
            setattr(ds, keyword, value)
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        stored = np.rint(phantom_hu(k, rows, cols) + 1024).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        datasets.append(ds)
    return datasets


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom_series(folder: Path, datasets: list[Dataset], shuffle_seed: int = 3) -> list[Path]:
    """Write instances under names that sort in neither spatial nor instance order."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(shuffle_seed).permutation(len(datasets))
    paths = []
    for name_index, k in enumerate(order):
        path = folder / f"IM{name_index:04d}"
        path.write_bytes(dicom_bytes(datasets[k]))
        paths.append(path)
    return paths


def zip_files(destination: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(destination, "w", compression=compression) as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return destination


def nifti_volume(
    destination: Path,
    shape: tuple[int, int, int] = (40, 32, 7),
    zooms: tuple[float, float, float] = (0.45, 0.5, 5.0),
    flip_x: bool = False,
) -> Path:
    """A HU volume stored (x, y, z) with slice k = phantom(k) shown radiologically.

    With ``flip_x`` the affine runs right-to-left (LAS storage, as many scanners write) and the
    data is flipped to match, so a correct reader returns the same slices either way.
    """
    nx, ny, nz = shape
    volume = np.zeros(shape, dtype=np.int16)
    for k in range(nz):
        display = phantom_hu(k, ny, nx)  # rows = anterior..posterior, cols = right..left
        ras = display[::-1, ::-1].T  # back to (x: left->right... R+, y: posterior->anterior)
        volume[:, :, k] = np.rint(ras).astype(np.int16)
    affine = np.diag([zooms[0], zooms[1], zooms[2], 1.0])
    if flip_x:
        volume = volume[::-1]
        affine[0, 0] = -zooms[0]
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(destination))
    return destination


def encode_video(
    destination: Path,
    frames: np.ndarray,
    container_format: str,
    codec: str,
    pix_fmt: str,
    fps: int = 5,
) -> Path:
    """Encode grey frames with any PyAV codec into any container (mp4, mov, avi)."""
    with av.open(str(destination), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="gray")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return destination


def grey_frames(count: int = 5, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames whose mean brightness encodes their index (frame k is brighter than k-1)."""
    yy, xx = np.mgrid[:height, :width]
    base = (xx + yy) % 32
    step = min(30, 200 // max(count, 1))
    return np.stack([np.clip(base + step * k + 20, 0, 255).astype(np.uint8) for k in range(count)])


def jpeg_lossless_dicom(ds: Dataset, workdir: Path) -> bytes:
    """Re-encode an instance as JPEG Lossless (process 14), as many PACS exports are, with GDCM."""
    import gdcm

    raw, compressed = workdir / "raw.dcm", workdir / "jpeg-lossless.dcm"
    raw.write_bytes(dicom_bytes(ds))
    reader = gdcm.ImageReader()
    reader.SetFileName(str(raw))
    if not reader.Read():
        raise RuntimeError("GDCM could not read the fixture")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("GDCM could not compress the fixture")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(compressed))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError("GDCM could not write the fixture")
    return compressed.read_bytes()


def png_bytes(array: np.ndarray) -> bytes:
    """A slice (grey or RGB uint8, or 16-bit) encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 95) -> bytes:
    """A grey uint8 slice encoded as JPEG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def enhanced_ct(
    count: int = 3,
    rows: int = 24,
    cols: int = 20,
    step_mm: float = 1.25,
    offsets_mm: Sequence[float] | None = None,
    thickness_mm: Sequence[float] | None = None,
) -> Dataset:
    """One Enhanced CT instance holding every slice; frames stored superior-to-inferior, so a
    reader must sort them by the per-frame positions. Frame k in space holds phantom_hu(k).

    ``offsets_mm`` places frame k at that z (count follows it); ``thickness_mm`` gives each frame
    its own SliceThickness in a per-frame Pixel Measures group."""
    if offsets_mm is not None:
        count = len(offsets_mm)
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import EnhancedCTImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = EnhancedCTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.NumberOfFrames = count
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    measures, orientation, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = ["0.6", "0.7"], str(step_mm)
    orientation.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = "-1024", "1", "HU"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames, groups = [], []
    for k in reversed(range(count)):
        position = Dataset()
        z = float(offsets_mm[k]) if offsets_mm is not None else k * step_mm
        position.ImagePositionPatient = ["0", "0", f"{z:.3f}"]
        group = Dataset()
        group.PlanePositionSequence = DicomSequence([position])
        if thickness_mm is not None:
            own = Dataset()
            own.PixelSpacing, own.SliceThickness = ["0.6", "0.7"], str(thickness_mm[k])
            group.PixelMeasuresSequence = DicomSequence([own])
        groups.append(group)
        frames.append(np.rint(phantom_hu(k, rows, cols) + 1024).astype(np.uint16))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)
    ds.PixelData = np.stack(frames).tobytes()
    return ds


def new_instance(sop_class: str, modality: str = "") -> Dataset:
    """An empty DICOM instance of ``sop_class``: its file meta (explicit VR little endian), a fresh
    SOP Instance UID, and ``modality`` when given. Every builder here starts from one."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    if modality:
        ds.Modality = modality
    return ds


def non_image_object(sop_class: str, modality: str = "") -> Dataset:
    """A DICOM object without pixels, as exports put beside the images (a vendor's directory
    file, a dose report)."""
    return new_instance(sop_class, modality)
