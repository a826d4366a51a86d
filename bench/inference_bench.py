"""Inference speed on this CPU: ONNX Runtime vs TensorFlow, the FLOP ceiling, and the optimised path.

    .venv-train/bin/python bench/inference_bench.py   # the shipped model and its Keras weights

Runs on a fresh clone: the shipped ONNX model and the Keras model it was exported from
(``models/ichseg-unet.keras.h5``) are both committed, and the held-out slices are read from
``../shared/data`` through the serving preprocessing. Prints, from one run:
- frames/s at batch 1, 8, 16 for ONNX Runtime and for TensorFlow (a traced ``tf.function`` call)
  on the same weights, and their ratio (target: ORT >= 1.2x TF);
- GFLOP per frame and achieved GFLOP/s against this machine's measured float32 matrix-multiply
  ceiling (numpy SGEMM);
- the whole in-process path a user runs (``OnnxSegmenter.predict``: preprocessing with 2.5-D
  context and the intracranial region, ONNX Runtime, restoring to the input size) in frames/s on
  the committed 32-frame sample (target: >= 20 frames/s on 2 cores), as the model reads and with
  the mirrored second reading;
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


def _ct_ich_inputs(split: str, limit: int) -> np.ndarray:
    """Model inputs of the first CT-ICH patients of ``split``, each read as a whole scan (context)."""
    from ichseg.preprocess import model_input_spec, prepare_batch
    from ichseg.readers import read_scan
    from training.datasets import list_ct_ich_slices, pinned_ct_ich_split
    from training.training_set import SHARED_DATA

    root = SHARED_DATA / "ct-ich"
    patients = sorted(pinned_ct_ich_split(list_ct_ich_slices(root))[split])
    batches, total = [], 0
    for patient in patients:
        scan = read_scan(root / "Patients_CT" / patient)
        batches.append(prepare_batch(np.asarray(scan.slices, np.uint8), model_input_spec()).inputs)
        total += len(batches[-1])
        if total >= limit:
            break
    return np.concatenate(batches)[:limit]


def held_out_slices(ct_ich: int = 78) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-space inputs of held-out slices: CT-ICH test patients and every MBH-Seg test slice.

    Returns (inputs, is_real_mask row flags, real masks for those rows)."""
    from ichseg.preprocess import model_input_spec, place_mask, prepare_batch
    from ichseg.windowing import CT_ICH_BRAIN, apply_window
    from training.datasets import load_mbhseg, split_by_patient
    from training.training_set import (
        MBH_FRACTIONS,
        SHARED_DATA,
        SPLIT_SEED,
        mbh_to_ct_ich_orientation,
    )

    spec = model_input_spec()
    items = load_mbhseg(SHARED_DATA / "mbhseg25-mini", outside_air_hu=-1000.0)
    test = split_by_patient([s.case_id for s in items], MBH_FRACTIONS, seed=SPLIT_SEED)["test"]
    mbh_inputs, mbh_masks = [], []
    for item in (s for s in items if s.case_id in test):
        batch = prepare_batch(mbh_to_ct_ich_orientation(apply_window(item.hu, CT_ICH_BRAIN))[None], spec)
        mbh_inputs.append(batch.inputs[0])
        mbh_masks.append(place_mask(mbh_to_ct_ich_orientation(item.mask), batch.placements[0], spec.size) > 0.5)
    inputs = np.concatenate([_ct_ich_inputs("test", ct_ich), np.stack(mbh_inputs)])
    real = np.r_[np.zeros(ct_ich, bool), np.ones(len(mbh_inputs), bool)]
    return inputs, real, np.stack(mbh_masks)


def calibration_inputs(count: int = 64) -> np.ndarray:
    """Slices of training patients only: quantisation never sees a held-out slice."""
    inputs = _ct_ich_inputs("train", 400)
    return inputs[np.random.default_rng(0).choice(len(inputs), count, replace=False)]


