"""What travels between stages: small JSON documents that carry ids and S3 keys, never pixels.

SQS messages are capped at 256 KiB and S3 is where frames belong; a message names the work and
the S3 objects hold it. The manifest, written once by the split, is everything later stages need
to know about the scan (slice ids, geometry, batches).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ichseg.pipeline import keys
from ichseg.scan import DicomSeriesRef, SeriesSelection


class MalformedMessage(ValueError):
    """A message body that is not what the stage expects (never retried into success)."""


class QueueMessage(BaseModel):
    """A queue message's body: pydantic parses it (the handlers' ``BatchProcessor(model=...)`` and
    :meth:`from_json`), strictly (``"12"`` is not a slice index) and frozen (a message is a fact)."""

    model_config = ConfigDict(frozen=True, strict=True)

    def to_json(self) -> str:
        """The message body (fields at their defaults are left out: the final assembly's message of a
        first attempt is ``{"job_id"}`` as ever)."""
        return self.model_dump_json(exclude_defaults=True)

    @classmethod
    def from_json(cls, body: str | bytes) -> Self:
        """The message in ``body``; :class:`MalformedMessage` if it is not one."""
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise MalformedMessage(f"not a {cls.__name__}: {body[:200]!r} ({exc.error_count()} errors)") from exc


@dataclass(frozen=True)
class DicomSource:
    """What the manifest keeps of a DICOM input: the series a SEG points back at, whether one can be
    made (``seg_unavailable`` says why not: the job still finishes, without a SEG), and whether the
    site asked for the overlay series too (a gateway upload's ``overlay-series`` metadata)."""

    series: DicomSeriesRef
    seg_unavailable: str | None = None
    overlay_series: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.series), "seg_unavailable": self.seg_unavailable, "overlay_series": self.overlay_series}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DicomSource:
        fields = {k: v for k, v in data.items() if k not in ("seg_unavailable", "overlay_series")}
        fields["sop_instance_uids"] = tuple(fields["sop_instance_uids"])
        return cls(DicomSeriesRef(**fields), data.get("seg_unavailable"), bool(data.get("overlay_series", False)))


@dataclass(frozen=True)
class BatchRef:
    """A run of consecutive slices sent to the endpoint in one request.

    The request also carries up to ``context_before``/``context_after`` neighbouring slices (the
    model reads each slice with its neighbours); the batch's frames object holds them too, and
    every stage after the endpoint keeps only the ``count`` slices from ``start``.
    """

    batch_id: str
    start: int
    count: int
    context_before: int = 0
    context_after: int = 0

    @property
    def stored(self) -> slice:
        """The scan's slices that the batch's frames object holds (context included)."""
        return slice(self.start - self.context_before, self.start + self.count + self.context_after)


class SegmentMessage(QueueMessage):
    """Segment queue: one batch of one job."""

    job_id: str
    batch_id: str
    start: int
    count: int
    frames_key: str
    context_before: int
    context_after: int
    slice_ids: tuple[str, ...]
    """The batch's own slice ids (what its masks and captions are named by), so that the segment
    stage renders the batch without reading the manifest."""
    generation: int = 0
    """The job's generation it was sent in (:mod:`ichseg.pipeline.retry`)."""

    @classmethod
    def for_batch(cls, job_id: str, batch: BatchRef, slice_ids: tuple[str, ...], generation: int = 0) -> SegmentMessage:
        """The message for ``batch``; ``slice_ids`` are the whole scan's (the batch's are taken)."""
        return cls(
            generation=generation,
            job_id=job_id,
            batch_id=batch.batch_id,
            start=batch.start,
            count=batch.count,
            frames_key=keys.frames_key(job_id, batch.batch_id),
            context_before=batch.context_before,
            context_after=batch.context_after,
            slice_ids=tuple(slice_ids[batch.start : batch.start + batch.count]),
        )


class AssembleMessage(QueueMessage):
    """Assemble queue: a job whose batches are all segmented, to be assembled (``{"job_id"}``)."""

    job_id: str
    generation: int = 0
    """The job's generation it was sent in (:mod:`ichseg.pipeline.retry`)."""


class MirrorMessage(QueueMessage):
    """Mirror queue: a DONE app job whose Firebase Storage copy is still to be made (the assembly's
    attempt missed its budget). The job row holds everything else (owner, result keys, state)."""

    job_id: str = Field(min_length=1)


@dataclass(frozen=True)
class ScanManifest:
    """The scan as the split saw it: written to ``work/{job}/manifest.json``."""

    job_id: str
    format: str
    slice_ids: tuple[str, ...]
    height: int
    width: int
    hu: bool
    window: str
    batches: tuple[BatchRef, ...]
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: float | None = None
    dicom: DicomSource | None = field(default=None)
    """The source series when the input was DICOM (its headers are stored beside the manifest)."""
    slice_extents_mm: tuple[float, ...] | None = None
    """Each slice's extent along the normal (the volume's per-slice weights); None: unknown (input
    without slice geometry)."""
    series: SeriesSelection | None = None
    """DICOM: the series segmented and the ones skipped, for the report."""

    @property
    def num_slices(self) -> int:
        return len(self.slice_ids)

    def to_json(self) -> str:
        data = asdict(self)
        data["dicom"] = self.dicom.to_dict() if self.dicom is not None else None
        data["series"] = self.series.to_dict() if self.series is not None else None
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> ScanManifest:
        data = json.loads(text)
        spacing = data.get("pixel_spacing_mm")
        return cls(
            job_id=data["job_id"],
            format=data["format"],
            slice_ids=tuple(data["slice_ids"]),
            height=int(data["height"]),
            width=int(data["width"]),
            hu=bool(data["hu"]),
            window=data["window"],
            batches=tuple(BatchRef(**b) for b in data["batches"]),
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])) if spacing else None,
            slice_thickness_mm=data.get("slice_thickness_mm"),
            dicom=DicomSource.from_dict(data["dicom"]) if data.get("dicom") else None,
            slice_extents_mm=(
                tuple(float(e) for e in data["slice_extents_mm"]) if data.get("slice_extents_mm") is not None else None
            ),
            series=SeriesSelection.from_dict(data["series"]) if data.get("series") else None,
        )

    def summary(self) -> dict[str, Any]:
        """What the job row keeps about the scan (shown by the status API)."""
        return {
            "format": self.format,
            "slices": self.num_slices,
            "height": self.height,
            "width": self.width,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
            "slice_thickness_mm": self.slice_thickness_mm,
            "batches": len(self.batches),
        }


def plan_batches(num_slices: int, per_batch: int, context: int = 0) -> tuple[BatchRef, ...]:
    """Consecutive batches of at most ``per_batch`` slices, ids sortable (``b0000``, ``b0001``...),
    each with up to ``context`` neighbouring slices on either side where the scan has them."""
    batches = []
    for index, start in enumerate(range(0, num_slices, per_batch)):
        count = min(per_batch, num_slices - start)
        before, after = min(context, start), min(context, num_slices - start - count)
        batches.append(BatchRef(f"b{index:04d}", start, count, before, after))
    return tuple(batches)
