"""The model's lifecycle in the inference server: load in the background, warm up, report readiness,
and serve one batched inference at a time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.endpoint_protocol import (
    ProtocolError,
    RequestAttributes,
    ResponseAttributes,
    encode_slices,
    quantize_probabilities,
)
from ichseg.inference import DEFAULT_PROVIDERS, OnnxSegmenter
from serving.logs import event
from serving.request_checks import RequestRejected


@dataclass(frozen=True)
class Answer:
    """One request's answer, and what the server logs of it."""

    body: bytes
    """The ``.npy`` probability maps x 255."""
    attributes: str
    """The CustomAttributes text (:class:`ichseg.endpoint_protocol.ResponseAttributes`)."""
    answered: int
    """Slices answered (the request's less its context)."""
    model_seconds: float
    """Time in the model, not counting the wait for it (requests queue for one model run at a time)."""


class InferenceService:
    """The loaded model, its readiness, and one inference at a time per process.

    Inference is serialised with a semaphore: one GPU (or the CPU's cores) is best used by one
    batched run at a time, while ``/ping`` keeps answering from other threads (SageMaker's
    health check times out after 2 s, far shorter than a large CPU request).
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: tuple[str, ...] = DEFAULT_PROVIDERS,
        intra_op_threads: int | None = None,
        batch_size: int = 8,
        max_concurrent: int = 1,
        segmenter_factory: Callable[[], OnnxSegmenter] | None = None,
        require_gpu: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.require_gpu = require_gpu
        self._factory = segmenter_factory or (
            lambda: OnnxSegmenter(
                self.model_path, providers=providers, intra_op_threads=intra_op_threads, batch_size=batch_size
            )
        )
        self.segmenter: OnnxSegmenter | None = None
        self.error: str | None = None
        self._ready = threading.Event()
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load(self) -> None:
        """Build the session and run one warm-up inference; records the error instead of raising."""
        started = time.perf_counter()
        try:
            segmenter = self._factory()
            if self.require_gpu and segmenter.provider == "CPUExecutionProvider":
                # A GPU instance serving from its CPU is 50x slower and looks healthy: refuse instead.
                raise RuntimeError(
                    "a GPU is required (ICHSEG_REQUIRE_GPU) but ONNX Runtime fell back to the CPU: "
                    "check the NVIDIA driver (CUDA 13 needs >= 580) and the CUDA/cuDNN libraries"
                )
            size = segmenter.metadata.input.size
            warm = segmenter.predict(np.zeros((1, size, size), np.uint8))
            if warm.probabilities.shape != (1, size, size):
                raise RuntimeError(f"warm-up returned {warm.probabilities.shape}, expected (1, {size}, {size})")
        except Exception as exc:  # any failure keeps /ping at 503 and is reported there and in the log
            self.error = f"{type(exc).__name__}: {exc}"
            event(logging.ERROR, "model failed to load", model=str(self.model_path), error=self.error)
            return
        self.segmenter = segmenter
        self._ready.set()
        event(
            logging.INFO,
            "model ready",
            model=str(self.model_path),
            name=segmenter.metadata.name,
            version=segmenter.metadata.version,
            provider=segmenter.provider,
            providers=list(segmenter.session.get_providers()),
            input_size=segmenter.metadata.input.size,
            batch_size=segmenter.batch_size,
            load_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.load, name="ichseg-model-load", daemon=True)
        thread.start()
        return thread

    def status(self) -> dict[str, Any]:
        if self.segmenter is not None:
            meta = self.segmenter.metadata
            return {"status": "ready", "model": meta.name, "version": meta.version, "provider": self.segmenter.provider}
        if self.error is not None:
            return {"status": "failed", "error": self.error}
        return {"status": "loading"}

    def infer(self, slices: np.ndarray, request: RequestAttributes | None = None) -> Answer:
        """``(N, H, W)`` uint8 slices -> the ``.npy`` probability x 255 bytes and the CustomAttributes
        text, for the slices that are not the request's context (those only serve as neighbours)."""
        segmenter = self.segmenter
        if segmenter is None:
            raise RequestRejected(503, "ModelNotReady", f"the model is not ready ({self.status()['status']})")
        request = request or RequestAttributes()
        try:
            request.answered(len(slices))
        except ProtocolError as exc:
            raise RequestRejected(400, "ValidationError", str(exc)) from exc
        with self._slots:
            started = time.perf_counter()
            prediction = segmenter.predict(slices, (request.context_before, request.context_after))
            model_seconds = time.perf_counter() - started
        scaled = quantize_probabilities(prediction.probabilities)
        meta = segmenter.metadata
        attributes = ResponseAttributes(
            model=meta.name,
            version=meta.version,
            slice_threshold=meta.slice_threshold,
            pixel_threshold=meta.pixel_threshold,
            slice_probabilities=tuple(float(p) for p in prediction.slice_probabilities),
            subtype_names=meta.subtypes,
            scan_threshold=meta.scan_threshold,
            subtype_probabilities=tuple(tuple(float(q) for q in row) for row in prediction.subtype_probabilities),
        )
        return Answer(encode_slices(scaled), attributes.encode(), len(prediction.slice_probabilities), model_seconds)
