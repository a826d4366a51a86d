"""The metadata every ichseg model artifact carries, so no server ever guesses preprocessing.

Stored as JSON under the ONNX metadata key :data:`METADATA_KEY` (and in the model card). Readers
need only the ``onnx``-free runtime: onnxruntime exposes custom metadata, and this module is plain
Python.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ichseg.calibration import Platt
from ichseg.preprocess import InputSpec
from ichseg.windowing import PRESETS, Window

METADATA_KEY = "ichseg"
INPUT_NAME = "slices"
MASK_OUTPUT = "mask"
SLICE_OUTPUT = "hemorrhage"
SUBTYPE_OUTPUT = "subtypes"
SUBTYPES: tuple[str, ...] = ("epidural", "subdural", "intraparenchymal", "intraventricular", "subarachnoid")
"""Hemorrhage subtypes, in the order of the ``subtypes`` output and of every per-subtype list."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to run a model correctly and to know what it is."""

    name: str
    version: str
    input: InputSpec = field(default_factory=InputSpec)
    window: str = "ct-ich-brain"
    """Window applied to HU inputs before the model (8-bit inputs pass through)."""
    pixel_threshold: float = 0.5
    """A pixel is hemorrhage when its probability reaches this."""
    slice_threshold: float = 0.5
    """A slice is reported as hemorrhage when its probability reaches this; masks on slices below it
    are cleared (the detection head gates the mask head). Chosen on validation patients."""
    scan_threshold: float | None = None
    """A scan is reported as hemorrhage when its most confident slice reaches this (chosen on
    validation scans); None: the slice threshold, as for models before 0.2."""
    slice_calibration: tuple[float, float] = (1.0, 0.0)
    """Platt scaling (scale, bias) of the slice head, fitted on validation; (1, 0): as trained."""
    subtypes: tuple[str, ...] = ()
    """Names of the ``subtypes`` output's columns (:data:`SUBTYPES`); empty for a model without it."""
    subtype_calibration: tuple[tuple[float, float], ...] = ()
    """Platt scaling per subtype column (empty: as trained)."""
    test_time_flip: bool = False
    """Read every slice also mirrored left-right and average the two answers (twice the compute).
    A head is nearly symmetric and bleeds occur on either side, so the mirror is a second honest
    look; the thresholds and calibration are chosen with it on (``training.evaluate``)."""
    architecture: str = "unet"
    parameters: int = 0
    gflop_per_frame: float = 0.0
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    intended_use: str = "Research and demonstration only. Not for clinical use."
    opset: int = 17

    @property
    def finding_threshold(self) -> float:
        """The threshold the scan's finding uses."""
        return self.slice_threshold if self.scan_threshold is None else self.scan_threshold

    @property
    def slice_platt(self) -> Platt:
        return Platt(*self.slice_calibration)

    def calibrate_subtypes(self, probabilities: np.ndarray) -> np.ndarray:
        """``(N, S)`` raw subtype probabilities -> calibrated, column by column."""
        if not self.subtype_calibration:
            return np.asarray(probabilities, dtype=np.float32)
        columns = [Platt(*pair).apply(probabilities[:, i]) for i, pair in enumerate(self.subtype_calibration)]
        return np.stack(columns, axis=1).astype(np.float32)

    @property
    def window_preset(self) -> Window:
        return PRESETS[self.window]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        raw = json.loads(text)
        known_input = set(InputSpec.__dataclass_fields__)
        raw["input"] = InputSpec(**{k: v for k, v in raw.get("input", {}).items() if k in known_input})
        raw["subtypes"] = tuple(raw.get("subtypes", ()))
        raw["slice_calibration"] = tuple(raw.get("slice_calibration", (1.0, 0.0)))
        raw["subtype_calibration"] = tuple(tuple(pair) for pair in raw.get("subtype_calibration", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in raw.items() if k in known})

    def with_updates(self, **changes: Any) -> ModelMetadata:
        values = asdict(self)
        values["input"] = self.input
        values.update(changes)
        return ModelMetadata(**values)