def pipeline_frames_per_second(onnx_path: Path, seconds: float) -> tuple[float, float, int]:
    """``OnnxSegmenter.predict`` (preprocess + ORT + restore) on the committed sample scan, as the
    model reads, and with the mirrored second reading (``test_time_flip``) on."""
    import shutil

    from ichseg.inference import OnnxSegmenter
    from ichseg.model_file import read_metadata, stamp_metadata
    from ichseg.readers import read_scan

    slices = np.asarray(read_scan(REPO / "samples" / "ct-ich-051" / "brain.mp4").slices, np.uint8)
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for flip in (False, True):
            copy = Path(tmp) / f"flip-{flip}.onnx"
            shutil.copyfile(onnx_path, copy)
            stamp_metadata(copy, read_metadata(onnx_path).with_updates(test_time_flip=flip))
            segmenter = OnnxSegmenter(copy, providers=("CPUExecutionProvider",))
            rates.append(frames_per_second(segmenter.predict, slices, seconds))
    return rates[0], rates[1], len(slices)


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
    from training.metrics import dice as dice_metric

    return dice_metric(a, b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras", type=Path, default=REPO / "models" / "ichseg-unet.keras.h5")
    parser.add_argument("--onnx", type=Path, default=REPO / "models" / "ichseg-unet.onnx")
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()

    from ichseg.model_file import read_metadata

    # ONNX Runtime is measured before TensorFlow is imported: TensorFlow's idle thread pools would
    # otherwise compete with it, and the endpoint never has TensorFlow loaded.
    meta = read_metadata(args.onnx)
    size, channels, gflop = meta.input.size, meta.input.channels, meta.gflop_per_frame
    session = ort_session(args.onnx)
    rng = np.random.default_rng(0)
    batches = {n: rng.random((n, size, size, channels), dtype=np.float32) for n in (1, 8, 16)}
    print(
        f"model: {args.onnx.name} {meta.version}, input {size}px x {channels}, {meta.parameters:,} parameters, "
        f"{gflop:.2f} GFLOP/frame"
    )
    ceiling = sgemm_ceiling()
    print(f"SGEMM ceiling (numpy, float32, 2048^3): {ceiling:.1f} GFLOP/s")
    ort_fps = {
        n: frames_per_second(lambda b: session.run(None, {"slices": b}), batch, args.seconds)
        for n, batch in batches.items()
    }
    pipeline_fps, mirrored_fps, frames = pipeline_frames_per_second(args.onnx, args.seconds)

    inputs, real, real_masks = held_out_slices()
    with tempfile.TemporaryDirectory() as tmp:
        int8_path = Path(tmp) / "int8.onnx"
        quantize_int8(args.onnx, int8_path, calibration_inputs())
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

    import tensorflow as tf

    from model_export.export import load_keras_model

    model = load_keras_model(args.keras)
    traced = tf.function(lambda x: model(x, training=False))
    tf_fps = {n: frames_per_second(lambda b: traced(b), batch, args.seconds) for n, batch in batches.items()}

    print("batch | ORT frames/s | TF frames/s | ORT/TF | ORT GFLOP/s (% of ceiling)")
    for n in batches:
        achieved = ort_fps[n] * gflop
        print(
            f"{n:5d} | {ort_fps[n]:12.2f} | {tf_fps[n]:11.2f} | {ort_fps[n] / tf_fps[n]:6.2f} | "
            f"{achieved:.1f} ({100 * achieved / ceiling:.0f} %)"
        )
    print(f"whole in-process path (preprocess + ORT + restore), {frames}-frame sample: {pipeline_fps:.1f} frames/s")
    print(
        f"the same with the mirrored second reading (test_time_flip): {mirrored_fps:.1f} frames/s "
        f"({mirrored_fps / pipeline_fps:.2f}x)"
    )
    fp32_masks, int8_masks = fp32_out[..., 0] > 0.5, int8_out[..., 0] > 0.5
    agreement = np.mean([dice(a, b) for a, b in zip(fp32_masks, int8_masks, strict=True)])
    fp32_dice = np.mean([dice(p, t) for p, t in zip(fp32_masks[real], real_masks, strict=True)])
    int8_dice = np.mean([dice(p, t) for p, t in zip(int8_masks[real], real_masks, strict=True)])
    print(
        f"optimised CPU path (int8 QDQ, per-channel) at batch 16: {int8_fps:.2f} frames/s vs fp32 {fp32_fps:.2f} "
        f"-> {int8_fps / fp32_fps:.2f}x"
    )
    print(f"mask agreement int8 vs fp32 on {len(inputs)} held-out slices: Dice {agreement:.4f}")
    print(
        f"Dice on {int(real.sum())} held-out real masks: fp32 {fp32_dice:.4f}, int8 {int8_dice:.4f}, "
        f"loss {fp32_dice - int8_dice:+.4f}"
    )


if __name__ == "__main__":
    main()
