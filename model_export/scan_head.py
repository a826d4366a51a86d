"""Export the scan head (:mod:`ichseg.scan_context`) for one segmentation model: fit it
(:mod:`training.scan_head`), choose what it adopts and its threshold on out-of-fold validation
answers, export it with tf2onnx, check ONNX Runtime against Keras, stamp its metadata.

    python -m model_export.scan_head --model models/ichseg-unet.onnx \
        --split-file training/splits/ct-ich-0.2.json --features build/scan-features-0.2.0.npz \
        --out models/ichseg-scan-head.onnx --summary models/scan-head-eval.json [--evaluate-test]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.inference import OnnxSegmenter
from ichseg.model_file import set_entries
from ichseg.model_metadata import ModelMetadata
from ichseg.scan_context import FEATURES, INPUT_NAME, METADATA_KEY, ScanHead, ScanHeadMetadata
from model_export.export import OPSET
from training.datasets import CT_ICH_SPLIT_FILE
from training.scan_head import (
    OUTPUTS,
    SEED,
    HeadAnswer,
    PatientScan,
    adopted_outputs,
    choose_threshold,
    collect,
    fit_head,
    fitting_scans,
    load_scans,
    max_rule,
    out_of_fold,
    save_scans,
    scan_metrics,
)
from training.training_set import SHARED_DATA

log = logging.getLogger("ichseg.scan_head")
PARITY_TOLERANCE = 1e-4


def export_head(model: Any, destination: Path, metadata: ScanHeadMetadata) -> float:
    """tf2onnx export with ``metadata`` stamped; returns the largest Keras/ONNX Runtime difference
    over random scans of 1 to 80 slices (raises above 1e-4)."""
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec((None, None, len(FEATURES)), tf.float32, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    set_entries(proto, {METADATA_KEY: metadata.to_json(), "model_version": metadata.version})
    proto.doc_string = (
        f"ichseg scan head {metadata.version} for {metadata.segmentation_model} {metadata.segmentation_version}"
    )
    onnx.checker.check_model(proto)
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(destination))
    session = ort.InferenceSession(str(destination), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    worst = 0.0
    for n in (1, 2, 7, 33, 80):
        x = rng.normal(0, 2, (1, n, len(FEATURES))).astype(np.float32)
        keras_out = [np.asarray(v) for v in model(x, training=False)]
        names = [o.name for o in session.get_outputs()]
        onnx_out = dict(zip(names, session.run(None, {INPUT_NAME: x}), strict=True))
        for name, value in zip(OUTPUTS, keras_out, strict=True):
            worst = max(worst, float(np.abs(onnx_out[name].reshape(value.shape) - value).max()))
    if worst > PARITY_TOLERANCE:
        raise RuntimeError(f"the exported scan head differs from Keras by {worst:.2e}")
    return worst


def train_and_export(scans: list[PatientScan], out: Path, segmentation: ModelMetadata, version: str) -> dict[str, Any]:
    """Out-of-fold validation figures, the threshold chosen on them, the final head exported to ``out``."""
    val = [s for s in scans if s.split == "val"]
    model_threshold = segmentation.finding_threshold
    import training.scan_head as recipe  # read at call time: tests shorten the recipe

    oof = out_of_fold(scans, recipe.FOLDS, recipe.EPOCHS)
    threshold = choose_threshold(val, oof)
    summary: dict[str, Any] = {
        "validation_out_of_fold": scan_metrics(val, oof, threshold),
        "validation_most_confident_slice": scan_metrics(val, max_rule(val), model_threshold),
        "scan_threshold": threshold,
    }
    log.info("out of fold on validation: %s", summary)
    adopted = adopted_outputs(summary["validation_out_of_fold"], summary["validation_most_confident_slice"])
    summary["adopted"] = [output.value for output in adopted]
    fitted = fitting_scans(scans)
    model = fit_head(fitted, recipe.EPOCHS)
    metadata = ScanHeadMetadata(
        version=version,
        segmentation_model=segmentation.name,
        segmentation_version=segmentation.version,
        scan_threshold=threshold,
        adopted=adopted,
        parameters=int(model.count_params()),
        training=(
            f"CT-ICH validation patients ({len(fitted)}) of the pinned split, answers of "
            f"{segmentation.name} {segmentation.version}; threshold and adopted outputs from "
            f"{recipe.FOLDS}-fold out-of-fold validation answers"
        ),
        metrics=summary,
    )
    summary["parity_max_difference"] = export_head(model, out, metadata)
    summary["parameters"] = metadata.parameters
    return summary


def evaluate_test(scans: list[PatientScan], head_path: Path, segmentation: ModelMetadata) -> dict[str, Any]:
    """The exported head on the test patients, beside the most-confident-slice rule (run once, at the end)."""
    head = ScanHead(head_path)
    test = [s for s in scans if s.split == "test"]
    answers = []
    for s in test:
        context = head(s.features)
        answers.append(
            HeadAnswer(s.patient, context.scan_probability, context.scan_subtypes, context.slice_probabilities)
        )
    threshold = head.metadata.scan_threshold
    return {
        "test_scan_head": scan_metrics(test, answers, threshold),
        "test_most_confident_slice": scan_metrics(test, max_rule(test), segmentation.finding_threshold),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Train and export ichseg's scan head for one segmentation model.")
    parser.add_argument("--model", type=Path, required=True, help="the segmentation model whose answers it reads")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--split-file", type=Path, default=CT_ICH_SPLIT_FILE)
    parser.add_argument("--features", type=Path, required=True, help="cache of the model's answers (.npz)")
    parser.add_argument("--out", type=Path, required=True, help="the scan head's .onnx")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--summary", type=Path, default=None, help="write the figures here (.json)")
    parser.add_argument(
        "--evaluate-test", action="store_true", help="also score the exported head on test (at the end)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if not args.features.is_file():
        save_scans(collect(args.model, args.data, args.split_file), args.features)
    scans = load_scans(args.features)
    meta = OnnxSegmenter(args.model).metadata
    summary = train_and_export(scans, args.out, meta, args.version)
    if args.evaluate_test:
        summary.update(evaluate_test(scans, args.out, meta))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.summary is not None:
        args.summary.write_text(text + "\n")


if __name__ == "__main__":
    main()
