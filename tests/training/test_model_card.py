"""The model card: its Reproduce section read from each stage's saved config, its targets read against test."""

from __future__ import annotations

from training.model_card import (
    one_subtype_limitation,
    reproduce_commands,
    scan_threshold_limitation,
    targets,
    targets_table,
)


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


def _report() -> dict:
    return {
        "detection": {
            "roc_auc": 0.95,
            "scan_sensitivity": 0.6667,
            "scan_specificity": 1.0,
            "scan_roc_auc": 0.88,
            "normal_slices_painted": 0.02,
            "subtype_head_roc_auc": {
                "epidural": {"roc_auc": 0.84, "positive_slices": 45},
                "intraventricular": {"roc_auc": 0.2, "positive_slices": 1},
            },
        },
        "scan_subtypes": {"top_subtype_accuracy": 0.8333},
        "segmentation_ct_ich": {"dice": 0.6, "slices_with_hemorrhage": 4},
        "segmentation_mbh": {"dice": 0.4, "slices_with_hemorrhage": 16},
    }


def test_each_target_says_whether_it_is_met_and_by_how_much_it_is_missed() -> None:
    found = {t.measure: t for t in targets(_report())}
    assert found["slice ROC AUC"].met
    assert not found["scan sensitivity (every bleeding patient found)"].met
    assert not found["scan ROC AUC"].met and found["scan specificity"].met
    # A subtype with one positive slice says nothing: only those with five or more are held to it.
    assert "subtype ROC AUC, epidural" in found and "subtype ROC AUC, intraventricular" not in found
    # Pooled Dice weighs each source by its slices: (0.6 x 4 + 0.4 x 16) / 20.
    assert found["Dice, both sources pooled (per slice)"].value == 0.44
    assert found["normal slices with any painted pixel"].met  # a ceiling: 0.02 <= 0.05
    table = targets_table(_report())
    assert "| scan ROC AUC | >= 0.9 | 0.88 | missed by 0.020 |" in table
    assert "| normal slices with any painted pixel | <= 0.05 | 0.02 | met |" in table


def test_the_card_names_missed_bleeding_test_patients_at_the_scan_threshold() -> None:
    val = {"detection": {"scan_positives": 8, "scan_sensitivity": 1.0}}
    missed = {"detection": {"scan_positives": 6, "scan_sensitivity": 0.6667}}
    assert "found 4 of 6 bleeding test patients" in scan_threshold_limitation(val, missed)
    assert "(8 of them)" in scan_threshold_limitation(val, missed)
    assert scan_threshold_limitation(val, {"detection": {"scan_positives": 6, "scan_sensitivity": 1.0}}) == ""


def test_the_card_says_when_one_subtype_is_named_first_for_every_bleeding_patient() -> None:
    one = {"scan_subtypes": {"confusion": {"epidural": {"epidural": 5}, "subdural": {"epidural": 1}}}}
    assert "Epidural comes first for all 6 bleeding test patients" in one_subtype_limitation(one)
    assert "counts the 5 who have it" in one_subtype_limitation(one)
    two = {"scan_subtypes": {"confusion": {"epidural": {"epidural": 5}, "subdural": {"subdural": 1, "epidural": 0}}}}
    assert one_subtype_limitation(two) == ""
