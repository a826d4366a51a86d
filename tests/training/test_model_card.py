"""The card's Reproduce section is read from each training stage's saved config, not written by hand."""

from __future__ import annotations

from training.model_card import reproduce_commands


def _stage(out: str, data: str, learning_rate: float, initial_weights: str | None, seconds: float) -> dict:
    config = {
        "data": data,
        "out": out,
        "epochs": 27,
        "steps_per_epoch": 110,
        "batch_size": 16,
        "learning_rate": learning_rate,
        "initial_weights": initial_weights,
    }
    return {"config": config, "seconds": seconds}


def test_a_self_training_stage_is_reproduced_with_its_teacher_and_the_previous_stages_weights() -> None:
    stages = [
        _stage("build/model-0.3", "build/training-set-160.npz", 0.001, None, 600.0),
        _stage("build/model-st1", "build/training-set-st1.npz", 3.125e-05, "build/model-0.3/model.h5", 1200.0),
    ]
    text = reproduce_commands(stages, "0.3.0", teachers=["build/teacher.onnx"])
    lines = text.splitlines()
    teacher = lines.index(
        ".venv-train/bin/python -m training.training_set --teacher build/teacher.onnx --out build/training-set-st1.npz"
    )
    first = next(i for i, line in enumerate(lines) if "--out build/model-0.3 " in line)
    second = next(i for i, line in enumerate(lines) if "--out build/model-st1 " in line)
    assert first < teacher < second  # the set is built after the teacher's stage, before its own
    assert "--epochs 27 --steps-per-epoch 110 --batch-size 16 --learning-rate 3.125e-05" in lines[second + 1]
    assert lines[second + 1].endswith("--initial-weights build/model-0.3/model.h5  # 20.0 min on 2 CPU cores")
    assert "--initial-weights" not in lines[first + 1] and lines[first + 1].endswith("# 10.0 min on 2 CPU cores")
    # The export takes the last stage's best epoch, and the card reads every stage's summary.
    assert ".venv-train/bin/python -m model_export.export --keras build/model-st1/model.h5 \\" in lines
    assert "--version 0.3.0" in text
    assert "--summary build/model-0.3/training_summary.json --summary build/model-st1/training_summary.json" in text


def test_a_single_stage_on_the_default_set_builds_no_teacher_set() -> None:
    text = reproduce_commands([_stage("build/model", "build/training-set-160.npz", 0.001, None, 60.0)], "0.3.0")
    assert "--teacher" not in text
    assert text.count("-m training.train ") == 1
