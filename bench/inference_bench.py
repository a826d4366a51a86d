"""Inference speed on this CPU: ONNX Runtime vs TensorFlow, the FLOP ceiling, and the optimised path.

    .venv-train/bin/python bench/inference_bench.py --keras build/model/model.h5 --onnx models/ichseg-unet.onnx

Prints, from one run:
- frames/s at batch 1, 8, 16 for ONNX Runtime and for TensorFlow (a traced ``tf.function`` call)
  on the same weights, and their ratio (target: ORT >= 1.2x TF);
- GFLOP per frame and achieved GFLOP/s against this machine's measured float32 matrix-multiply
  ceiling (numpy SGEMM);
- the CPU-optimised path (int8 static quantisation, calibrated on training slices) against plain
  fp32, with its Dice cost on held-out real slices (target: >= 2x for a Dice loss <= 0.01).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def frames_per_second(run, batch: np.ndarray, seconds: float = 6.0) -> float:  # type: ignore[no-untyped-def]
    run(batch)  # warm-up (graph tracing, allocations)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(batch)
        count += len(batch)
    return count / (time.perf_counter() - started)


def sgemm_ceiling(size: int = 2048, repeats: int = 5) -> float:
    """Best observed float32 matrix-multiply GFLOP/s with numpy's BLAS on all cores."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    a @ b
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def ort_session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def held_out_slices(size: int, ct_ich: int = 78) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-space inputs of held-out slices: CT-ICH test patients and every MBH-Seg test slice.

    Returns (inputs, is_real_mask row flags, real masks for those rows)."""
    from training.training_set import load_training_set

    data = load_training_set(REPO / "build" / f"training-set-{size}.npz")
    test = data.split == "test"
    rows = np.concatenate(
        [np.flatnonzero(test & (data.source == "ct-ich"))[:ct_ich], np.flatnonzero(test & (data.source == "mbh"))]
    )
    inputs = data.images[rows].astype(np.float32)[..., None] / 255.0
    real = data.source[rows] == "mbh"
    return inputs, real, data.masks[rows][real] > 127


def calibration_inputs(size: int, count: int = 64) -> np.ndarray:
    from training.training_set import load_training_set

    data = load_training_set(REPO / "build" / f"training-set-{size}.npz")
    rows = np.flatnonzero((data.split == "train") & (data.source == "ct-ich"))
    rows = np.random.default_rng(0).choice(rows, count, replace=False)
    return data.images[rows].astype(np.float32)[..., None] / 255.0


def quantize_int8(fp32: Path, destination: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"slices": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.batches, None)

    prepared = destination.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(destination),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    from ichseg.metrics import dice as dice_metric

    return dice_metric(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras", type=Path, required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()

    import tensorflow as tf

    from model_export.export import load_keras_model
    from training.model import count_flops_per_frame

    model = load_keras_model(args.keras)
    size = int(model.input_shape[1])
    gflop = count_flops_per_frame(model) / 1e9
    traced = tf.function(lambda x: model(x, training=False))
    session = ort_session(args.onnx)
    rng = np.random.default_rng(0)
    print(f"model: {args.onnx.name}, input {size}px, {model.count_params():,} parameters, {gflop:.2f} GFLOP/frame")
    ceiling = sgemm_ceiling()
    print(f"SGEMM ceiling (numpy, float32, 2048^3): {ceiling:.1f} GFLOP/s")
    print("batch | ORT frames/s | TF frames/s | ORT/TF | ORT GFLOP/s (% of ceiling)")
    for batch_size in (1, 8, 16):
        batch = rng.random((batch_size, size, size, 1), dtype=np.float32)
        ort_fps = frames_per_second(lambda b: session.run(None, {"slices": b}), batch, args.seconds)
        tf_fps = frames_per_second(lambda b: traced(b), batch, args.seconds)
        achieved = ort_fps * gflop
        print(
            f"{batch_size:5d} | {ort_fps:12.2f} | {tf_fps:11.2f} | {ort_fps / tf_fps:6.2f} | "
            f"{achieved:.1f} ({100 * achieved / ceiling:.0f} %)"
        )

    inputs, real, real_masks = held_out_slices(size)
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "int8.onnx"
        quantize_int8(args.onnx, int8_path, calibration_inputs(size))
        int8 = ort_session(int8_path)
        batch = inputs[:16]
        fp32_fps = frames_per_second(lambda b: session.run(None, {"slices": b}), batch, args.seconds)
        int8_fps = frames_per_second(lambda b: int8.run(None, {"slices": b}), batch, args.seconds)
        fp32_out = np.concatenate(
            [session.run(["mask"], {"slices": inputs[i : i + 16]})[0] for i in range(0, len(inputs), 16)]
        )
        int8_out = np.concatenate(
            [int8.run(["mask"], {"slices": inputs[i : i + 16]})[0] for i in range(0, len(inputs), 16)]
        )
    fp32_masks, int8_masks = fp32_out[..., 0] > 0.5, int8_out[..., 0] > 0.5
    agreement = np.mean([dice(a, b) for a, b in zip(fp32_masks, int8_masks, strict=True)])
    fp32_dice = np.mean([dice(p, t) for p, t in zip(fp32_masks[real], real_masks, strict=True)])
    int8_dice = np.mean([dice(p, t) for p, t in zip(int8_masks[real], real_masks, strict=True)])
    real_count = int(real.sum())
    print(
        f"optimised CPU path (int8 QDQ, per-channel) at batch 16: {int8_fps:.2f} frames/s vs fp32 {fp32_fps:.2f} "
        f"-> {int8_fps / fp32_fps:.2f}x"
    )
    print(f"mask agreement int8 vs fp32 on {len(inputs)} held-out slices: Dice {agreement:.4f}")
    print(
        f"Dice on {real_count} held-out real masks: fp32 {fp32_dice:.4f}, int8 {int8_dice:.4f}, "
        f"loss {fp32_dice - int8_dice:+.4f}"
    )


if __name__ == "__main__":
    main()
