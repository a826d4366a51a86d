"""Write ``models/MODEL_CARD.md`` from the exported model's metadata and its evaluation reports.

    .venv-train/bin/python -m training.model_card --model models/ichseg-unet.onnx \
        --summary build/model/training_summary.json --eval build/eval --out models/MODEL_CARD.md

Also stores the held-out metrics in the model's own metadata, so the endpoint can report them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ichseg.model_file import read_metadata, stamp_metadata
from ichseg.model_metadata import ModelMetadata
from training.evaluate import markdown_table

DEFAULT_SET = "build/training-set-160.npz"
"""Where ``training.training_set`` writes the set without a teacher."""


def _train_command(config: dict[str, Any]) -> str:
    """The ``training.train`` command a stage's saved config came from."""
    start = f" --initial-weights {config['initial_weights']}" if config.get("initial_weights") else ""
    return (
        f".venv-train/bin/python -m training.train --data {config.get('data')} --out {config.get('out')} \\\n"
        f"    --epochs {config.get('epochs')} --steps-per-epoch {config.get('steps_per_epoch')} "
        f"--batch-size {config.get('batch_size')} --learning-rate {config.get('learning_rate')}{start}"
    )


def reproduce_commands(
    stages: list[dict[str, Any]], version: str, teachers: list[str] | None = None, head_version: str | None = None
) -> str:
    """The exact commands behind the model, read from each stage's saved config: the training set
    (a self-training stage's with its teacher, ``teachers`` in stage order after the first), each
    training stage (``--resume`` after any interruption), then export of the last stage's best
    epoch by validation loss, threshold choice, test evaluation and this card."""
    teachers = list(teachers or [])
    lines = [
        "```sh",
        "make train-env                                          # .venv-train (TensorFlow 2.15, Horovod, tf2onnx)",
        f".venv-train/bin/python -m training.training_set         # {DEFAULT_SET} from ../shared/data",
    ]
    for stage in stages:
        config = stage.get("config", {})
        data = str(config.get("data"))
        if data != DEFAULT_SET and teachers:
            teacher = teachers.pop(0)
            lines.append(f".venv-train/bin/python -m training.training_set --teacher {teacher} --out {data}")
        minutes = round(float(stage.get("seconds", 0)) / 60, 1)
        lines.append(f"{_train_command(config)}  # {minutes} min on 2 CPU cores")
    last = stages[-1].get("config", {}).get("out")
    summaries = " ".join(f"--summary {stage.get('config', {}).get('out')}/training_summary.json" for stage in stages)
    lines += [
        f".venv-train/bin/python -m model_export.export --keras {last}/model.h5 \\",
        f"    --out models/ichseg-unet.onnx --summary {last}/training_summary.json --version {version} \\",
        "    --keras-out models/ichseg-unet.keras.h5",
        ".venv-train/bin/python -m training.evaluate --model models/ichseg-unet.onnx --split val \\",
        "    --choose-thresholds --figures models/figures --out build/eval",
        ".venv-train/bin/python -m training.evaluate --model models/ichseg-unet.onnx --split test \\",
        "    --figures models/figures --out build/eval",
        f".venv-train/bin/python -m training.model_card --model models/ichseg-unet.onnx {summaries} \\",
        f"    --eval build/eval --figures models/figures --history {last}/history.csv --out models/MODEL_CARD.md",
        "# the scan head paired with it (models/SCAN_HEAD_CARD.md)",
        f".venv-train/bin/python -m model_export.scan_head --model models/ichseg-unet.onnx --features "
        f"build/scan-features-{version}.npz \\",
        "    --out models/ichseg-scan-head.onnx --summary models/scan-head-eval.json --evaluate-test"
        + (f" --version {head_version}" if head_version else ""),
        "```",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """One held-out target the model is built to reach (issue 18's list)."""

    measure: str
    goal: float
    value: float
    at_most: bool = False
    """The target is a ceiling (false alarms), not a floor."""

    @property
    def met(self) -> bool:
        return self.value <= self.goal if self.at_most else self.value >= self.goal

    def row(self) -> str:
        sign = "<=" if self.at_most else ">="
        verdict = "met" if self.met else f"missed by {abs(self.value - self.goal):.3f}"
        return f"| {self.measure} | {sign} {self.goal} | {self.value} | {verdict} |"


MIN_SUBTYPE_SLICES = 5
"""A subtype's AUC is held to its target only with this many positive test slices."""


def targets(report: dict[str, Any]) -> list[Target]:
    """The targets read against one evaluation report (the test split's)."""
    detection = report.get("detection", {})
    found = [
        Target("slice ROC AUC", 0.93, detection.get("roc_auc", 0.0)),
        Target("scan sensitivity (every bleeding patient found)", 1.0, detection.get("scan_sensitivity", 0.0)),
        Target("scan specificity", 0.70, detection.get("scan_specificity", 0.0)),
        Target("scan ROC AUC", 0.90, detection.get("scan_roc_auc", 0.0)),
    ]
    for name, figures in detection.get("subtype_head_roc_auc", {}).items():
        if figures.get("positive_slices", 0) >= MIN_SUBTYPE_SLICES:
            found.append(Target(f"subtype ROC AUC, {name}", 0.85, figures["roc_auc"]))
    if "scan_subtypes" in report:
        found.append(
            Target("top subtype right, per bleeding patient", 0.80, report["scan_subtypes"]["top_subtype_accuracy"])
        )
    pooled, slices = 0.0, 0
    for key, label in (("segmentation_ct_ich", "CT-ICH"), ("segmentation_mbh", "MBH-Seg")):
        seg = report.get(key, {})
        if seg.get("slices_with_hemorrhage"):
            found.append(Target(f"Dice, {label} radiologist masks", 0.45, seg["dice"]))
            pooled += seg["dice"] * seg["slices_with_hemorrhage"]
            slices += seg["slices_with_hemorrhage"]
    if slices:
        found.append(Target("Dice, both sources pooled (per slice)", 0.45, round(pooled / slices, 4)))
    found.append(
        Target("normal slices with any painted pixel", 0.05, detection.get("normal_slices_painted", 1.0), True)
    )
    return found


def targets_table(report: dict[str, Any]) -> str:
    """Markdown: each target, the value reached and by how much it is missed."""
    rows = [t.row() for t in targets(report)]
    return "\n".join(["| measure | target | test | |", "|---|---|---|---|", *rows]) + "\n"


def training_description(stages: list[dict[str, Any]]) -> str:
    parts = []
    for i, stage in enumerate(stages):
        config = stage.get("config", {})
        origin = ", from the previous stage's weights" if i else ""
        parts.append(
            f"stage {i + 1}: {config.get('epochs')} epochs x {config.get('steps_per_epoch')} steps, batch "
            f"{config.get('batch_size')}, Adam {config.get('learning_rate')}{origin}, "
            f"{round(float(stage.get('seconds', 0)) / 60, 1)} min ({stage.get('steady_slices_per_second')} slices/s)"
        )
    total = round(sum(float(stage.get("seconds", 0)) for stage in stages) / 60, 1)
    return "; ".join(parts) + f". In all {total} minutes on 2 CPU cores"


def _figure_links(figures: Path | None, out: Path) -> str:
    """Markdown images for the pictures the evaluation wrote, relative to the card."""
    if figures is None:
        return ""
    names = [
        ("training-curves.png", "Training curves"),
        ("roc-val.png", "ROC, validation"),
        ("roc-test.png", "ROC, test"),
        ("roc-scan-val.png", "Scan-level ROC, validation (the scan threshold chosen here)"),
        ("roc-scan-test.png", "Scan-level ROC, test"),
        ("calibration-val.png", "Reliability, validation (fitted here)"),
        ("calibration-test.png", "Reliability, test"),
        ("outlines-val.png", "Predicted (red) against radiologist (green) outlines, validation: best and worst"),
        ("outlines-test.png", "Predicted (red) against radiologist (green) outlines, test: best and worst"),
    ]
    shown = [(name, title) for name, title in names if (figures / name).is_file()]
    relative = figures.resolve().relative_to(out.resolve().parent)
    return "\n".join(f"![{title}]({relative / name})" for name, title in shown) + "\n"


def scan_threshold_limitation(val: dict[str, Any], test: dict[str, Any]) -> str:
    """A limitation line when the scan threshold, chosen to find every bleeding validation patient,
    misses bleeding test patients."""
    held, chosen = test.get("detection", {}), val.get("detection", {})
    positives = held.get("scan_positives", 0)
    if not positives or held.get("scan_sensitivity", 1.0) >= 1.0:
        return ""
    found = round(held["scan_sensitivity"] * positives)
    return (
        f"- **Missed bleeds at the scan threshold.** The scan threshold finds every bleeding validation patient "
        f"({chosen.get('scan_positives', 0)} of them) by construction, and found {found} of {positives} bleeding "
        "test patients: read off a handful of patients, it sits at the edge of the weakest one. "
        "Thresholds chosen out of fold over more patients (k-fold) would hold better.\n"
    )


def one_subtype_limitation(report: dict[str, Any]) -> str:
    """A limitation line when the model names one subtype first for every bleeding patient: its
    top-subtype figure then only counts the patients who have that subtype."""
    confusion = report.get("scan_subtypes", {}).get("confusion", {})
    named = {first for row in confusion.values() for first, count in row.items() if count}
    if len(named) != 1 or len(confusion) < 2:
        return ""
    (subtype,) = named
    having = sum(confusion.get(subtype, {}).values())
    total = sum(sum(row.values()) for row in confusion.values())
    return (
        f"- **One subtype named first for everyone.** {subtype.capitalize()} comes first for all {total} "
        f"bleeding test patients; the top-subtype figure counts the {having} who have it. The subtype head "
        "learns from CT-ICH's bleeding patients, most of them epidural; more subtype-labelled patients "
        "would change that, a prior correction did not (`models/TRAINING_LOG.md` step 11).\n"
    )


def _paired_head_version(model: ModelMetadata) -> str | None:
    """The committed scan head's version where it reads ``model`` (the card names it in Reproduce)."""
    from ichseg.scan_context import SCAN_HEAD, ScanHead

    if not SCAN_HEAD.is_file():
        return None
    head = ScanHead(SCAN_HEAD).metadata
    return head.version if head.pairs_with(model) else None


def write_card(
    model: Path,
    stages: list[dict[str, Any]],
    val: dict[str, Any],
    test: dict[str, Any],
    out: Path,
    figures: Path | None = None,
    teachers: list[str] | None = None,
) -> str:
    """Write the card for ``model`` from its training ``stages`` (each stage's training_summary.json)
    and its ``val``/``test`` evaluation reports; ``teachers``: the models whose outlines built the
    self-training stages' sets. Stamps the held-out figures into the model's metadata."""
    meta = read_metadata(model)
    spec = meta.input
    context = (
        "the slice and its neighbours below and above as three channels (2.5-D; at a scan's ends the "
        "slice repeats itself)"
        if spec.channels == 3
        else "one windowed slice"
    )
    region = (
        " Everything outside the skull's inner table is zeroed in the input and no pixel is ever "
        "predicted there (`ichseg.preprocess.intracranial_region`, the same code in training and serving)."
        if spec.intracranial_only
        else ""
    )
    subtypes = (
        f" A third head gives one calibrated probability per subtype ({', '.join(meta.subtypes)}): per "
        "slice, and per scan as the most confident slice's. The mask head does not separate subtypes, so "
        "volumes are given for all hemorrhage only."
        if meta.subtypes
        else ""
    ) + (
        " A separate scan head reads every slice's answers in order; `models/SCAN_HEAD_CARD.md` says which"
        " of its outputs the report takes. The figures below are this model's own, with the scan's"
        " finding as its most confident slice's."
    )
    mirrored = (
        " Every slice is read twice, as it is and mirrored left-right (the mirror's map mirrored back),"
        " and the two answers are averaged (`test_time_flip`): twice the compute per frame."
        if meta.test_time_flip
        else ""
    )
    taught = (
        " In the self-training stages, the training patients' hemorrhage slices without a radiologist"
        " mask learn from the previous stage's confident outlines instead of the weak targets"
        " (`training/self_training.py`: inside the intracranial region, never on normal slices)."
        if teachers
        else ""
    )
    scale, bias = meta.slice_calibration
    seg_test = test.get("segmentation_ct_ich", {})
    text = f"""# Model card: {meta.name} {meta.version}

**Not for clinical use.** Research and demonstration software; not a medical device.

## What it is
A {meta.architecture} (Keras, group normalisation, exported to ONNX opset {meta.opset} with each group
norm fused into one `InstanceNormalization`) with a per-pixel hemorrhage probability and a
per-slice "hemorrhage detected" probability from the bottleneck.{subtypes}
{meta.parameters:,} parameters, {meta.gflop_per_frame} GFLOP per {spec.size}x{spec.size} frame.
Input: {context}, windowed (CT-ICH brain window L40/W120 for HU inputs; 8-bit inputs pass through),
cropped to the head with the centre slice's square, resized to {spec.size} px, scaled to [0, 1].{region}
Masks are kept only on slices whose detection probability reaches the slice threshold.{mirrored}

Operating point (chosen on validation patients, never on test): slice threshold
{meta.slice_threshold} (the highest threshold that finds 85 % of the validation hemorrhage slices
and paints at most 15 % of the normal ones), pixel threshold {meta.pixel_threshold} (best mean Dice on
validation radiologist masks). A scan is reported as "Hemorrhage detected" when its most
confident slice reaches the scan threshold {meta.finding_threshold} (the highest that still finds
every validation patient with hemorrhage, and never below the slice threshold). Probabilities
shown to users are calibrated on validation (Platt scaling of the slice head, scale {scale}, bias
{bias}; per-subtype scaling of the subtype head); the tables give the expected calibration error
before and after.

## Data
- **CT-ICH** (Hssayeni et al., PhysioNet 2020, CC BY 4.0): 77 patients here, 2,327 brain-window
  slices with slice-level and subtype labels, and 22 radiologist pixel masks on 13 patients. Split
  by patient into train / validation / test, pinned in `training/splits/ct-ich.json` so that new
  data never moves a patient (made by `training/datasets.py: split_ct_ich`, seed 2026, stratified on
  hemorrhage, then masked patients placed by hand; patient 051, the demo sample, in test); each masked
  patient sits in one split, three in validation and three in test, so that Dice on real CT-ICH
  masks can be chosen on and reported (`models/TRAINING_LOG.md` says which patients moved).
  The mask head learns from the real masks where they exist (oversampled
  x4), from weak targets on the other hemorrhage slices (dense intracranial regions,
  `training/weak_labels.py`, half weight, ambiguous pixels ignored) and from empty masks on normal
  slices.{taught} Every patient is read as a whole scan, as a user's folder is, so slices get their
  real neighbours.
- **MBH-Seg mini** (36 real slices with radiologist masks, 25 scans, MIT): split by scan, half of
  the scans held out for the Dice figures below (single slices: their neighbours repeat the slice).
- **Synthetic head CT** (`training/synthetic.py`): 1,200 slices with exact masks for all five subtypes.

Training ({training_description(stages)}): Dice + focal BCE (mask), BCE (slice and subtypes),
online augmentation (flips, rotation, scale, shift, window/contrast/gamma, noise, neighbours swapped
or dropped).

## Held-out results
Every figure below is on patients/scans the model never trained on; 95 % intervals bootstrap
over patients. Dice is averaged over slices with hemorrhage (empty/empty would count as 1.0 and is
excluded by construction), except the pooled per-patient Dice, which also counts every pixel
painted on the patient's normal slices as a false positive.

{markdown_table(test)}
Against the targets set for this model (test patients):

{targets_table(test)}
Validation (used to choose the operating point and the calibration):

{markdown_table(val)}
{_figure_links(figures, out)}
## Limitations
- Real CT-ICH masks are few: {seg_test.get("slices_with_hemorrhage", 0)} masked test slices on
  {seg_test.get("scans", 0)} patients; the intervals are correspondingly wide. MBH-Seg masks come from
  another scanner population and labelling protocol.
- Slice-level figures come from {test.get("detection", {}).get("patients", 0)} test patients: the
  intervals are wide. Subtypes with few positive slices (intraventricular, subarachnoid) have
  unreliable AUCs.
{scan_threshold_limitation(val, test)}{one_subtype_limitation(test)}- 2.5-D context is one slice on each
  side, whatever the slice spacing (CT-ICH is 5 mm): on a thin-slice scan the neighbours are closer
  than in training and add less context.
- 8-bit video/JPEG inputs must already be in a brain-type window; a bone-window video is out of
  distribution. The intracranial region needs the skull to be visible as bone (>= ~93 HU).

What each training step gained on held-out patients: `models/TRAINING_LOG.md`.

## Intended use
{meta.intended_use}

## Reproduce
{reproduce_commands(stages, meta.version, teachers, _paired_head_version(meta))}
"""
    out.write_text(text)
    stamp_metadata(model, meta.with_updates(metrics={"test": test, "validation": val}))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument(
        "--summary", type=Path, action="append", required=True, help="training_summary.json of each stage, in order"
    )
    parser.add_argument("--eval", type=Path, default=Path("build/eval"))
    parser.add_argument("--out", type=Path, default=Path("models/MODEL_CARD.md"))
    parser.add_argument("--figures", type=Path, default=None, help="folder of the evaluation's PNGs")
    parser.add_argument("--history", type=Path, default=None, help="history.csv of the last stage: training curves")
    parser.add_argument(
        "--teacher",
        action="append",
        default=[],
        help="the model (.onnx) whose outlines built a self-training stage's set, one per such stage, in order",
    )
    args = parser.parse_args()
    stages = [json.loads(path.read_text()) for path in args.summary]
    val = json.loads((args.eval / "val.json").read_text())
    test = json.loads((args.eval / "test.json").read_text())
    if args.figures is not None and args.history is not None:
        from training.figures import write_training_curves

        write_training_curves(args.history, args.figures / "training-curves.png")
    write_card(args.model, stages, val, test, args.out, args.figures, args.teacher)
    print(args.out)


if __name__ == "__main__":
    main()
