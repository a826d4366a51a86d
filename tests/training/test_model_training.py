"""Models, losses, single-process and Horovod training, ONNX export parity."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from training.losses import dice_metric, mask_loss, weighted_soft_dice_loss
from training.model import MASK_OUTPUT, SLICE_OUTPUT, SUBTYPE_OUTPUT, build_model, count_flops_per_frame
from training.train import Distribution, TrainConfig, make_dataset, train, training_rows
from training.training_set import load_training_set

VENV_BIN = Path(sys.executable).parent


@pytest.mark.parametrize("variant", ["unet", "resunet", "attention"])
def test_variants_build_with_mask_slice_and_subtype_outputs(variant: str) -> None:
    model = build_model(input_size=64, base_filters=4, depth=3, variant=variant, channels=3)
    out = model(np.zeros((2, 64, 64, 3), np.float32), training=False)
    assert out[MASK_OUTPUT].shape == (2, 64, 64, 1) and out[SLICE_OUTPUT].shape == (2, 1)
    assert out[SUBTYPE_OUTPUT].shape == (2, 5)
    assert float(tf.reduce_min(out[MASK_OUTPUT])) >= 0.0 and float(tf.reduce_max(out[MASK_OUTPUT])) <= 1.0
    assert any(layer.name.endswith("_gate") for layer in model.layers) == (variant == "attention")
    assert any(layer.name.endswith("_add") for layer in model.layers) == (variant in ("resunet", "attention"))


def test_model_size_and_flops_are_what_the_card_says() -> None:
    model = build_model(input_size=192, base_filters=16, depth=4)
    assert 1.5e6 < model.count_params() < 2.5e6
    assert 2.5e9 < count_flops_per_frame(model) < 4.5e9


def test_bad_model_arguments() -> None:
    with pytest.raises(ValueError, match="divisible"):
        build_model(input_size=100, depth=4)
    with pytest.raises(ValueError, match="unknown variant"):
        build_model(variant="transformer")  # type: ignore[arg-type]


def _packed(target: np.ndarray, weight: np.ndarray) -> tf.Tensor:
    return tf.constant(np.stack([target, weight], axis=-1)[None].astype(np.float32))


def test_dice_loss_zero_for_perfect_prediction_and_ignores_untrusted_pixels() -> None:
    target = np.zeros((8, 8), np.float32)
    target[2:5, 2:5] = 1
    weight = np.ones_like(target)
    perfect = tf.constant(target[None, ..., None])
    assert float(weighted_soft_dice_loss(_packed(target, weight), perfect)) == pytest.approx(0.0, abs=1e-4)
    wrong = perfect.numpy().copy()
    wrong[0, 6, 6, 0] = 1.0  # a false positive...
    assert float(weighted_soft_dice_loss(_packed(target, weight), tf.constant(wrong))) > 0.01
    weight[6, 6] = 0.0  # ...on a pixel the weak label does not vouch for costs nothing
    assert float(mask_loss(_packed(target, weight), tf.constant(wrong))) == pytest.approx(
        float(mask_loss(_packed(target, weight), perfect)), abs=1e-4
    )
    assert float(dice_metric(_packed(target, weight), perfect)) == pytest.approx(1.0)


def test_oversampling_and_rank_sharding(tiny_training_set: Path) -> None:
    data = load_training_set(tiny_training_set)
    rows = np.flatnonzero(data.split == "train")
    data.real_mask[rows[:3]] = True  # as if three rows carried a radiologist's mask
    config = TrainConfig(data="", out="", positive_oversampling=3, real_mask_oversampling=4)
    expanded = training_rows(data, config, np.random.default_rng(0))
    positives = int((data.labels[rows] > 0.5).sum())
    real_copies = sum(3 if data.labels[r] > 0.5 else 1 for r in rows[:3])
    assert len(expanded) == len(rows) + 2 * positives + 3 * real_copies
    batches = [next(iter(make_dataset(data, rows, 4, True, Distribution(rank, 2), seed=1)))[0].shape for rank in (0, 1)]
    assert batches == [(4, 64, 64, 1)] * 2


def test_single_process_training_writes_model_and_summary(tiny_training_set: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        data=str(tiny_training_set),
        out=str(tmp_path / "model"),
        base_filters=4,
        depth=3,
        epochs=2,
        batch_size=4,
        steps_per_epoch=3,
    )
    summary = train(config)
    assert (tmp_path / "model" / "model.h5").exists()
    written = json.loads((tmp_path / "model" / "training_summary.json").read_text())
    assert written["ranks"] == 1 and written["input_size"] == 64
    assert len(written["history"]["loss"]) == 2
    assert summary["slices_per_second"] > 0


def test_two_horovod_ranks_end_with_identical_weights(tiny_training_set: Path, tmp_path: Path) -> None:
    """`horovodrun -np 2 --gloo`: broadcast start, averaged gradients and BN statistics, chief-only files."""
    out = tmp_path / "hvd"
    command = [
        str(VENV_BIN / "horovodrun"),
        "-np",
        "2",
        "--gloo",
        str(VENV_BIN / "python"),
        "-m",
        "training.train",
        "--horovod",
        "--data",
        str(tiny_training_set),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "4",
        "--base-filters",
        "4",
        "--depth",
        "3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d)/2 weights sha256 ([0-9a-f]{64})", result.stdout))
    assert set(digests) == {"0", "1"}
    assert digests["0"] == digests["1"]
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["ranks"] == 2
    assert summary["config"]["learning_rate"] == pytest.approx(1e-3)  # the scaled rate is applied inside
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "history.csv",
        "model-last.h5",
        "model.h5",
        "training_summary.json",
    ]


def test_an_interrupted_run_resumes_from_its_last_epoch(tiny_training_set: Path, tmp_path: Path) -> None:
    common = dict(data=str(tiny_training_set), out=str(tmp_path / "run"), base_filters=4, depth=3, batch_size=4)
    train(TrainConfig(**common, epochs=2, steps_per_epoch=2))  # type: ignore[arg-type]
    state = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and np.isfinite(state["best"])
    # The same command with --resume and a longer schedule trains only the epochs still missing.
    summary = train(TrainConfig(**common, epochs=3, steps_per_epoch=2, resume=True))  # type: ignore[arg-type]
    assert len(summary["history"]["loss"]) == 1 and summary["resumed_after_epoch"] == 2
    assert len(summary["epoch_seconds"]) == 3  # the summary covers the whole run
    assert json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())["epoch"] == 3
    lines = (tmp_path / "run" / "history.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]  # one log across the interruption
    # Its machine lost: the weights-only checkpoint (committed) and the state carry the run on elsewhere.
    state = json.loads((tmp_path / "run" / "checkpoints" / "state.json").read_text())
    assert state["learning_rate"] > 0
    weights = tmp_path / "run" / "checkpoints" / "last.weights.h5"
    moved = {**common, "out": str(tmp_path / "elsewhere")}
    carried = train(
        TrainConfig(**moved, epochs=4, steps_per_epoch=2, resume=True, initial_weights=str(weights), initial_epoch=3)  # type: ignore[arg-type]
    )
    assert len(carried["history"]["loss"]) == 1 and carried["resumed_after_epoch"] == 3
    lines = (tmp_path / "elsewhere" / "history.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["3"]
    # Nothing to resume from is not an error: the run starts afresh.
    fresh = train(TrainConfig(**{**common, "out": str(tmp_path / "new")}, epochs=1, steps_per_epoch=1, resume=True))  # type: ignore[arg-type]
    assert len(fresh["epoch_seconds"]) == 1


def test_exported_group_norms_become_single_instance_norms_with_the_same_outputs(tmp_path: Path) -> None:
    import onnx

    from model_export.export import default_metadata, export_onnx, keras_onnx_max_difference

    model = build_model(input_size=64, base_filters=8, depth=3, channels=3)
    rng = np.random.default_rng(4)
    for layer in model.layers:  # non-trivial affine parameters, so a wrong rewrite would show
        if isinstance(layer, tf.keras.layers.GroupNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0.0, 0.3, layer.beta.shape))
    proto = export_onnx(model, tmp_path / "m.onnx", default_metadata(model, "ichseg-test", "0.2.0"))
    ops = [node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    group_norms = sum(isinstance(layer, tf.keras.layers.GroupNormalization) for layer in model.layers)
    assert ops.count("InstanceNormalization") == group_norms and "Where" not in ops and "ReduceSum" not in ops
    inputs = rng.random((3, 64, 64, 3), dtype=np.float32)
    differences = keras_onnx_max_difference(model, proto, inputs)
    assert max(differences.values()) < 1e-4, differences
    meta = default_metadata(model, "ichseg-test", "0.2.0")
    assert meta.input.channels == 3 and meta.input.intracranial_only and len(meta.subtypes) == 5


def test_onnx_export_matches_keras_and_carries_metadata(tmp_path: Path) -> None:
    import onnxruntime as ort

    from ichseg.model_file import read_metadata, stamp_metadata
    from ichseg.model_metadata import METADATA_KEY, ModelMetadata
    from model_export.export import default_metadata, export_onnx, keras_onnx_max_difference

    model = build_model(input_size=64, base_filters=4, depth=3)
    metadata = default_metadata(model, "ichseg-test", "9.9.9")
    proto = export_onnx(model, tmp_path / "m.onnx", metadata)
    inputs = np.random.default_rng(1).random((3, 64, 64, 1), dtype=np.float32)
    differences = keras_onnx_max_difference(model, proto, inputs)
    assert differences[MASK_OUTPUT] < 1e-4 and differences[SLICE_OUTPUT] < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] in (None, "unk__0") or isinstance(session.get_inputs()[0].shape[0], str)
    stored = ModelMetadata.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    assert stored.input.size == 64 and stored.version == "9.9.9" and stored.parameters == model.count_params()
    stamp_metadata(tmp_path / "m.onnx", stored.with_updates(slice_threshold=0.37, pixel_threshold=0.45))
    assert read_metadata(tmp_path / "m.onnx").slice_threshold == 0.37


def test_fp16_variant_keeps_float32_io_and_close_outputs(tmp_path: Path) -> None:
    import onnxruntime as ort

    from ichseg.model_file import read_metadata
    from model_export.export import default_metadata, export_fp16, export_onnx

    model = build_model(input_size=64, base_filters=4, depth=3)
    export_onnx(model, tmp_path / "m.onnx", default_metadata(model, "ichseg-test", "1.0.0"))
    export_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx")
    assert read_metadata(tmp_path / "m16.onnx").version == "1.0.0+fp16"
    x = np.random.default_rng(2).random((2, 64, 64, 1), dtype=np.float32)
    outputs = []
    for name in ("m.onnx", "m16.onnx"):
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].type == "tensor(float)"
        outputs.append(session.run(["mask"], {"slices": x})[0])
    assert np.max(np.abs(outputs[0] - outputs[1])) < 0.02
