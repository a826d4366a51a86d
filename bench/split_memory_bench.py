"""The split function's peak memory per input, against the floor the input itself sets.

    .venv/bin/python bench/split_memory_bench.py [--skip-video]

For each input, a fresh interpreter does what the split does with an upload's bytes
(:func:`ichseg.pipeline.split.decode_upload`: read, check and window the scan with the split's
limits, then encode each batch for the endpoint) and reports its peak resident memory (``VmHWM``)
above an interpreter that only imported the same modules. Beside it, the floor: the upload's
bytes + the scan's volume (float32 HU, or the 8-bit frames) + its windowed uint8 copy (none for
8-bit input), which any split that holds the upload and the volume must pay; the ratio says how
far the split is from it.

Inputs: the committed sample video (32 frames of 650x650), the same repeated 10x, an 8 KB-ish
H.264 file of 80 frames of 3000x2500 that the split must refuse from its header; zipped DICOM
(512x512, int16 with noise, as CT compresses): a 600-instance study (5 mm and 0.625 mm, soft and
bone kernels, two scouts: the 5 mm soft series is chosen), the same at 1,500 instances, one
600-slice series (all of it decoded), and 800 members of 2.5 MiB (1280x1024) that compress 75x,
refused by the voxel limit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORK = """
import json, sys
import ichseg.readers.video, ichseg.readers.dicom  # PyAV, pydicom and their libraries: in the baseline too
from ichseg.endpoint_protocol import encode_slices
from ichseg.errors import ScanError
from ichseg.limits import ScanLimits
from ichseg.pipeline.jobs import JobSource
from ichseg.pipeline.split import decode_upload, request_sized_limits
result = {"outcome": "imports only"}
if sys.argv[1] != "-":
    data = open(sys.argv[1], "rb").read()
    result["upload_bytes"] = len(data)
    try:
        decoded = decode_upload(data, JobSource.INGEST, request_sized_limits(ScanLimits.from_env()), "ct-ich-brain")
        for start in range(0, len(decoded.slices), 12):
            encode_slices(decoded.slices[start : start + 14])
        result["outcome"] = f"split: {len(decoded.slices)} slices"
        result["volume_bytes"] = decoded.scan.slices.nbytes
        result["windowed_bytes"] = decoded.slices.nbytes if decoded.scan.hu else 0
    except ScanError as exc:
        result["outcome"] = f"refused: {str(exc)[:70]}"
