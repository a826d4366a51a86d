"""NIfTI-1/2 volumes (``.nii``, ``.nii.gz``), e.g. the PhysioNet CT-ICH ``ct_scans/<id>.nii``.

Volumes are reoriented to RAS+ and each axial slice is shown the radiological way: anterior at
the top, the patient's right on the image's left; slices run inferior to superior.
"""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np

from ichseg.errors import CorruptScanError, InconsistentSeriesError, NoFramesError, ScanTooLargeError
from ichseg.limits import ScanLimits, check_scan_size
from ichseg.readers.detect import Content
from ichseg.readers.naming import index_ids
from ichseg.scan import Scan


def read_nifti(data: bytes, content: Content, name: str, limits: ScanLimits) -> Scan:
    """Read a NIfTI volume as HU slices (8-bit volumes are taken as already windowed)."""
    if content == Content.NIFTI_GZ:
        data = _gunzip_capped(data, name, limits)
    try:
        image = (
            nib.Nifti2Image.from_bytes(data)
            if data[4:8] == b"n+2\x00" or data[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
            else nib.Nifti1Image.from_bytes(data)
        )
    except Exception as exc:  # nibabel raises a wide variety on damaged headers
        raise CorruptScanError(f"{name}: the NIfTI file is truncated or damaged ({exc})") from exc
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3:
        raise InconsistentSeriesError(f"{name}: NIfTI of shape {image.shape}; ichseg reads one 3-D CT volume")
    if 0 in shape:
        raise NoFramesError(f"{name}: the NIfTI volume is empty (shape {image.shape})")
    # Axial slices are the third RAS axis: check sizes before loading any voxel.
    check_scan_size(limits, name, shape[2], shape[1], shape[0])
    canonical = nib.as_closest_canonical(nib.funcs.squeeze_image(image) if len(image.shape) == 4 else image)
    slope, inter = canonical.header.get_slope_inter()
    windowed = canonical.get_data_dtype() == np.uint8 and slope in (None, 1.0) and inter in (None, 0.0)
    try:
        volume = np.asarray(canonical.dataobj, dtype=np.uint8) if windowed else canonical.get_fdata(dtype=np.float32)
    except Exception as exc:  # truncated voxel data surfaces as various errors
        raise CorruptScanError(f"{name}: the NIfTI voxel data is truncated or damaged ({exc})") from exc
    if volume.ndim == 2:
        volume = volume[:, :, None]
    # (x, y, z) RAS -> (z, rows=anterior..posterior, cols=right..left)
    slices = np.ascontiguousarray(np.transpose(volume, (2, 1, 0))[:, ::-1, ::-1])
    zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
    while len(zooms) < 3:
        zooms.append(0.0)
    return Scan(
        slices=slices,
        slice_ids=index_ids(slices.shape[0]),
        format="nifti",
        hu=not windowed,
        pixel_spacing_mm=(zooms[1], zooms[0]) if zooms[0] > 0 and zooms[1] > 0 else None,
        slice_thickness_mm=zooms[2] if zooms[2] > 0 and slices.shape[0] > 1 else None,
        source=name,
    )


def _gunzip_capped(data: bytes, name: str, limits: ScanLimits) -> bytes:
    """Decompress a .nii.gz, refusing to expand beyond the configured limits (gzip bombs)."""
    cap = min(limits.max_uncompressed_bytes, int(len(data) * limits.max_compression_ratio) + (1 << 20))
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(cap + 1)
    except (OSError, EOFError) as exc:
        raise CorruptScanError(f"{name}: the gzip-compressed NIfTI is truncated or damaged ({exc})") from exc
    if len(out) > cap:
        raise ScanTooLargeError(
            f"{name}: the .nii.gz expands beyond {cap / 2**20:.0f} MiB (ratio or size limit); refusing it"
        )
    return out
