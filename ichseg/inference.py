"""Running the shipped ONNX model in-process with ONNX Runtime (CLI and the inference server).

The model's own metadata decides windowing, input size, cropping and thresholds. Heavy imports
(onnxruntime) happen here only, never in the Lambda functions.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ichseg.endpoint_protocol import quantize_probabilities
from ichseg.fitness import require_brain_window_ct
from ichseg.model_metadata import INPUT_NAME, MASK_OUTPUT, METADATA_KEY, SLICE_OUTPUT, SUBTYPE_OUTPUT, ModelMetadata
from ichseg.paths import SHIPPED_MODEL
from ichseg.preprocess import prepare_batch, restore_probabilities
from ichseg.scan import Scan
from ichseg.scan_context import ScanContext, ScanHead, map_features, scan_context
from ichseg.segmentation import Segmentation, masks_from_probabilities
from ichseg.windowing import windowed_slices

log = logging.getLogger("ichseg.inference")

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Prediction:
    """Model outputs for windowed slices, at each slice's original size."""

    probabilities: np.ndarray
    """(N, H, W) float32 per-pixel hemorrhage probability."""
    slice_probabilities: np.ndarray
    """(N,) float32 per-slice hemorrhage probability (the detection head), calibrated."""
    subtype_probabilities: np.ndarray
    """(N, S) float32 per-slice probability of each subtype in ``metadata.subtypes`` (S may be 0)."""


class OnnxSegmenter:
    """An ONNX Runtime session over an ichseg model, with the model's metadata."""

    def __init__(
        self,
        model_path: str | Path = SHIPPED_MODEL,
        providers: tuple[str, ...] = DEFAULT_PROVIDERS,
        intra_op_threads: int | None = None,
        batch_size: int = 8,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or int(os.environ.get("ICHSEG_ORT_THREADS", "0"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("ICHSEG_ORT_SPINNING", "1") == "0":
            # Idle intra-op threads spin between runs by default: right for a machine of its own,
            # but where the model shares its cores (the local stack's endpoint beside the functions)
            # the spinning takes the CPU the other work needs.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
        self.provider = self.session.get_providers()[0]
        log.info("model %s on %s", model_path, self.provider)
        custom = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise ValueError(f"{model_path} carries no ichseg metadata; export it with model_export.export")
        self.metadata = ModelMetadata.from_json(custom[METADATA_KEY])
        self.batch_size = batch_size
        self._outputs = [o.name for o in self.session.get_outputs()]

    def predict(self, slices_u8: np.ndarray, context: tuple[int, int] = (0, 0)) -> Prediction:
        """Windowed uint8 ``(N, H, W)`` slices, consecutive in the scan -> probabilities at their
        original size (zero outside the intracranial region when the model asks for it).

        ``context=(before, after)``: that many slices at each end are only neighbours of the others
        and get no answer (the result has ``N - before - after`` slices).
        """
        meta = self.metadata
        before, after = context
        batch = prepare_batch(slices_u8, meta.input, before, len(slices_u8) - after)
        pixel_maps, slice_scores, subtype_scores = [], [], []
        for start in range(0, len(batch.inputs), self.batch_size):
            chunk = batch.inputs[start : start + self.batch_size]
            outputs = self._run(chunk)
            pixel_maps.append(outputs[MASK_OUTPUT][..., 0] * batch.regions[start : start + len(chunk)])
            slice_scores.append(outputs[SLICE_OUTPUT].reshape(-1))
            if meta.subtypes:
                subtype_scores.append(outputs[SUBTYPE_OUTPUT].reshape(len(chunk), len(meta.subtypes)))
        probabilities = restore_probabilities(np.concatenate(pixel_maps), batch.placements)
        slice_probabilities = meta.slice_platt.apply(np.concatenate(slice_scores))
        subtypes = (
            meta.calibrate_subtypes(np.concatenate(subtype_scores))
            if meta.subtypes
            else np.zeros((len(slice_probabilities), 0), np.float32)
        )
        return Prediction(probabilities, slice_probabilities, subtypes)

    def _run(self, chunk: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw outputs for ``(n, S, S, C)`` inputs, averaged with the left-right mirror's
        when the model's metadata asks for it (the mirrored maps mirrored back first)."""
        outputs = dict(zip(self._outputs, self.session.run(None, {INPUT_NAME: chunk}), strict=True))
        if not self.metadata.test_time_flip:
            return outputs
        mirrored = np.ascontiguousarray(chunk[:, :, ::-1, :])
        again = dict(zip(self._outputs, self.session.run(None, {INPUT_NAME: mirrored}), strict=True))
        again[MASK_OUTPUT] = again[MASK_OUTPUT][:, :, ::-1, :]
        return {name: (outputs[name] + again[name]) / 2 for name in outputs}


def segment_scan(scan: Scan, segmenter: OnnxSegmenter) -> tuple[np.ndarray, Segmentation]:
    """Window (per the model's metadata), predict and threshold one scan.

    Returns the windowed uint8 slices (for overlays) and the segmentation. A scan that cannot be
    read in a brain window is refused (:func:`ichseg.fitness.require_brain_window_ct`).
    """
    require_brain_window_ct(scan)
    slices = windowed_slices(scan, segmenter.metadata.window_preset)
    prediction = segmenter.predict(slices)
    meta = segmenter.metadata
    segmentation = masks_from_probabilities(
        prediction.probabilities,
        prediction.slice_probabilities,
        meta.pixel_threshold,
        meta.slice_threshold,
        prediction.subtype_probabilities,
    )
    # What the scan head reads of the maps, from the maps as the endpoint would send them, so the
    # CLI and the pipeline give the head the same numbers.
    pairs = [map_features(quantize_probabilities(m[None]), meta.pixel_threshold) for m in prediction.probabilities]
    outlined = np.array([o[0] for o, _ in pairs], np.float32)
    peaks = np.array([p[0] for _, p in pairs], np.float32)
    return slices, replace(segmentation, outlined=outlined, peaks=peaks)


def read_in_context(segmentation: Segmentation, model: ModelMetadata, head: ScanHead | None) -> ScanContext | None:
    """The scan head's answer for a scan :func:`segment_scan` segmented (None without a head for ``model``)."""
    if segmentation.outlined is None or segmentation.peaks is None:
        raise ValueError("the segmentation does not carry what the scan head reads (use segment_scan)")
    return scan_context(
        head,
        model,
        segmentation.slice_probabilities,
        segmentation.subtype_probabilities,
        segmentation.outlined,
        segmentation.peaks,
    )