# VmHWM (this process image's peak RSS), not ru_maxrss, which keeps the parent's across fork + exec
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
result["peak_mib"] = peak_kib / 1024
print(json.dumps(result))
"""

MiB = 2**20


def measure(path: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", WORK, path], capture_output=True, text=True, check=True, cwd=REPO)
    return dict(json.loads(out.stdout))


def _instance(series: dict[str, object], k: int, rows: int, cols: int, rng: np.random.Generator) -> bytes:
    """One CT instance of ``series`` (slice k): a head-like disc with a skull ring, in HU + noise."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", "BENCH"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = series["study"], series["uid"]
    ds.FrameOfReferenceUID, ds.SeriesNumber = series["frame"], series["number"]
    ds.ConvolutionKernel, ds.ImageType = series["kernel"], series["image_type"]
    ds.InstanceNumber = k + 1
    step = float(series["step"])  # type: ignore[arg-type]
    orientation = series["orientation"]
    ds.ImageOrientationPatient = orientation
    normal = np.cross(np.array(orientation[:3], float), np.array(orientation[3:], float))  # type: ignore[index]
    ds.ImagePositionPatient = [f"{v:.3f}" for v in np.array([-120.0, -120.0, 0.0]) + k * step * normal]
    ds.PixelSpacing, ds.SliceThickness = ["0.47", "0.47"], str(step)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    yy, xx = np.mgrid[:rows, :cols]
    radius = np.hypot((yy - rows / 2) / (rows * 0.42), (xx - cols / 2) / (cols * 0.36))
    hu = np.where(radius <= 1, np.where(radius > 0.92, 1200.0, 35.0), -1000.0)
    hu += rng.normal(0.0, float(series["noise"]), (rows, cols))  # type: ignore[arg-type]
    ds.PixelData = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_zip(path: Path, layout: list[tuple[str, int, float, str]], rows: int = 512, cols: int = 512) -> Path:
    """A zip of series ``(kernel, count, step mm, image type)``, written one instance at a time."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(7)
    study, frame = generate_uid(), generate_uid()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for number, (kernel, count, step, image_type) in enumerate(layout, start=1):
            series = {
                "study": study,
                "uid": generate_uid(),
                "frame": frame,
                "number": number,
                "kernel": kernel,
                "image_type": image_type.split("\\"),
                "step": step,
                "noise": 0.15 if rows > 512 else 12.0,  # the 2.5 MiB members compress ~75x; CT ~2x
                "orientation": [1, 0, 0, 0, 0, -1] if "LOCALIZER" in image_type else [1, 0, 0, 0, 1, 0],
            }
            for k in range(count):
                archive.writestr(f"study/{number:03d}/{k:05d}.dcm", _instance(series, k, rows, cols, rng))
    return path


def study(thin_each: int) -> list[tuple[str, int, float, str]]:
    """A head CT study: 5 mm soft and bone, 0.625 mm soft and bone (``thin_each`` each), two scouts."""
    axial = "ORIGINAL\\PRIMARY\\AXIAL"
    return [
        ("STANDARD", 32, 5.0, axial),
        ("BONE", 32, 5.0, axial),
        ("STANDARD", thin_each, 0.625, axial),
        ("BONE", thin_each, 0.625, axial),
        ("STANDARD", 1, 5.0, "ORIGINAL\\PRIMARY\\LOCALIZER"),
        ("STANDARD", 1, 5.0, "ORIGINAL\\PRIMARY\\LOCALIZER"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-video", action="store_true", help="only the DICOM inputs")
    args = parser.parse_args()
    from ichseg.paths import SAMPLE_VIDEO
    from ichseg.readers import read_scan
    from ichseg.windowing import windowed_slices
    from ichseg.writers.render import write_h264

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        inputs: list[tuple[str, Path]] = []
        if not args.skip_video:
            frames = windowed_slices(read_scan(SAMPLE_VIDEO))
            long_video = work / "long.mp4"
            long_video.write_bytes(write_h264(np.concatenate([frames] * 10), fps=5.0, crf=18))
            huge = work / "huge.mp4"
            huge.write_bytes(write_h264(np.zeros((80, 2500, 3000), np.uint8), fps=5.0, crf=40))
            inputs += [
                ("sample, 32 x 650x650", Path(SAMPLE_VIDEO)),
                ("10x sample, 320 x 650x650", long_video),
                ("80 x 3000x2500 (header: 600 MB)", huge),
            ]
        inputs += [
            ("DICOM study, 600 instances", dicom_zip(work / "s600.zip", study(267))),
            ("DICOM study, 1,500 instances", dicom_zip(work / "s1500.zip", study(717))),
            ("DICOM series, 600 x 0.625 mm", dicom_zip(work / "one600.zip", [("STANDARD", 600, 0.625, "ORIGINAL")])),
            (
                "800 x 2.5 MiB DICOM (1280x1024)",
                dicom_zip(work / "bomb.zip", [("STANDARD", 800, 1.0, "ORIGINAL")], rows=1024, cols=1280),
            ),
        ]
        baseline = float(measure("-")["peak_mib"])  # type: ignore[arg-type]
        print(f"interpreter with the split's imports: {baseline:.0f} MiB peak")
        print(f"{'input':<32} {'upload':>9} {'peak above':>11} {'floor':>9} {'ratio':>6}  outcome")
        for name, path in inputs:
            result = measure(str(path))
            extra = float(result["peak_mib"]) - baseline  # type: ignore[arg-type]
            floor_bytes = sum(int(result.get(k, 0)) for k in ("upload_bytes", "volume_bytes", "windowed_bytes"))  # type: ignore[call-overload]
            floor = floor_bytes / MiB
            ratio = f"{extra / floor:5.2f}x" if floor >= 1 else "   n/a"  # a refused header: no floor to speak of
            print(
                f"{name:<32} {path.stat().st_size / MiB:5.1f} MiB {extra:7.0f} MiB {floor:5.0f} MiB "
                f"{ratio}  {result['outcome']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
