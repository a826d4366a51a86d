"""What the inference server checks of a request before it builds any array: the ``.npy`` header
(dtype, shape) against the bytes present and the side limits, so a 100-byte request cannot claim a
1 GB array. A refused request is a :class:`RequestRejected` with its HTTP status, never a 500.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from ichseg.endpoint_protocol import MAX_SLICES_PER_REQUEST, SAGEMAKER_MAX_PAYLOAD_BYTES, ProtocolError, decode_slices

MIN_SIDE = 16
MAX_SIDE = 4096


class RequestRejected(Exception):
    """A request the server refuses, with the HTTP status and a message for the caller."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ArrayHeader:
    """What a ``.npy`` payload claims to hold, read before any array is built."""

    shape: tuple[int, ...]
    dtype: np.dtype
    data_bytes: int
    """Bytes after the header actually present in the payload."""


def read_npy_header(payload: bytes) -> ArrayHeader:
    """Parse the ``.npy`` header only; :class:`RequestRejected` (400) if it is not one."""
    stream = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise RequestRejected(400, "ValidationError", f"body is not a .npy array ({exc})") from exc
    return ArrayHeader(tuple(int(d) for d in shape), np.dtype(dtype), len(payload) - stream.tell())


def check_array_header(header: ArrayHeader) -> None:
    """Reject wrong dtypes, wrong ranks, absurd shapes and truncated data before decoding."""
    if header.dtype != np.uint8:
        raise RequestRejected(
            400, "ValidationError", f"expected uint8 windowed slices, got dtype {header.dtype} (window and scale first)"
        )
    if len(header.shape) != 3:
        raise RequestRejected(400, "ValidationError", f"expected a (N, H, W) array, got shape {header.shape}")
    count, height, width = header.shape
    if count == 0:
        raise RequestRejected(400, "ValidationError", "the array holds no slices (N = 0)")
    if count > MAX_SLICES_PER_REQUEST:  # the contract's cap: what one answer's attributes can describe
        raise RequestRejected(
            413, "PayloadTooLarge", f"{count} slices in one request; send at most {MAX_SLICES_PER_REQUEST}"
        )
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise RequestRejected(
            400, "ValidationError", f"slice size {height}x{width} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side"
        )
    expected = count * height * width
    if header.data_bytes != expected:
        raise RequestRejected(
            400, "ValidationError", f"the header promises {expected} bytes of pixels but {header.data_bytes} follow"
        )


def parse_request_body(payload: bytes) -> np.ndarray:
    """Validated ``(N, H, W)`` uint8 slices from a request body, or :class:`RequestRejected`."""
    if not payload:
        raise RequestRejected(400, "ValidationError", "empty body: send numpy.save bytes of a (N, H, W) uint8 array")
    if len(payload) > SAGEMAKER_MAX_PAYLOAD_BYTES:
        raise RequestRejected(413, "PayloadTooLarge", f"body exceeds {SAGEMAKER_MAX_PAYLOAD_BYTES} bytes")
    check_array_header(read_npy_header(payload))
    try:
        return decode_slices(payload)
    except ProtocolError as exc:
        raise RequestRejected(400, "ValidationError", str(exc)) from exc
