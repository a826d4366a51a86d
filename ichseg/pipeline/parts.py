"""A segmented batch's part: what the segment stage renders the moment the endpoint answers, and
the assemble stage joins (:mod:`ichseg.pipeline.segment`, :mod:`ichseg.pipeline.assemble`).

Shared by the two stages, so that split, segment and assemble stand side by side: the batch part
and its codec, rendering a batch, the model identity behind a job's batches, and the lower-priority
thread that rendering runs in beside the endpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ichseg.endpoint_protocol import ResponseAttributes
from ichseg.model_metadata import ModelMetadata
from ichseg.pipeline import keys
from ichseg.scan_context import map_features
from ichseg.segmentation import Segmentation, masks_from_u8_probabilities
from ichseg.writers.outputs import RenderedSlices, render_slices, slice_captions

T = TypeVar("T")
BACKGROUND_NICENESS = 10
"""How much lower than normal the work that runs beside the endpoint is scheduled (see :func:`in_background`)."""


def in_background(work: Callable[[], T]) -> T:
    """Run ``work`` in a thread of its own at a lower CPU priority (Linux niceness +10) and return its result.

    Rendering a batch and writing its masks happen while the endpoint segments the next batches.
    Where they share cores with it (the local stack, or any small machine), they should take the
    CPU the model leaves idle, not slow it down: the model's parallel sections wait for their
    slowest thread, so a core taken from them costs more than the work done on it. Only the new
    thread (and threads it starts) is lowered, which any process may do; the caller's priority is
    untouched, so the final assembly that follows in the same worker runs at normal priority.
    """
    outcome: dict[str, object] = {}

    def run() -> None:
        with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted: normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
        try:
            outcome["value"] = work()
        except BaseException as exc:  # re-raised in the caller, where the stage handles it
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="ichseg-background")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


class ModelChanged(ValueError):
    """Batches of one job were segmented by different models or thresholds (a redeploy mid-job)."""


# ------------------------------------------------------------------------------ one batch's part


@dataclass(frozen=True)
class BatchPart:
    """A segmented batch's share of the results: everything the final assembly needs of it."""

    start: int
    slice_ids: tuple[str, ...]
    attributes: ResponseAttributes
    """The endpoint's answer for the batch's own slices (context trimmed): model, thresholds, probabilities."""
    labels: tuple[str, ...]
    """Each slice's caption (video frames, contact sheet)."""
    areas: np.ndarray
    """(n,) int64: mask pixels per slice."""
    rendered: RenderedSlices
    outlined: np.ndarray
    """(n,) float32: the share of each slice's pixels at the pixel threshold, before the slice gate
    (the scan head reads it; :func:`ichseg.scan_context.map_features`)."""
    peaks: np.ndarray
    """(n,) float32: each slice's highest pixel probability."""

    @property
    def count(self) -> int:
        return len(self.slice_ids)

    def encode(self) -> bytes:
        """One ``.npz`` (no pickles): small, and written in one PUT, so it is never half there."""
        pngs = self.rendered.mask_pngs
        buffer = io.BytesIO()
        np.savez(
            buffer,
            meta=_text_array(
                json.dumps(
                    {
                        "start": self.start,
                        "slice_ids": list(self.slice_ids),
                        "labels": list(self.labels),
                        "attributes": self.attributes.encode(),
                    }
                )
            ),
            areas=np.asarray(self.areas, dtype=np.int64),
            outlined=np.asarray(self.outlined, dtype=np.float32),
            peaks=np.asarray(self.peaks, dtype=np.float32),
            video=np.frombuffer(self.rendered.video, dtype=np.uint8),
            thumbnails=np.stack(self.rendered.thumbnails),
            mask_pngs=np.frombuffer(b"".join(pngs), dtype=np.uint8),
            mask_png_sizes=np.array([len(p) for p in pngs], dtype=np.int64),
            frame_jpegs=np.frombuffer(b"".join(self.rendered.frame_jpegs), dtype=np.uint8),
            frame_jpeg_sizes=np.array([len(j) for j in self.rendered.frame_jpegs], dtype=np.int64),
        )
        return buffer.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> BatchPart:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            blob = arrays["mask_pngs"].tobytes()
            pngs = _split_blob(blob, arrays["mask_png_sizes"])
            jpegs = _split_blob(arrays["frame_jpegs"].tobytes(), arrays["frame_jpeg_sizes"])
            rendered = RenderedSlices(arrays["video"].tobytes(), tuple(arrays["thumbnails"]), pngs, jpegs)
            part = cls(
                start=int(meta["start"]),
                slice_ids=tuple(meta["slice_ids"]),
                attributes=ResponseAttributes.decode(meta["attributes"]),
                labels=tuple(meta["labels"]),
                areas=arrays["areas"],
                rendered=rendered,
                outlined=arrays["outlined"],
                peaks=arrays["peaks"],
            )
        lengths = (len(part.labels), len(part.areas), len(part.outlined), len(part.peaks), len(pngs))
        if any(n != part.count for n in (*lengths, len(rendered.thumbnails))):
            raise ValueError(f"a batch part with inconsistent lengths ({part.count} slices)")
        if len(jpegs) != part.count:
            raise ValueError(f"a batch part with {len(jpegs)} frames for {part.count} slices")
        return part


