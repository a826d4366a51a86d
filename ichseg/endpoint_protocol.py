"""The wire contract between the segment function and the inference endpoint.

Request: ``POST /invocations`` (SageMaker) with ``Content-Type: application/x-npy`` and the bytes of
``numpy.save`` of a uint8 array ``(N, H, W)`` of windowed slices (any H, W).
Response: ``application/x-npy``, a uint8 array ``(N, H, W)``: hemorrhage probability x 255 at the
input's resolution; and the header ``X-Amzn-SageMaker-Custom-Attributes`` (SageMaker hands it to
the caller as ``CustomAttributes``) carrying the per-slice probabilities and the model's identity
and thresholds, e.g. ``model=ichseg-unet;version=1.0.0;slice_threshold=0.41;pixel_threshold=0.5;
slice_probabilities=0.0120,0.9310``, and for models with a subtype head the subtype names once and
each slice's subtype probabilities (two decimals, ``/`` between subtypes, ``,`` between slices):
``subtype_names=epidural/subdural/...;subtypes=0.01/0.93/0.02/0.00/0.10,...``. Pure numpy: the
Lambda side imports this, never onnxruntime.

Models from 0.2 on read each slice with its neighbours (2.5-D): a request's slices must be
consecutive slices of one scan, and the caller sends :data:`CONTEXT_SLICES` extra slices on each
side of its batch where the scan has them. The request's own CustomAttributes say so
(:class:`RequestAttributes`, e.g. ``context=1,1``): the endpoint then reads the context slices only
as neighbours and answers for the batch's own slices, so a batch costs its slices, not two more. A
request without them is answered for every slice; a caller facing an endpoint that ignores them drops
the context answers itself (:func:`trim_context`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where slices are encoded: the API function reads the constants without it
    import numpy as np

CONTENT_TYPE = "application/x-npy"
CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"
SAGEMAKER_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
"""SageMaker real-time endpoints reject request bodies above 6 MB."""
SAGEMAKER_MAX_CUSTOM_ATTRIBUTES = 1024
"""CustomAttributes is capped at 1024 characters: what bounds the slices per request
(:data:`MAX_SLICES_PER_REQUEST`)."""
CONTEXT_SLICES = 1
"""Neighbouring slices a model sees on each side (``InputSpec.context``); batches overlap by this."""


class ProtocolError(ValueError):
    """A request or response that does not follow the contract."""


def encode_slices(slices: np.ndarray) -> bytes:
    """Serialise ``(N, H, W)`` uint8 slices (or probability maps) as ``.npy`` bytes."""
    import numpy as np

    array = np.asarray(slices)
    if array.dtype != np.uint8 or array.ndim != 3:
        raise ProtocolError(f"expected a (N, H, W) uint8 array, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def quantize_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Probability maps in [0, 1] as the response carries them: probability x 255, rounded, uint8."""
    import numpy as np

    return np.clip(np.rint(np.asarray(probabilities) * 255.0), 0, 255).astype(np.uint8)


