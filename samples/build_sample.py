"""Rebuild the committed demo sample from the CT-ICH data in ../shared/data.

    .venv/bin/python samples/build_sample.py [--patient 051]

Writes ``samples/ct-ich-<patient>/slices/<n>.jpg`` (the original brain-window JPGs, untouched)
and ``samples/ct-ich-<patient>/brain.mp4`` (the same slices as the H.264 video the mobile app
uploads, 5 slices per second).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ichseg.readers import read_scan
from ichseg.writers.render import write_h264

REPO = Path(__file__).resolve().parents[1]
CT_ICH = REPO.parent / "shared" / "data" / "ct-ich" / "Patients_CT"


def build_sample(patient: str, out_root: Path = REPO / "samples") -> Path:
    """Copy one CT-ICH patient's brain-window slices and encode them as an mp4."""
    source = CT_ICH / patient / "brain"
    out = out_root / f"ct-ich-{patient}"
    slices_dir = out / "slices"
    slices_dir.mkdir(parents=True, exist_ok=True)
    for jpg in source.glob("*.jpg"):
        if not jpg.stem.endswith("_HGE_Seg"):
            shutil.copyfile(jpg, slices_dir / jpg.name)
    scan = read_scan(slices_dir)
    write_h264(scan.slices, out / "brain.mp4", fps=5.0, crf=18)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patient", default="051")
    print(build_sample(parser.parse_args().patient))
