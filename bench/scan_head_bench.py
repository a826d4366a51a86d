"""What reading a scan with the scan head costs in the assemble stage (target: <= 50 ms for 60 slices).

    .venv/bin/python bench/scan_head_bench.py            # the shipped head
    .venv/bin/python bench/scan_head_bench.py --slices 300

Prints the median over ``--runs`` of: the head itself (one ONNX Runtime call, one CPU thread),
the features from the slices' answers (:func:`ichseg.scan_context.slice_features`), and what the
segment stage adds per batch to measure the maps (:func:`ichseg.scan_context.map_features` on
512x512 probability maps), with the ratio to the target.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ichseg.model_metadata import SUBTYPES
from ichseg.scan_context import SCAN_HEAD, ScanHead, map_features, slice_features

TARGET_MS = 50.0


def median_ms(work: Callable[[], object], runs: int) -> float:
    work()  # warm: the first run allocates
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", type=Path, default=SCAN_HEAD)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.slices
    maps = (rng.random((n, 512, 512)) ** 8 * 255).astype(np.uint8)
    probabilities = rng.random(n).astype(np.float32)
    subtypes = rng.random((n, len(SUBTYPES))).astype(np.float32)
    loading = time.perf_counter()
    head = ScanHead(args.head)
    load_ms = (time.perf_counter() - loading) * 1000
    outlined, peaks = map_features(maps, 0.5)
    features = slice_features(probabilities, subtypes, outlined, peaks)
    head_ms = median_ms(lambda: head(features), args.runs)
    features_ms = median_ms(lambda: slice_features(probabilities, subtypes, outlined, peaks), args.runs)
    maps_ms = median_ms(lambda: map_features(maps, 0.5), max(3, args.runs // 20))
    total = head_ms + features_ms
    print(f"scan head {head.metadata.version} ({head.metadata.parameters} weights), {n} slices")
    print(f"  load (once per process):       {load_ms:8.2f} ms")
    print(f"  head (ONNX Runtime, 1 thread): {head_ms:8.3f} ms")
    print(f"  features:                      {features_ms:8.3f} ms")
    print(
        f"  head + features:               {total:8.3f} ms  = {total / TARGET_MS:.3f} x the {TARGET_MS:.0f} ms target"
    )
    print(f"  map features, {n} 512x512 maps: {maps_ms:8.2f} ms  ({maps_ms / n:.3f} ms per slice, in segment)")


if __name__ == "__main__":
    main()
