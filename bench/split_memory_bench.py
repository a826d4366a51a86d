"""The split function's peak memory per input: what a Lambda of 3008 MB can take.

    .venv/bin/python bench/split_memory_bench.py

For each input, a fresh interpreter does what the split does with an upload's bytes (read and
window the scan with the split's limits, encode each batch for the endpoint) and reports its peak
resident memory (``ru_maxrss``) above an interpreter that only imported the same modules. Inputs:
the committed sample (32 frames of 650x650), the same repeated 10x (320 frames), and an 8 KB-ish
H.264 file of 80 frames of 3000x2500 that the split must refuse from its header.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORK = """
import json, sys
import ichseg.readers.video  # PyAV and its libraries: in the baseline too
from ichseg.endpoint_protocol import encode_slices
from ichseg.errors import ScanError
from ichseg.limits import ScanLimits
from ichseg.pipeline.split import request_sized_limits
from ichseg.readers import read_scan
from ichseg.windowing import windowed_slices
outcome = "imports only"
if sys.argv[1] != "-":
    data = open(sys.argv[1], "rb").read()
    try:
        slices = windowed_slices(read_scan(data, request_sized_limits(ScanLimits.from_env())))
        for start in range(0, len(slices), 12):
            encode_slices(slices[start : start + 14])
        outcome = f"split: {len(slices)} slices"
    except ScanError as exc:
        outcome = f"refused: {exc}"
# VmHWM (this process image's peak RSS), not ru_maxrss, which keeps the parent's across fork + exec
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mib": peak_kib / 1024, "outcome": outcome}))
"""


def measure(path: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", WORK, path], capture_output=True, text=True, check=True, cwd=REPO)
    return dict(json.loads(out.stdout))


def main() -> int:
    from ichseg.paths import SAMPLE_VIDEO
    from ichseg.readers import read_scan
    from ichseg.render import write_h264
    from ichseg.windowing import windowed_slices

    frames = windowed_slices(read_scan(SAMPLE_VIDEO))
    with tempfile.TemporaryDirectory() as folder:
        long_video = Path(folder) / "long.mp4"
        long_video.write_bytes(write_h264(np.concatenate([frames] * 10), fps=5.0, crf=18))
        huge = Path(folder) / "huge.mp4"
        huge.write_bytes(write_h264(np.zeros((80, 2500, 3000), np.uint8), fps=5.0, crf=40))
        baseline = float(measure("-")["peak_mib"])  # type: ignore[arg-type]
        print(f"interpreter with the split's imports: {baseline:.0f} MiB peak")
        print(f"{'input':<34} {'size':>9} {'peak above it':>14}  outcome")
        for name, path in (
            ("sample, 32 x 650x650", SAMPLE_VIDEO),
            ("10x sample, 320 x 650x650", long_video),
            ("80 x 3000x2500 (header says 600 MB)", huge),
        ):
            result = measure(str(path))
            extra = float(result["peak_mib"]) - baseline  # type: ignore[arg-type]
            print(f"{name:<34} {path.stat().st_size / 1024:7.0f} KB {extra:11.0f} MiB  {result['outcome']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
