"""The scan head: the whole scan's answer, read from its slices' answers in order.

The segmentation model reads each slice with one neighbour on each side. Whether a scan bleeds, and
which kind of bleed it is, are properties of the whole scan (the CNN-LSTM idea of ichseg's design):
one confident slice among thirty quiet ones is a different scan from thirty slices that each lean
a little, and an epidural bleed looks different over its run of slices than on any one of them.

The scan head is a small temporal-convolution network over the slices' answers. For every slice it
reads :data:`FEATURES`: the slice and subtype probabilities, how much of the slice the mask head
outlines and its peak pixel, and where the slice sits in the scan. It gives a probability per slice,
subtype probabilities per slice, and one probability and one set of subtype probabilities for the
scan. It is its own ONNX graph of a few thousand weights and runs on a CPU where the scan comes
together: the assemble stage and ``ichseg segment``. It is trained on one segmentation model's
answers (``training/scan_head.py``), so it carries that model's name and version and is used with
that model only; with any other, the report falls back to the most confident slice and says so.

numpy here; onnxruntime only when a head is loaded (:class:`ScanHead`).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.model_metadata import SUBTYPES, ModelMetadata
from ichseg.paths import MODELS

log = logging.getLogger(__name__)

SCAN_HEAD = MODELS / "ichseg-scan-head.onnx"
"""The committed scan head, paired with the committed segmentation model."""
METADATA_KEY = "ichseg_scan_head"
INPUT_NAME = "slice_features"
SLICE_OUTPUT = "slice_hemorrhage"
SLICE_SUBTYPE_OUTPUT = "slice_subtypes"
SCAN_OUTPUT = "scan_hemorrhage"
SCAN_SUBTYPE_OUTPUT = "scan_subtypes"
FEATURES: tuple[str, ...] = (
    "slice_logit",
    *(f"{name}_logit" for name in SUBTYPES),
    "outlined",
    "peak_logit",
    "position",
)
"""One row per slice, in this order (:func:`slice_features`)."""
LOGIT_CLIP = 0.005
"""Probabilities are clipped to [0.005, 0.995] before the logit: subtypes travel with two decimals."""
OUTLINED_SCALE = 100.0
"""The outlined share of a slice enters as log1p(100 x share): a 1 % outline is about 0.7."""


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float32), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(q / (1 - q)).astype(np.float32)


def map_features(probabilities_u8: np.ndarray, pixel_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per slice of ``(n, H, W)`` probability x 255 maps (as the endpoint sends them): the share of
    pixels at or above ``pixel_threshold`` before any slice gate, and the peak probability."""
    maps = np.asarray(probabilities_u8)
    if maps.ndim != 3 or maps.dtype != np.uint8:
        raise ValueError(f"expected (n, H, W) uint8 maps, got {maps.dtype} {maps.shape}")
    levels = (np.arange(256, dtype=np.float32) / 255.0) >= pixel_threshold
    first = int(np.argmax(levels)) if levels.any() else 256
    flat = maps.reshape(len(maps), -1)
    outlined = np.count_nonzero(flat >= first, axis=1) / max(flat.shape[1], 1) if first < 256 else np.zeros(len(maps))
    peak = flat.max(axis=1, initial=0).astype(np.float32) / 255.0
    return np.asarray(outlined, dtype=np.float32), peak


def slice_features(
    slice_probabilities: np.ndarray,
    subtype_probabilities: np.ndarray | None,
    outlined: np.ndarray,
    peak: np.ndarray,
) -> np.ndarray:
    """The head's ``(N, len(FEATURES))`` float32 input for one scan's slices in order."""
    p = np.asarray(slice_probabilities, dtype=np.float32)
    n = len(p)
    subtypes = np.zeros((n, len(SUBTYPES)), np.float32) + LOGIT_CLIP
    if subtype_probabilities is not None and np.size(subtype_probabilities):
        subtypes = np.asarray(subtype_probabilities, dtype=np.float32).reshape(n, len(SUBTYPES))
    if not len(outlined) == len(peak) == n:
        raise ValueError(f"{n} slices with {len(outlined)} outlined shares and {len(peak)} peaks")
    position = np.linspace(0.0, 1.0, n, dtype=np.float32) if n > 1 else np.full(n, 0.5, np.float32)
    columns = [
        _logit(p)[:, None],
        _logit(subtypes),
        np.log1p(OUTLINED_SCALE * np.asarray(outlined, np.float32))[:, None],
        _logit(np.asarray(peak, np.float32))[:, None],
        position[:, None],
    ]
    return np.concatenate(columns, axis=1).astype(np.float32)


class ScanOutput(StrEnum):
    """What of a scan's answer a head may give in place of the most-confident-slice rule."""

    FINDING = "finding"
    """The finding and the scan's probability, against the head's own threshold."""
    SUBTYPES = "subtypes"
    """The scan's subtype probabilities."""


