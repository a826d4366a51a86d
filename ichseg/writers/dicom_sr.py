"""DICOM SR for DICOM input: the report as a TID 1500 Measurement Report beside the DICOM SEG.

A PACS shows ``report.json`` to nobody; it files a Comprehensive 3D SR in the study and viewers
read its measurements. The SR says what the report says, in codes:

- observer: the algorithm (a device), ichseg with the model's name and version;
- procedure reported: CT of head;
- a scan-level group (TID 1501): intracranial hemorrhage present or absent, the scan's
  hemorrhage probability, and as source images the slices called hemorrhage (every slice for a
  normal scan, whose verdict rests on all of them);
- where the mask holds any pixel, a volumetric group (TID 1411) whose region is segment 1 of the
  SEG, with the hemorrhage volume in mL; with an empty mask there is no region to point at, so
  the volume (0 mL) goes into the scan-level group instead;
- a group per subtype, most probable first: the subtype as a coded finding (private scheme), its
  scan-level probability, and its volume only where the report has one (today's mask head cannot
  separate the subtypes: a text note says so rather than inventing numbers);
- a text note of what codes cannot say (the slices' ids, why a volume is missing or 0 mL, the input
  warnings, the disclaimer).

Every source instance and the SEG are listed as the document's evidence. There is no image
library: its dozen acquisition items per image made building the SR of a 200-slice scan take
seconds, and nothing here reads them.

Patient and study attributes come from the source headers, so the SR lands in the source study;
its series and instance UIDs come from the job id, so a re-run makes the very same instance.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from ichseg.dicom_identity import dicom_file_bytes
from ichseg.findings import Finding
from ichseg.writers.dicom_seg import MANUFACTURER, DerivedObject, datasets_from_headers, derived_object_attributes

SEGMENT_NUMBER = 1
"""The SEG's one segment (intracranial hemorrhage), see :func:`ichseg.writers.dicom_seg.build_seg`."""

CT_OF_HEAD = Code("303653007", "SCT", "CT of head")
MILLILITER = Code("ml", "UCUM", "milliliter")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
PRIVATE_SCHEME = "99ICHSEG"
"""Subtype names are the model's own words; a private scheme (``99`` prefix) says so honestly."""


class SrUnavailable(RuntimeError):
    """The SR cannot be made for this job (said in a warning, never a job failure)."""


