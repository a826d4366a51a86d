"""`ichseg segment` and the report: masks at the input's resolution, H.264 overlay, report.json."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from PIL import Image

from ichseg.model_metadata import ModelMetadata
from ichseg.segmentation import masks_from_probabilities
from ichseg.writers.report import HEMORRHAGE_DETECTED, NORMAL, build_report
from tests.dicom_tools import dciodvfy_errors
from tests.onnx_fixtures import build_tiny_model, head_phantom
from tests.scan_fixtures import dicom_bytes, dicom_series, enhanced_ct, png_bytes, write_dicom_series

ICHSEG = Path(sys.executable).parent / "ichseg"


def test_segment_image_zip_writes_masks_overlay_and_report(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny.onnx", slice_threshold=0.5)
    slices = head_phantom(count=3, height=90, width=70, skull=True)
    slices[0] = 0  # an empty slice: the detection head says normal, so no mask
    upload = tmp_path / "scan.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for index, image in enumerate(slices, start=8):
            archive.writestr(f"{index}.png", png_bytes(image))
    result = run_segment(upload, tmp_path / "out", model)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["10.png", "8.png", "9.png"]
    mask = np.asarray(Image.open(out / "masks" / "9.png"))
    assert mask.shape == (90, 70) and set(np.unique(mask)) <= {0, 255}
    # The tiny model marks bright tissue: the head ellipse, at the original resolution.
    assert (mask[slices[1] > 127] == 255).mean() > 0.95 and (mask[slices[1] < 10] == 0).mean() > 0.95
    assert not np.asarray(Image.open(out / "masks" / "8.png")).any()
    report = json.loads((out / "report.json").read_text())
    assert [s["id"] for s in report["slices"]] == ["8", "9", "10"]
    assert report["slices"][0]["area_px"] == 0 and report["slices"][1]["area_px"] == int((mask == 255).sum())
    assert report["slices"][1]["area_mm2"] is None and report["volume_ml"] is None  # no spacing in PNGs
    assert report["finding"] == HEMORRHAGE_DETECTED and report["slices_with_hemorrhage"] == ["9", "10"]
    assert report["model"] == {"name": "ichseg-tiny", "version": "0.0.1-test"}
    with av.open(str(out / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and sum(1 for _ in container.decode(stream)) == 3
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert json.loads(result.stdout)["finding"] == HEMORRHAGE_DETECTED


def test_segment_dicom_reports_area_and_volume(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny.onnx", slice_threshold=0.0)
    write_dicom_series(tmp_path / "series", dicom_series(count=3, rows=64, cols=64))
    result = run_segment(tmp_path / "series", tmp_path / "out", model)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    area = report["slices"][0]["area_px"]
    assert report["slices"][0]["area_mm2"] == pytest.approx(area * 0.5 * 0.45, rel=1e-3)
    total = sum(s["area_px"] for s in report["slices"])
    assert report["volume_ml"] == pytest.approx(total * 0.5 * 0.45 * 2.5 / 1000, rel=1e-3)


def test_segment_dicom_writes_the_seg_and_sr_a_pacs_gets(tmp_path: Path) -> None:
    """For DICOM input ``ichseg segment`` writes the same SEG and SR the assemble stage sends a PACS:
    over the source series, its masks, valid, and the same instances on a second run."""
    model = build_tiny_model(tmp_path / "tiny.onnx", slice_threshold=0.0)
    sources = dicom_series(count=3, rows=64, cols=64)
    write_dicom_series(tmp_path / "series", sources)

    def segment(out: str, *options: str) -> dict[str, str]:
        result = run_segment(tmp_path / "series", tmp_path / out, model, *options)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    summary = segment("out")
    out = tmp_path / "out"
    assert summary["seg"] == str(out / "seg.dcm") and summary["sr"] == str(out / "sr.dcm")
    assert "dicom_unavailable" not in summary
    seg, sr = pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(out / "sr.dcm")
    assert seg.Modality == "SEG" and sr.Modality == "SR"
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == sources[0].StudyInstanceUID
    # Frames are stored only where the mask holds a pixel; each names its source slice.
    by_position = {float(s.ImagePositionPatient[2]): s.SOPInstanceUID for s in sources}
    report = json.loads((out / "report.json").read_text())
    painted = [s for s in report["slices"] if s["area_px"]]
    assert int(seg.NumberOfFrames) == len(painted) > 0
    referenced = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in seg.PerFrameFunctionalGroupsSequence
    }
    assert referenced <= set(by_position.values())
    assert int(seg.pixel_array.sum()) == sum(s["area_px"] for s in painted)
    assert dciodvfy_errors(out / "seg.dcm") == [] and dciodvfy_errors(out / "sr.dcm") == []
    assert "overlay_series" not in summary and not (out / "overlay_series").exists()  # only when asked
    again = segment("again", "--overlay-series")
    assert pydicom.dcmread(again["seg"]).SOPInstanceUID == seg.SOPInstanceUID
    assert pydicom.dcmread(again["sr"]).SOPInstanceUID == sr.SOPInstanceUID
    # --overlay-series: the secondary captures a ?overlay site gets, one per slice, as files to import.
    images = sorted(Path(again["overlay_series"]).iterdir())
    assert [p.name for p in images] == ["0001.dcm", "0002.dcm", "0003.dcm"]
    overlay = [pydicom.dcmread(p) for p in images]
    assert [o.SourceImageSequence[0].ReferencedSOPInstanceUID for o in overlay] == [
        by_position[position] for position in sorted(by_position)
    ]
    assert dciodvfy_errors(images[0]) == []


def test_segment_non_dicom_and_multiframe_say_why_there_is_no_seg(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny.onnx", slice_threshold=0.0)
    (tmp_path / "enhanced.dcm").write_bytes(dicom_bytes(enhanced_ct(count=3, rows=64, cols=64)))
    result = run_segment(tmp_path / "enhanced.dcm", tmp_path / "out", model)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert "seg" not in summary and "multi-frame" in summary["dicom_unavailable"]
    assert not (tmp_path / "out" / "seg.dcm").exists()


def run_segment(source: Path, out: Path, model: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``ichseg segment SOURCE --out OUT --model MODEL [OPTIONS]`` as a person runs it."""
    return subprocess.run(
        [str(ICHSEG), "segment", str(source), "--out", str(out), "--model", str(model), *options],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_segment_bad_input_is_one_error_line(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny.onnx")
    (tmp_path / "notes.txt").write_text("not a scan")
    result = run_segment(tmp_path / "notes.txt", tmp_path / "out", model)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_slice_gate_clears_masks_and_scan_finding() -> None:
    probabilities = np.full((2, 4, 4), 0.9, dtype=np.float32)
    segmentation = masks_from_probabilities(
        probabilities, np.array([0.2, 0.7]), pixel_threshold=0.5, slice_threshold=0.5
    )
    assert not segmentation.masks[0].any() and segmentation.masks[1].all()
    meta = ModelMetadata(name="m", version="1", slice_threshold=0.8)
    report = build_report(["a", "b"], segmentation, meta, (1.0, 1.0), 5.0)
    assert report["finding"] == NORMAL and report["hemorrhage_probability"] == pytest.approx(0.7)
    assert report["volume_ml"] == pytest.approx(16 * 5.0 / 1000)


def test_subtypes_reach_the_report_the_summary_and_the_captions(tmp_path: Path) -> None:
    from ichseg.inference import OnnxSegmenter, segment_scan
    from ichseg.model_metadata import SUBTYPES
    from ichseg.preprocess import prepare_batch
    from ichseg.scan import Scan
    from ichseg.writers.outputs import slice_captions
    from ichseg.writers.report import SUBTYPE_VOLUME_NOTE
    from tests.onnx_fixtures import expected_subtype_probabilities

    # 0.6: the empty first slice reads its neighbour's white skull (2.5-D) and reaches 0.55
    model = build_tiny_model(tmp_path / "tiny.onnx", slice_threshold=0.6, channels=3, subtypes=True)
    slices = head_phantom(count=3, height=90, width=70, skull=True)
    slices[0] = 0
    segmenter = OnnxSegmenter(model)
    _, segmentation = segment_scan(Scan(slices, ("a", "b", "c"), "png", hu=False), segmenter)
    assert segmentation.subtype_probabilities is not None and segmentation.subtype_probabilities.shape == (3, 5)
    prediction = segmenter.predict(slices)  # the probabilities follow the model's arithmetic, per slice
    mean = float(np.mean(prepare_batch(slices, segmenter.metadata.input).inputs[2]))
    assert np.allclose(prediction.subtype_probabilities[2], expected_subtype_probabilities(mean), atol=1e-5)
    report = build_report(["a", "b", "c"], segmentation, segmenter.metadata, None, None)
    assert list(report["subtypes"]) == list(SUBTYPES)
    assert report["subtypes"]["epidural"] == round(float(segmentation.subtype_probabilities[:, 0].max()), 4)
    assert report["slices"][2]["subtypes"]["subarachnoid"] < 0.5 < report["slices"][2]["subtypes"]["epidural"]
    assert report["volume_ml_by_subtype"] is None and report["volume_ml_by_subtype_note"] == SUBTYPE_VOLUME_NOTE
    captions = slice_captions(["a", "b", "c"], segmentation, segmenter.metadata)
    assert "epidural" in captions[2] and "subarachnoid" not in captions[2]
    assert captions[0].startswith("a ") and "epidural" not in captions[0]  # a normal slice names nothing
    # A model without a subtype head says so instead of inventing probabilities.
    plain = build_tiny_model(tmp_path / "plain.onnx", slice_threshold=0.6)
    _, old = segment_scan(Scan(slices, ("a", "b", "c"), "png", hu=False), OnnxSegmenter(plain))
    legacy = build_report(["a", "b", "c"], old, OnnxSegmenter(plain).metadata, None, None)
    assert legacy["subtypes"] is None and "subtypes" not in legacy["slices"][0]