@dataclass(frozen=True)
class ScanHeadMetadata:
    """What the head's ONNX file says of itself (JSON under :data:`METADATA_KEY`)."""

    version: str
    segmentation_model: str
    """The name of the segmentation model whose answers it was trained on."""
    segmentation_version: str
    scan_threshold: float
    """A scan is "Hemorrhage detected" when the head's scan probability reaches this (chosen on
    out-of-fold predictions, never on test)."""
    name: str = "ichseg-scan-head"
    adopted: tuple[ScanOutput, ...] = ()
    """The outputs that replace the old rule's: each only where the head's out-of-fold validation
    figures beat the rule's (``training/scan_head.py``). The per-slice probabilities are always
    reported beside the slice head's, as ``context_probability``."""
    features: tuple[str, ...] = FEATURES
    subtypes: tuple[str, ...] = SUBTYPES
    parameters: int = 0
    training: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def pairs_with(self, model: ModelMetadata) -> bool:
        """Whether this head reads the answers of ``model``."""
        return (self.segmentation_model, self.segmentation_version) == (model.name, model.version)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ScanHeadMetadata:
        raw = json.loads(text)
        raw["features"] = tuple(raw.get("features", FEATURES))
        raw["subtypes"] = tuple(raw.get("subtypes", SUBTYPES))
        raw["adopted"] = tuple(ScanOutput(value) for value in raw.get("adopted", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class ScanContext:
    """The scan head's answer for one scan."""

    scan_probability: float
    scan_subtypes: np.ndarray
    """(S,) in :data:`SUBTYPES` order."""
    slice_probabilities: np.ndarray
    """(N,) the head's per-slice probability (the slice read in its scan)."""
    slice_subtypes: np.ndarray
    """(N, S)."""
    metadata: ScanHeadMetadata

    @property
    def detected(self) -> bool:
        return self.scan_probability >= self.metadata.scan_threshold

    def gives(self, output: ScanOutput) -> bool:
        """Whether the report takes ``output`` from the head."""
        return output in self.metadata.adopted


class ScanHead:
    """An ONNX Runtime session over a scan head (one CPU thread: it is a few thousand weights)."""

    def __init__(self, path: str | Path = SCAN_HEAD) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        custom = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise ValueError(f"{path} is not an ichseg scan head (no {METADATA_KEY} metadata)")
        self.metadata = ScanHeadMetadata.from_json(custom[METADATA_KEY])
        if self.metadata.features != FEATURES:
            raise ValueError(f"{path} reads features {self.metadata.features}, this ichseg computes {FEATURES}")
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._lock = threading.Lock()  # one session, callers on several threads

    def __call__(self, features: np.ndarray) -> ScanContext:
        """One scan's ``(N, F)`` :func:`slice_features` -> its :class:`ScanContext`."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(FEATURES) or len(x) == 0:
            raise ValueError(f"expected (N>0, {len(FEATURES)}) features, got {x.shape}")
        with self._lock:
            values = self.session.run(None, {INPUT_NAME: x[None]})
        out = dict(zip(self._outputs, values, strict=True))
        return ScanContext(
            scan_probability=float(out[SCAN_OUTPUT].reshape(-1)[0]),
            scan_subtypes=out[SCAN_SUBTYPE_OUTPUT].reshape(-1).astype(np.float32),
            slice_probabilities=out[SLICE_OUTPUT].reshape(-1).astype(np.float32),
            slice_subtypes=out[SLICE_SUBTYPE_OUTPUT].reshape(len(x), -1).astype(np.float32),
            metadata=self.metadata,
        )


@lru_cache(maxsize=4)
def load_scan_head(path: str | None = None) -> ScanHead | None:
    """The head at ``path`` (default: the committed one), loaded once per process; None where no
    file is there (the report then uses the most confident slice, as models before 0.3 did)."""
    target = Path(path) if path else SCAN_HEAD
    if not target.is_file():
        log.warning("no scan head at %s: the scan finding comes from the most confident slice", target)
        return None
    return ScanHead(target)


def scan_context(
    head: ScanHead | None,
    model: ModelMetadata,
    slice_probabilities: np.ndarray,
    subtype_probabilities: np.ndarray | None,
    outlined: np.ndarray,
    peak: np.ndarray,
) -> ScanContext | None:
    """The head's answer for a scan segmented by ``model``, or None where there is no head for that
    model (or no slice)."""
    if head is None or not len(slice_probabilities):
        return None
    if not head.metadata.pairs_with(model):
        log.warning(
            "scan head %s reads %s %s, not %s %s: the scan finding comes from the most confident slice",
            head.metadata.version,
            head.metadata.segmentation_model,
            head.metadata.segmentation_version,
            model.name,
            model.version,
        )
        return None
    return head(slice_features(slice_probabilities, subtype_probabilities, outlined, peak))