def build_sr(
    headers: Sequence[dict[str, Any]],
    seg_bytes: bytes,
    report: Mapping[str, Any],
    model_name: str,
    model_version: str,
    job_id: str,
) -> bytes:
    """A Comprehensive 3D SR (TID 1500 Measurement Report) of ``report`` over the source series and its SEG."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = datasets_from_headers(headers)
    slices = list(report.get("slices") or [])
    if len(slices) != len(sources):
        raise SrUnavailable(f"the report has {len(slices)} slice(s) for {len(sources)} source instance(s)")
    try:
        seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    except (pydicom.errors.InvalidDicomError, ValueError, EOFError) as exc:
        raise SrUnavailable(f"the SEG cannot be read back ({exc})") from exc
    if str(getattr(seg, "Modality", "")) != "SEG":
        raise SrUnavailable("the object given as the SEG is not a segmentation")

    detected = report.get("finding") == Finding.HEMORRHAGE_DETECTED
    involved = [ds for ds, entry in zip(sources, slices, strict=True) if entry.get("hemorrhage")]
    volume = report.get("volume_ml")
    has_region = any(int(entry.get("area_px") or 0) > 0 for entry in slices)
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version)
    volume_measurement = (
        [hd.sr.Measurement(name=codes.SCT.Volume, value=float(volume), unit=MILLILITER, algorithm_id=algorithm)]
        if volume is not None
        else []
    )
    try:
        scan_group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=pydicom.uid.generate_uid(entropy_srcs=["ichseg", job_id, "sr", "scan-finding"]),
                identifier="ichseg scan finding",
            ),
            finding_type=codes.SCT.IntracranialHemorrhage,
            algorithm_id=algorithm,
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
            measurements=[
                hd.sr.Measurement(
                    name=codes.DCM.Probability,
                    value=float(report.get("hemorrhage_probability") or 0.0),
                    unit=codes.UCUM.NoUnits,
                    algorithm_id=algorithm,
                ),
                *([] if has_region else volume_measurement),
            ],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=codes.SCT.IntracranialHemorrhage,
                    value=codes.SCT.Present if detected else codes.SCT.Absent,
                )
            ],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in involved or sources],
        )
        groups: list[Any] = [scan_group]
        if has_region:
            groups.append(
                hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=pydicom.uid.generate_uid(entropy_srcs=["ichseg", job_id, "sr", "hemorrhage-region"]),
                        identifier="ichseg hemorrhage region",
                    ),
                    referenced_segment=hd.sr.ReferencedSegment(
                        sop_class_uid=str(seg.SOPClassUID),
                        sop_instance_uid=str(seg.SOPInstanceUID),
                        segment_number=SEGMENT_NUMBER,
                        source_images=[
                            hd.sr.SourceImageForSegmentation.from_source_image(ds)
                            for ds in _segmented_sources(seg, sources)
                        ],
                    ),
                    finding_type=codes.SCT.IntracranialHemorrhage,
                    finding_category=codes.SCT.MorphologicallyAbnormalStructure,
                    algorithm_id=algorithm,
                    finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
                    measurements=volume_measurement,
                )
            )
        groups.extend(_subtype_groups(report, algorithm, job_id))
        observer = hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=pydicom.uid.generate_uid(entropy_srcs=["ichseg", model_name, model_version]),
                name=f"ichseg {model_name}",
                manufacturer_name=MANUFACTURER,
                model_name=f"{model_name} {model_version}",
            ),
        )
        content = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=CT_OF_HEAD,
            imaging_measurements=groups,
        )
        content[0].ContentSequence.append(_notes(report))
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*sources, seg],
            content=content[0],
            is_complete=True,
            **derived_object_attributes(job_id, DerivedObject.SR, model_version),
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise SrUnavailable(f"the report cannot be written as a DICOM SR ({exc})") from exc
    return dicom_file_bytes(sr)


def _segmented_sources(seg: Dataset, sources: Sequence[Dataset]) -> list[Dataset]:
    """The source images the SEG's frames derive from (its non-empty slices), in slice order.

    highdicom's own ``ReferencedSegment.from_segmentation`` looks for the segment number in each
    frame's functional groups, where a one-segment SEG keeps it in the shared ones; the frames'
    derivation references are read here instead.
    """
    referenced = {
        str(source.ReferencedSOPInstanceUID)
        for frame in getattr(seg, "PerFrameFunctionalGroupsSequence", [])
        for derivation in getattr(frame, "DerivationImageSequence", [])
        for source in getattr(derivation, "SourceImageSequence", [])
    }
    chosen = [ds for ds in sources if str(ds.SOPInstanceUID) in referenced]
    return chosen or list(sources)


def _subtype_groups(report: Mapping[str, Any], algorithm: Any, job_id: str) -> list[Any]:
    """One group per subtype the model names, most probable first: the subtype as a coded finding
    (the private scheme: the model's own words), its scan-level probability, and its volume where
    the report has one (never invented)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    probabilities = report.get("subtypes") or {}
    volumes = report.get("volume_ml_by_subtype") or {}
    names = sorted(
        {*probabilities, *(n for n, ml in volumes.items() if ml is not None)},
        key=lambda n: (-float(probabilities.get(n) or 0.0), n),
    )
    groups = []
    for name in names:
        measurements = []
        if probabilities.get(name) is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=codes.DCM.Probability,
                    value=float(probabilities[name]),
                    unit=codes.UCUM.NoUnits,
                    algorithm_id=algorithm,
                )
            )
        if volumes.get(name) is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=codes.SCT.Volume, value=float(volumes[name]), unit=MILLILITER, algorithm_id=algorithm
                )
            )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=pydicom.uid.generate_uid(entropy_srcs=["ichseg", job_id, "sr", "subtype", name]),
                    identifier=f"ichseg subtype {name}"[:64],
                ),
                finding_type=subtype_code(name),
                algorithm_id=algorithm,
                finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
                measurements=measurements,
            )
        )
    return groups


def subtype_code(name: str) -> Code:
    """A hemorrhage subtype as a coded concept of the private scheme (the model's own word)."""
    return Code(name[:16], PRIVATE_SCHEME, f"{name} hemorrhage"[:64])


def _notes(report: Mapping[str, Any]) -> Dataset:
    """TID 1500's qualitative evaluations container: what the codes cannot say, in plain text."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    lines = [f"Finding: {report.get('finding')}."]
    ids = list(report.get("slices_with_hemorrhage") or [])
    lines.append(f"Slices with hemorrhage: {', '.join(ids)}." if ids else "Slices with hemorrhage: none.")
    if report.get("volume_note"):
        lines.append(str(report["volume_note"]))
    elif report.get("volume_ml") is None:
        lines.append("No volume: the scan's pixel spacing or slice spacing is unknown.")
    # Input the model reads poorly: the reader of the SR must see it beside the finding.
    lines.extend(f"Input warning ({w['code']}): {w['message']}" for w in report.get("warnings") or [])
    if not report.get("volume_ml_by_subtype") and report.get("volume_ml_by_subtype_note"):
        lines.append(str(report["volume_ml_by_subtype_note"]))
    lines.append(str(report.get("disclaimer") or "Research software. Not for clinical use."))
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Comment, value=line, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            for line in lines
        ]
    )
    return container
