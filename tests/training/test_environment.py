"""The training/export environment: the stack that trains, distributes and exports works together,
and preprocessing is bit-identical to the runtime environment's (no train/serve skew)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np

from tests.conftest import REPO, SAMPLE

PREPROCESS_DIGEST = """
import hashlib, sys
import numpy as np
from ichseg.preprocess import InputSpec, prepare_batch, restore_probabilities
from ichseg.readers import read_scan
scan = read_scan(sys.argv[1])
b = prepare_batch(scan.slices[10:14], InputSpec())
x = b.inputs
y = restore_probabilities(x, b.placements)
print(hashlib.sha256(x.tobytes()).hexdigest(), hashlib.sha256(y.tobytes()).hexdigest())
"""


def _digest_here(path: Path) -> list[str]:
    from ichseg.preprocess import InputSpec, prepare_batch, restore_probabilities
    from ichseg.readers import read_scan

    scan = read_scan(path)
    batch = prepare_batch(scan.slices[10:14], InputSpec())
    x = batch.inputs
    y = restore_probabilities(x, batch.placements)
    return [hashlib.sha256(x.tobytes()).hexdigest(), hashlib.sha256(y.tobytes()).hexdigest()]


def test_preprocessing_matches_runtime_environment_bit_for_bit() -> None:
    runtime_python = REPO / ".venv" / "bin" / "python"
    assert runtime_python.exists(), "make test builds .venv before the training tests run"
    out = subprocess.run(
        [str(runtime_python), "-c", PREPROCESS_DIGEST, str(SAMPLE / "brain.mp4")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    assert out == _digest_here(SAMPLE / "brain.mp4")


def test_tensorflow_is_keras_2_and_horovod_is_built_with_it() -> None:
    import horovod.tensorflow as hvd
    import tensorflow as tf

    assert tf.__version__.startswith("2.15.")
    import keras

    assert keras.__version__.startswith("2.")  # Horovod breaks on Keras 3
    hvd.init()
    assert hvd.size() == 1 and hvd.rank() == 0
    assert hvd.gloo_built() and not hvd.mpi_built()
    total = hvd.allreduce(tf.constant([1.0, 2.0]), op=hvd.Sum)
    assert np.allclose(total.numpy(), [1.0, 2.0])


def test_keras_to_onnx_round_trip() -> None:
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    inputs = tf.keras.Input((16, 16, 1), name="slices")
    outputs = tf.keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(inputs)
    model = tf.keras.Model(inputs, outputs)
    proto, _ = tf2onnx.convert.from_keras(
        model, input_signature=[tf.TensorSpec((None, 16, 16, 1), tf.float32)], opset=17
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 16, 16, 1), dtype=np.float32)
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.max(np.abs(onnx_out - model(x).numpy())) < 1e-5


def test_sagemaker_sdk_v2_builds_offline() -> None:
    import sagemaker
    from sagemaker.tensorflow import TensorFlow

    assert sagemaker.__version__.startswith("2.")
    assert TensorFlow.__name__ == "TensorFlow"
