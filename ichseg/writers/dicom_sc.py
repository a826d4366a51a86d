"""The overlay series for DICOM input: each segmented slice as a secondary-capture image with the
outline burned in, for the PACS viewers that show no DICOM SEG.

Many PACS and their viewers display a SEG as nothing at all; for them ichseg's answer would be
invisible. Triage products therefore also send what every viewer shows: a secondary-capture
series (PS3.3 A.8.1) in the original study, one image per source slice, in the same order:

- the slice in the brain window the model read, with the hemorrhage outline burned in (an outline
  only, no fill: the tissue under it stays readable);
- a banner on top with the scan's finding and probability (and the volume where there is one),
  and one at the bottom with "NOT FOR CLINICAL USE" and the slice's place in the series;
- Burned In Annotation YES, Conversion Type WSD (workstation), Image Type DERIVED\\SECONDARY, the
  source slice in Source Image Sequence, its pixel spacing and patient orientation, so a viewer
  measures and orients as on the source.

The pixels are JPEG baseline (what every PACS decodes; a 512x512 slice is ~50 KB instead of
768 KB). Their UIDs come from the job id and the slice's number, like the SEG's and the SR's, so
building the series again (a re-run of the assembly, a re-delivery) makes the very same instances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ichseg.dicom_identity import dicom_file_bytes
from ichseg.findings import Finding
from ichseg.writers.dicom_seg import DerivedObject, datasets_from_headers, derived_object_attributes
from ichseg.writers.render import caption_frame, overlay_mask

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
"""PS3.3 C.7.6.1.1.1: the patient direction of +x, +y, +z (and of their opposites)."""


class OverlayUnavailable(RuntimeError):
    """The overlay series cannot be made for this job (said in a warning, never a job failure)."""


def finding_banner(report: Mapping[str, Any]) -> list[str]:
    """The top banner of every overlay image, line by line: the scan's verdict, as the report gives it."""
    lines = [f"ichseg: {report['finding']}, probability {report['hemorrhage_probability']:.2f}"]
    volume = report.get("volume_ml")
    details = [f"volume {volume:.1f} mL"] if report["finding"] == Finding.HEMORRHAGE_DETECTED and volume else []
    if report.get("warnings"):
        details.append("input flagged: see the SR")
    return lines + (["; ".join(details)] if details else [])


def patient_orientation(image_orientation: Sequence[float]) -> tuple[str, str]:
    """Patient Orientation (rows, columns) from Image Orientation (Patient)'s direction cosines:
    the letters of each direction's components, largest first (``L``, ``P``, ``LP`` when oblique)."""

    def letters(cosines: Sequence[float]) -> str:
        ranked = sorted(range(3), key=lambda axis: -abs(cosines[axis]))
        kept = [axis for axis in ranked if abs(cosines[axis]) > 0.25] or ranked[:1]
        return "".join(_AXIS_LETTERS[axis][0 if cosines[axis] > 0 else 1] for axis in kept)

    row, column = [float(v) for v in image_orientation[:3]], [float(v) for v in image_orientation[3:6]]
    return letters(row), letters(column)


def build_overlay_series(
    headers: Sequence[dict[str, Any]],
    slices_u8: Sequence[np.ndarray],
    masks: np.ndarray,
    report: Mapping[str, Any],
    model_version: str,
    job_id: str,
) -> list[bytes]:
    """One secondary-capture image per source instance (``headers``, as captured by
    :func:`ichseg.writers.dicom_seg.source_headers`, in slice order): the windowed slice with the
    mask's outline and the banners, as DICOM files. :class:`OverlayUnavailable` if the slices do
    not match the source instances one to one (multi-frame input)."""
    import highdicom as hd
    from pydicom import Dataset
    from pydicom.uid import JPEGBaseline8Bit

    sources = datasets_from_headers(headers)
    if not len(sources) == len(slices_u8) == len(masks):
        raise OverlayUnavailable(f"{len(sources)} source instance(s) for {len(slices_u8)} slices: no overlay series")
    banner = finding_banner(report)
    files = []
    for number, (source, grey, mask) in enumerate(zip(sources, slices_u8, masks, strict=True), start=1):
        image = overlay_mask(grey, mask, opacity=0.0)  # the outline alone
        for line, text in enumerate(banner):
            caption_frame(image, text, line=line)
        caption_frame(image, f"{NOT_FOR_CLINICAL_USE}  {number}/{len(sources)}", bottom=True)
        spacing = getattr(source, "PixelSpacing", None)
        orientation = getattr(source, "ImageOrientationPatient", None)
        attributes = derived_object_attributes(job_id, DerivedObject.OVERLAY, model_version, number)
        try:
            sc = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=source,
                pixel_array=image,
                photometric_interpretation=hd.PhotometricInterpretationValues.YBR_FULL_422,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                # highdicom's hint says int; it writes the DS values it is given (0.45 mm stays 0.45).
                pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,  # type: ignore[arg-type]
                patient_orientation=patient_orientation(orientation) if orientation else ("L", "P"),
                transfer_syntax_uid=JPEGBaseline8Bit,
                **attributes,
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise OverlayUnavailable(f"the source series cannot carry an overlay series ({exc})") from exc
        sc.BurnedInAnnotation = "YES"
        sc.ConversionType = "WSD"  # made on a workstation (ichseg), not digitized film or video
        # A head, unpaired: said so, or validators ask for the Laterality of a paired part.
        sc.BodyPartExamined = getattr(source, "BodyPartExamined", "") or "HEAD"
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.DerivationDescription = "Hemorrhage outline and finding burned in by ichseg"
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [reference]
        files.append(dicom_file_bytes(sc))
    return files