def _split_blob(blob: bytes, sizes: np.ndarray) -> tuple[bytes, ...]:
    """Concatenated files back into a tuple, given each one's size."""
    ends = np.cumsum(sizes).tolist()
    return tuple(blob[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True))


def _text_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def model_of(attributes: Sequence[ResponseAttributes]) -> ModelMetadata:
    """The one model identity (name, version, thresholds) behind every batch; :class:`ModelChanged` if not one."""
    identities = {
        (a.model, a.version, a.slice_threshold, a.pixel_threshold, a.subtype_names, a.scan_threshold)
        for a in attributes
    }
    if len(identities) != 1:
        shown = ", ".join(f"{m} {v} (slice {s}, pixel {p})" for m, v, s, p, *_ in sorted(identities, key=str))
        raise ModelChanged(f"the endpoint's model changed while this job ran: {shown}")
    first = attributes[0]
    return ModelMetadata(
        name=first.model,
        version=first.version,
        slice_threshold=first.slice_threshold,
        pixel_threshold=first.pixel_threshold,
        subtypes=first.subtype_names,
        scan_threshold=first.scan_threshold,
    )


def _segmentation(masks: np.ndarray, attributes: Sequence[ResponseAttributes], model: ModelMetadata) -> Segmentation:
    slice_probabilities = np.array([p for a in attributes for p in a.slice_probabilities], dtype=np.float32)
    subtypes = None
    if model.subtypes:
        subtypes = np.array([row for a in attributes for row in a.subtype_probabilities], dtype=np.float32)
    return Segmentation(masks, slice_probabilities, subtypes)


def render_batch(
    frames_u8: np.ndarray,
    probabilities_u8: np.ndarray,
    attributes: ResponseAttributes,
    start: int,
    slice_ids: Sequence[str],
    fps: float,
    threads: int = 1,
) -> BatchPart:
    """A batch's part from its own frames and the endpoint's answer for them (context trimmed).

    Pure computation: the segment stage stores the part. ``threads`` is x264's: one by default,
    because the segment worker runs beside the inference server and the other workers.
    """
    if not len(frames_u8) == len(probabilities_u8) == len(slice_ids) == len(attributes.slice_probabilities):
        raise ValueError(
            f"a batch of {len(slice_ids)} slice ids with {len(frames_u8)} frames, {len(probabilities_u8)} maps "
            f"and {len(attributes.slice_probabilities)} probabilities"
        )
    model = model_of([attributes])
    slice_probabilities = np.asarray(attributes.slice_probabilities, dtype=np.float32)
    masks = masks_from_u8_probabilities(
        probabilities_u8, slice_probabilities, model.pixel_threshold, model.slice_threshold
    )
    labels = slice_captions(list(slice_ids), _segmentation(masks, [attributes], model), model)
    outlined, peaks = map_features(probabilities_u8, model.pixel_threshold)
    return BatchPart(
        start=start,
        slice_ids=tuple(slice_ids),
        attributes=attributes,
        labels=tuple(labels),
        areas=masks.reshape(len(masks), -1).sum(axis=1).astype(np.int64),
        rendered=render_slices(frames_u8, masks, labels, fps=fps, threads=threads),
        outlined=outlined,
        peaks=peaks,
    )


def result_files(job_id: str, part: BatchPart) -> dict[str, bytes]:
    """A batch's per-slice results by key: its masks and (for the viewer) its plain frames, which the
    segment stage writes under ``results/`` as soon as the batch is rendered."""
    files = {keys.mask_key(job_id, i): png for i, png in zip(part.slice_ids, part.rendered.mask_pngs, strict=True)}
    frames = zip(part.slice_ids, part.rendered.frame_jpegs, strict=True)
    files.update((keys.slice_frame_key(job_id, slice_id), jpeg) for slice_id, jpeg in frames)
    return files
