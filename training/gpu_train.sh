#!/usr/bin/env bash
# Train ichseg on a GPU machine within a fixed budget and bring the weights back.
#
#   training/gpu_train.sh OUT_DIR [MINUTES] [EPOCHS]
#
# Needs the training environment on that machine (`make train-env`: TensorFlow 2.15 with Keras 2,
# tensorflow[and-cuda] or a CUDA-enabled TensorFlow image such as SageMaker's TensorFlow 2.15 GPU
# container, where `python -m training.sagemaker_launcher` runs the same code with spot
# checkpoints) and the training set built here (`python -m training.training_set`, ~60 MB), copied
# to build/training-set-160.npz. The run is resumable: run the same command again after an
# interruption and it continues from the last epoch (OUT_DIR/model/checkpoints). What comes back
# in OUT_DIR: model.h5 (best epoch by validation loss), model-last.h5, history.csv,
# training_summary.json, train.log; export and evaluate them here as the model card shows.
#
# Note: the GPU machines lent to ichseg's development sessions carry PyTorch and JAX but no
# TensorFlow, and cannot fetch it (no network, 64 MiB carried): this script is for a machine with
# the training environment, not for those.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: training/gpu_train.sh OUT_DIR [MINUTES] [EPOCHS]}"
minutes="${2:-12}"
epochs="${3:-60}"
python="${PYTHON:-.venv-train/bin/python}"
data="${DATA:-build/training-set-160.npz}"
mkdir -p "$out"
"$python" - <<'PY'
import sys
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
print(f"TensorFlow {tf.__version__}, GPUs: {[g.name for g in gpus]}")
sys.exit(0 if gpus else "no GPU visible to TensorFlow: run this on a GPU machine (or use the CPU commands in the model card)")
PY
# A GPU takes a batch of 64 easily; the learning rate scales with it (x2 for 4x the batch, square root).
"$python" -m training.train --data "$data" --out "$out/model" --resume \
    --epochs "$epochs" --steps-per-epoch 110 --batch-size 64 --learning-rate 0.002 \
    --max-minutes "$minutes" 2>&1 | tee -a "$out/train.log"
ls -la "$out/model"
