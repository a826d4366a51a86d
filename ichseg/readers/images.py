"""JPEG/PNG slice images: 8-bit grey levels as exported by a viewer in some CT window."""

from __future__ import annotations

import io
import warnings
from pathlib import PurePosixPath

import numpy as np
from PIL import Image

from ichseg.errors import CorruptScanError, InconsistentSeriesError, NoFramesError, UnsupportedFormatError
from ichseg.limits import ScanLimits, check_scan_size
from ichseg.readers.detect import Content
from ichseg.scan import Scan


def decode_slice_image(data: bytes, name: str, limits: ScanLimits) -> np.ndarray:
    """Decode one JPEG/PNG slice to a ``(H, W)`` uint8 array (colour is reduced to luminance)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            check_scan_size(limits, name, 1, height, width)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CorruptScanError(f"{name}: image dimensions are implausibly large ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptScanError(f"{name}: the image is truncated or damaged ({exc})") from exc
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise UnsupportedFormatError(
            f"{name}: {image.mode} (16-bit or float) image; ichseg reads 8-bit windowed slice images. "
            "Export Hounsfield units as DICOM or NIfTI instead"
        )
    if image.mode != "L":
        image = image.convert("RGBA").convert("L") if "A" in image.mode or image.mode == "P" else image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def stack_slices(arrays: list[np.ndarray], names: list[str], what: str) -> np.ndarray:
    """Stack same-sized 2-D slices, or explain which ones differ."""
    if not arrays:
        raise NoFramesError(f"{what} holds no slice images")
    first = arrays[0].shape
    for array, name in zip(arrays, names, strict=True):
        if array.shape != first:
            raise InconsistentSeriesError(
                f"{what}: slices differ in size ({names[0]} is {first[1]}x{first[0]}, "
                f"{name} is {array.shape[1]}x{array.shape[0]}); a scan's slices must all be the same size"
            )
    return np.stack(arrays)


def read_single_image(data: bytes, content: Content, name: str, limits: ScanLimits) -> Scan:
    """A single JPEG/PNG: a one-slice scan whose id is the file stem."""
    pixels = decode_slice_image(data, name, limits)
    return Scan(
        slices=pixels[None],
        slice_ids=(PurePosixPath(name).stem or "0000",),
        format=content.value,
        hu=False,
        source=name,
    )
