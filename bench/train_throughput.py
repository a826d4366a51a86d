"""Training throughput: slices/s in one process vs 2 Horovod ranks (Gloo) on this machine.

    .venv-train/bin/python bench/train_throughput.py [--size 160] [--steps 12]

Both runs train the shipped architecture on the same synthetic training set for the same number
of steps per rank; the figure is training slices per second over all ranks (the first epoch, which
includes graph tracing, is excluded). Prints both figures and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def build_set(size: int, path: Path) -> None:
    sys.path.insert(0, str(REPO))
    from ichseg.preprocess import InputSpec
    from training.training_set import _Rows, add_synthetic

    rows = _Rows()
    add_synthetic(rows, 96, InputSpec(size=size), seed=3, val_fraction=0.0)
    rows.build().save(path)


def run(ranks: int, data: Path, out: Path, size: int, steps: int, base_filters: int) -> float:
    args = [
        "-m",
        "training.train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--steps-per-epoch",
        str(steps),
        "--batch-size",
        "8",
        "--base-filters",
        str(base_filters),
    ]
    if ranks == 1:
        command = [str(BIN / "python"), *args]
    else:
        command = [str(BIN / "horovodrun"), "-np", str(ranks), "--gloo", str(BIN / "python"), *args, "--horovod"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    summary = json.loads((out / "training_summary.json").read_text())
    return float(summary["steady_slices_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--base-filters", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "set.npz"
        build_set(args.size, data)
        single = run(1, data, Path(tmp) / "one", args.size, args.steps, args.base_filters)
        double = run(2, data, Path(tmp) / "two", args.size, args.steps, args.base_filters)
    print(f"input {args.size}px, base filters {args.base_filters}, batch 8 per rank, {args.steps} steps x 2 epochs")
    print(f"single process : {single:.2f} slices/s")
    print(f"2 Horovod ranks: {double:.2f} slices/s (Gloo, same 2 cores)")
    print(f"ratio 2 ranks / 1 process: {double / single:.2f}x")


if __name__ == "__main__":
    main()
