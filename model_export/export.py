"""Export a trained Keras model to ONNX with its metadata.

    .venv-train/bin/python -m model_export.export --keras build/model/model.h5 --out models/ichseg-unet.onnx

The ONNX graph has a dynamic batch axis; the model card and preprocessing parameters travel in
the ONNX metadata (``ichseg`` key, :class:`ichseg.model_metadata.ModelMetadata`). Group
normalisations are fused into ``InstanceNormalization`` (:mod:`model_export.fuse_group_norm`), and
the exporter checks the final graph against Keras. With ``--keras-out`` the Keras model is saved
beside the ONNX file without optimizer state, so that benchmarks on a fresh clone compare ONNX
Runtime and TensorFlow on the shipped weights without training first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx

from ichseg.model_file import set_metadata
from ichseg.model_metadata import INPUT_NAME, SUBTYPE_OUTPUT, SUBTYPES, ModelMetadata
from ichseg.preprocess import InputSpec, model_input_spec
from model_export.fuse_group_norm import GroupNormLayer, fuse_group_norms

OPSET = 17


def load_keras_model(path: str | Path) -> tf.keras.Model:
    """Load a saved training model for inference (custom losses are not needed to run it)."""
    return tf.keras.models.load_model(str(path), compile=False)


def group_norm_layers(model: tf.keras.Model) -> list[GroupNormLayer]:
    """Every Keras group normalisation with its weights, for the ONNX rewrite."""
    return [
        GroupNormLayer(layer.name, int(layer.groups), float(layer.epsilon), layer.gamma.numpy(), layer.beta.numpy())
        for layer in model.layers
        if isinstance(layer, tf.keras.layers.GroupNormalization)
    ]


def export_onnx(model: tf.keras.Model, destination: str | Path, metadata: ModelMetadata) -> onnx.ModelProto:
    """Convert with tf2onnx (dynamic batch), fuse group norms, attach metadata, save, return the proto."""
    size = model.input_shape[1]
    channels = model.input_shape[-1]
    signature = [tf.TensorSpec((None, size, size, channels), tf.float32, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET)
    proto = fuse_group_norms(proto, group_norm_layers(model))
    set_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(destination))
    return proto


def export_fp16(fp32_path: str | Path, destination: str | Path) -> onnx.ModelProto:
    """A float16 copy for GPU endpoints (Tensor Cores); inputs/outputs stay float32 so the wire
    contract and preprocessing are unchanged. Metadata is carried over with the version tagged."""
    from onnxconverter_common import float16

    from ichseg.model_file import read_metadata

    proto = onnx.load(str(fp32_path))
    half = float16.convert_float_to_float16(proto, keep_io_types=True)
    metadata = read_metadata(fp32_path)
    set_metadata(half, metadata.with_updates(version=f"{metadata.version}+fp16"))
    onnx.save(half, str(destination))
    return half


def default_metadata(model: tf.keras.Model, name: str, version: str, summary: dict | None = None) -> ModelMetadata:
    from training.model import count_flops_per_frame

    summary = summary or {}
    config = summary.get("config", {})
    size, channels = int(model.input_shape[1]), int(model.input_shape[-1])
    # Three channels mean the 0.2 training set: 2.5-D context and the intracranial region.
    spec = model_input_spec(size) if channels == 3 else InputSpec(size=size, channels=channels)
    return ModelMetadata(
        name=name,
        version=version,
        input=spec,
        subtypes=SUBTYPES if SUBTYPE_OUTPUT in model.output_names else (),
        architecture=str(config.get("variant", "unet")),
        parameters=int(model.count_params()),
        gflop_per_frame=round(count_flops_per_frame(model) / 1e9, 3),
        training_data=(
            "CT-ICH (PhysioNet, CC BY 4.0) slice and subtype labels, 18 radiologist masks + weak masks; "
            "MBH-Seg mini masks; synthetic head CT"
        ),
    )


def keras_onnx_max_difference(model: tf.keras.Model, proto: onnx.ModelProto, inputs: np.ndarray) -> dict[str, float]:
    """Largest absolute difference per output between Keras and ONNX Runtime on ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: inputs}), strict=True))
    keras_out = model(inputs, training=False)
    return {name: float(np.max(np.abs(onnx_out[name] - keras_out[name].numpy()))) for name in keras_out}


def main() -> None:
    parser = argparse.ArgumentParser(description="Export an ichseg Keras model to ONNX with metadata.")
    parser.add_argument("--keras", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="ichseg-unet")
    parser.add_argument("--version", default="0.1.0")
    parser.add_argument("--summary", help="training_summary.json of the run")
    parser.add_argument("--fp16-out", help="also write a float16 variant here (GPU endpoints)")
    parser.add_argument("--keras-out", help="also save the Keras model here, without optimizer state (benchmarks)")
    args = parser.parse_args()
    model = load_keras_model(args.keras)
    summary = json.loads(Path(args.summary).read_text()) if args.summary else None
    metadata = default_metadata(model, args.name, args.version, summary)
    proto = export_onnx(model, args.out, metadata)
    sample = np.random.default_rng(0).random((2, *model.input_shape[1:]), dtype=np.float32)
    result: dict[str, object] = {
        "onnx": args.out,
        "max_abs_difference": keras_onnx_max_difference(model, proto, sample),
    }
    if args.keras_out:
        model.save(args.keras_out, include_optimizer=False)
        result["keras"] = args.keras_out
    if args.fp16_out:
        export_fp16(args.out, args.fp16_out)
        result["fp16"] = args.fp16_out
    print(json.dumps(result))


if __name__ == "__main__":
    main()