def decode_slices(payload: bytes) -> np.ndarray:
    """Parse ``.npy`` bytes into a ``(N, H, W)`` uint8 array; :class:`ProtocolError` otherwise."""
    import numpy as np

    try:
        array = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ProtocolError(f"body is not a .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 3:
        described = f"{getattr(array, 'dtype', type(array))} {getattr(array, 'shape', '')}"
        raise ProtocolError(f"expected a (N, H, W) uint8 array, got {described}")
    return array


@dataclass(frozen=True)
class ResponseAttributes:
    """What travels beside the probability maps."""

    model: str
    version: str
    slice_threshold: float
    pixel_threshold: float
    slice_probabilities: tuple[float, ...]
    subtype_names: tuple[str, ...] = ()
    subtype_probabilities: tuple[tuple[float, ...], ...] = ()
    scan_threshold: float | None = None
    """The model's scan-level threshold, when it has its own (models from 0.2 on)."""
    """One row per slice, one column per name in ``subtype_names``; empty without a subtype head."""

    def encode(self) -> str:
        probabilities = ",".join(f"{p:.4f}" for p in self.slice_probabilities)
        # Thresholds to 6 significant digits (they are chosen to 4 decimals): a bounded width, so
        # the slices that fit the header can be worked out once (MAX_SLICES_PER_REQUEST).
        text = (
            f"model={self.model};version={self.version};slice_threshold={self.slice_threshold:.6g};"
            f"pixel_threshold={self.pixel_threshold:.6g};slice_probabilities={probabilities}"
        )
        if self.scan_threshold is not None:
            text += f";scan_threshold={self.scan_threshold:.6g}"
        if self.subtype_names:
            rows = ",".join("/".join(f"{q:.2f}" for q in row) for row in self.subtype_probabilities)
            text += f";subtype_names={'/'.join(self.subtype_names)};subtypes={rows}"
        if len(text) > SAGEMAKER_MAX_CUSTOM_ATTRIBUTES:
            raise ProtocolError(f"{len(self.slice_probabilities)} slices exceed SageMaker's CustomAttributes limit")
        return text

    def trimmed(self, before: int, after: int) -> ResponseAttributes:
        """The attributes without the first ``before`` and last ``after`` slices (context slices)."""
        end = len(self.slice_probabilities) - after
        return replace(
            self,
            slice_probabilities=self.slice_probabilities[before:end],
            subtype_probabilities=self.subtype_probabilities[before:end] if self.subtype_names else (),
        )

    @classmethod
    def decode(cls, text: str) -> ResponseAttributes:
        try:
            fields = dict(part.split("=", 1) for part in text.split(";") if part)
            probabilities = fields["slice_probabilities"]
            names = tuple(fields["subtype_names"].split("/")) if fields.get("subtype_names") else ()
            rows = fields.get("subtypes", "")
            subtypes = tuple(tuple(float(q) for q in row.split("/")) for row in rows.split(",")) if rows else ()
            attributes = cls(
                model=fields["model"],
                version=fields["version"],
                slice_threshold=float(fields["slice_threshold"]),
                pixel_threshold=float(fields["pixel_threshold"]),
                slice_probabilities=tuple(float(p) for p in probabilities.split(",")) if probabilities else (),
                subtype_names=names,
                subtype_probabilities=subtypes,
                scan_threshold=float(fields["scan_threshold"]) if "scan_threshold" in fields else None,
            )
        except (KeyError, ValueError) as exc:
            raise ProtocolError(f"malformed custom attributes {text[:200]!r} ({exc})") from exc
        if names and (
            len(subtypes) != len(attributes.slice_probabilities) or any(len(row) != len(names) for row in subtypes)
        ):
            raise ProtocolError(f"custom attributes: subtype rows do not match the slices: {text[:200]!r}")
        return attributes


MODEL_LABEL_CHARACTERS = 48
"""Room the slice cap leaves for a model's name and version together (``ichseg-unet`` ``0.2.0``: 16)."""
SUBTYPE_NAMES_CHARACTERS = 64
"""The five subtype names joined by ``/`` (epidural/subdural/intraparenchymal/intraventricular/subarachnoid)."""


def slices_fitting_custom_attributes() -> int:
    """The most slices one response can describe inside CustomAttributes' 1024 characters, in the
    worst case: five subtypes, a name and version of :data:`MODEL_LABEL_CHARACTERS`, every
    threshold at its widest, every probability its widest."""
    label = "m" * (MODEL_LABEL_CHARACTERS // 2)
    names = tuple("n" * (SUBTYPE_NAMES_CHARACTERS // 5) for _ in range(4))
    names += ("n" * (SUBTYPE_NAMES_CHARACTERS - 4 - sum(map(len, names))),)
    widest = 0.000123456  # the widest a threshold in (0, 1] prints at 6 significant digits: 11 characters
    count = 0
    while True:
        attributes = ResponseAttributes(
            label, label, widest, widest, (0.5,) * (count + 1), names, ((0.5,) * 5,) * (count + 1), widest
        )
        try:
            attributes.encode()
        except ProtocolError:
            return count
        count += 1


MAX_SLICES_PER_REQUEST = slices_fitting_custom_attributes()
"""What one endpoint request may carry, context slices included: the one cap for the pipeline's
batches (:meth:`ichseg.pipeline.config.PipelineConfig.slices_per_request`) and the server's check."""


@dataclass(frozen=True)
class RequestAttributes:
    """What travels beside a request's slices: how many at each end are context (neighbours) only."""

    context_before: int = 0
    context_after: int = 0

    def encode(self) -> str:
        if not (self.context_before or self.context_after):
            return ""
        return f"context={self.context_before},{self.context_after}"

    def answered(self, count: int) -> int:
        """How many of ``count`` request slices the endpoint answers for."""
        answered = count - self.context_before - self.context_after
        if self.context_before < 0 or self.context_after < 0 or answered < 1:
            raise ProtocolError(
                f"context {self.context_before},{self.context_after} leaves no slice to answer for of {count}"
            )
        return answered

    @classmethod
    def decode(cls, text: str) -> RequestAttributes:
        """Parse ``context=B,A`` (other ``key=value`` parts are ignored; empty means no context)."""
        try:
            fields = dict(part.split("=", 1) for part in text.split(";") if part.strip())
            if "context" not in fields:
                return cls()
            before, after = (int(v) for v in fields["context"].split(","))
        except ValueError as exc:
            raise ProtocolError(f"malformed request attributes {text[:200]!r} ({exc})") from exc
        if not (0 <= before <= CONTEXT_SLICES and 0 <= after <= CONTEXT_SLICES):
            raise ProtocolError(f"context must be 0..{CONTEXT_SLICES} slices on each side, got {before},{after}")
        return cls(before, after)


def trim_context(maps: np.ndarray, before: int, after: int) -> np.ndarray:
    """Drop the answers for the context slices a request carried around its batch."""
    return maps[before : len(maps) - after]
