"""Write ``models/MODEL_CARD.md`` from the exported model's metadata and its evaluation reports.

    .venv-train/bin/python -m training.model_card --model models/ichseg-unet.onnx \
        --summary build/model/training_summary.json --eval build/eval --out models/MODEL_CARD.md

Also stores the held-out metrics in the model's own metadata, so the endpoint can report them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from model_export.metadata_io import read_metadata, stamp_metadata
from training.evaluate import markdown_table


def reproduce_commands(stages: list[dict[str, Any]], version: str) -> str:
    """The exact commands behind the model: one training command per stage (later stages start
    from the previous stage's weights), then export, threshold choice, test evaluation and this card."""
    lines = [
        "```sh",
        "make train-env                                          # .venv-train (TensorFlow 2.15, Horovod, tf2onnx)",
        ".venv-train/bin/python -m training.training_set         # build/training-set-160.npz from ../shared/data",
    ]
    outs = [f"build/model-stage{i + 1}" for i in range(len(stages))]
    for i, stage in enumerate(stages):
        config = stage.get("config", {})
        start = f" --initial-weights {outs[i - 1]}/model.h5" if i else ""
        lines.append(
            f".venv-train/bin/python -m training.train --data build/training-set-160.npz --out {outs[i]} \\\n"
            f"    --epochs {config.get('epochs')} --steps-per-epoch {config.get('steps_per_epoch')} "
            f"--batch-size {config.get('batch_size')} --learning-rate {config.get('learning_rate')}{start}"
            f"  # {round(float(stage.get('seconds', 0)) / 60, 1)} min on 2 CPU cores"
        )
    summaries = " ".join(f"--summary {out}/training_summary.json" for out in outs)
    lines += [
        f".venv-train/bin/python -m model_export.export --keras {outs[-1]}/model.h5 --out models/ichseg-unet.onnx \\",
        f"    --summary {outs[-1]}/training_summary.json --version {version}",
        ".venv-train/bin/python -m training.evaluate --model models/ichseg-unet.onnx --split val --choose-thresholds",
        ".venv-train/bin/python -m training.evaluate --model models/ichseg-unet.onnx --split test",
        f".venv-train/bin/python -m training.model_card --model models/ichseg-unet.onnx {summaries} \\",
        "    --eval build/eval --out models/MODEL_CARD.md",
        "```",
    ]
    return "\n".join(lines)


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


def write_card(model: Path, stages: list[dict[str, Any]], val: dict[str, Any], test: dict[str, Any], out: Path) -> str:
    meta = read_metadata(model)
    text = f"""# Model card: {meta.name} {meta.version}

**Not for clinical use.** Research and demonstration software; not a medical device.

## What it is
A {meta.architecture} (Keras, exported to ONNX opset {meta.opset}) with two heads: a per-pixel
hemorrhage probability (sigmoid) and a per-slice "hemorrhage detected" probability from the
bottleneck. {meta.parameters:,} parameters, {meta.gflop_per_frame} GFLOP per {meta.input.size}x{meta.input.size}
frame. Input: one windowed slice (CT-ICH brain window L40/W120 for HU inputs; 8-bit inputs pass
through), cropped to the head, resized to {meta.input.size} px, scaled to [0, 1]. Masks are kept only
on slices whose detection probability reaches the slice threshold.

Operating thresholds (chosen on validation patients, never on test): slice {meta.slice_threshold},
pixel {meta.pixel_threshold}.

## Data
- **CT-ICH** (Hssayeni et al., PhysioNet 2020, CC BY 4.0): 77 patients here, 2,327 brain-window
  slices with slice-level labels. Split by patient (seed {2026}): train / validation / test, stratified
  on hemorrhage; patient 051 (the demo sample) is always in test. No pixel masks are available
  here: the mask head learns from weak targets on hemorrhage slices (dense intracranial regions,
  `training/weak_labels.py`, half weight, ambiguous pixels ignored) and empty masks on normal slices.
- **MBH-Seg mini** (36 real slices with radiologist masks, 25 scans, MIT): split by scan, half of
  the scans held out for the Dice figures below.
- **Synthetic head CT** (`training/synthetic.py`): 1,200 slices with exact masks for all five subtypes.

Training ({training_description(stages)}): Dice + focal BCE (mask) and BCE (slice), online
augmentation (flips, rotation, scale, shift, window/contrast/gamma, noise).

## Held-out results
Every figure below is on patients/scans the model never trained on; 95 % intervals bootstrap
over patients. Dice is averaged over slices with hemorrhage (empty/empty would count as 1.0 and is
excluded here by construction).

{markdown_table(test)}
Validation (used to choose the thresholds):

{markdown_table(val)}
## Limitations
- The mask head never saw a real CT-ICH pixel mask; its Dice on real masks is measured on only
  {test.get("segmentation", {}).get("slices_with_hemorrhage", 0)} MBH-Seg slices, whose scanner,
  window and labelling differ from CT-ICH. Expect lower Dice on thin subdural and subarachnoid blood.
- Slice-level figures come from {test.get("detection", {}).get("patients", 0)} test patients: the
  intervals are wide.
- 8-bit video/JPEG inputs must already be in a brain-type window; a bone-window video is out of
  distribution.

What each training step gained on held-out patients: `models/TRAINING_LOG.md`.

## Intended use
{meta.intended_use}

## Reproduce
{reproduce_commands(stages, meta.version)}
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
    args = parser.parse_args()
    stages = [json.loads(path.read_text()) for path in args.summary]
    val = json.loads((args.eval / "val.json").read_text())
    test = json.loads((args.eval / "test.json").read_text())
    write_card(args.model, stages, val, test, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
