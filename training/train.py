"""Train the ichseg segmentation model: one process, or several under Horovod, or on SageMaker.

    .venv-train/bin/python -m training.train --data build/training-set-160.npz --out build/model
    horovodrun -np 2 --gloo .venv-train/bin/python -m training.train --horovod ...

Runs are resumable: every epoch writes a checkpoint (weights, optimizer state, epoch, best
validation loss) to ``<out>/checkpoints`` and, on SageMaker, also to ``/opt/ml/checkpoints``, which
SageMaker syncs to S3 and restores when a spot job restarts; ``--resume`` continues from the
newest one (the same command line, run again after any interruption).

Under Horovod each rank reads its own shard of the training set, the learning rate is scaled by
the number of ranks, rank 0's initial weights are broadcast to all, gradients are averaged, and
only rank 0 writes checkpoints and logs. On SageMaker the same entry point reads its data from
``SM_CHANNEL_TRAINING`` and writes the model to ``SM_MODEL_DIR`` (see ``training/sagemaker_entry.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from training.losses import dice_metric, iou_metric, mask_loss
from training.model import MASK_OUTPUT, SLICE_OUTPUT, SUBTYPE_OUTPUT, VARIANTS, Variant, build_model
from training.training_set import TrainingSet, load_training_set

log = logging.getLogger("ichseg.train")

SAGEMAKER_CHECKPOINTS = Path("/opt/ml/checkpoints")
"""SageMaker's local checkpoint folder (``checkpoint_s3_uri`` in the launcher): synced to S3."""


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved beside the model."""

    data: str
    out: str
    variant: Variant = "unet"
    base_filters: int = 16
    depth: int = 4
    norm: str = "group"
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 7
    positive_oversampling: int = 2
    real_mask_oversampling: int = 4
    """Repeat slices with a radiologist's mask this many times: they are the scarcest, best targets."""
    neighbour_dropout: float = 0.15
    """Chance that a training slice loses its neighbours (as a single image or a thin-slice scan)."""
    steps_per_epoch: int | None = None
    """Cap on steps per epoch (None: one pass over this rank's shard)."""
    horovod: bool = False
    slice_loss_weight: float = 0.5
    subtype_loss_weight: float = 0.3
    initial_weights: str | None = None
    """Start from a saved model's weights (fine-tuning), or a run's weights-only checkpoint."""
    initial_epoch: int = 0
    """With ``initial_weights`` from a run's ``last.weights.h5``: the epochs it had done, so the
    schedule and the log go on (a run continued on a machine that lost its checkpoint folder; its
    optimizer state starts afresh). A checkpoint found by ``resume`` takes precedence."""
    resume: bool = False
    """Continue from the newest checkpoint of an interrupted run with this ``out``."""
    max_minutes: float | None = None
    """Stop after the last epoch that fits in this budget (a lent GPU, a spot job's window)."""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Distribution:
    """Who this process is in a (possibly single-process) training job."""

    rank: int = 0
    size: int = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def init_distribution(use_horovod: bool) -> Distribution:
    if not use_horovod:
        return Distribution()
    import horovod.tensorflow.keras as hvd

    hvd.init()
    return Distribution(rank=hvd.rank(), size=hvd.size())


def augment(image: tf.Tensor, target: tf.Tensor, neighbour_dropout: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Online augmentation, identical geometry for image and target: flips, rotation, scale,
    shift; then intensity, window (contrast/brightness/gamma) and noise jitter on the image only.
    With 2.5-D context (3 channels) the neighbours may swap (scans run either way) or, with
    probability ``neighbour_dropout``, be replaced by the slice itself (single images, thin slices)."""
    size = tf.cast(tf.shape(image)[0], tf.float32)
    channels = image.shape[-1]
    stacked = tf.concat([image, target], axis=-1)
    stacked = tf.image.random_flip_left_right(stacked)
    angle = tf.random.uniform([], -0.21, 0.21)  # about ±12 degrees
    scale = tf.random.uniform([], 0.88, 1.12)
    shift = tf.random.uniform([2], -0.05, 0.05) * size
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre = size / 2.0
    # Output pixel (x, y) samples input at A (x - c) + c - shift.
    transform = tf.stack(
        [
            cos,
            -sin,
            centre - cos * centre + sin * centre - shift[0],
            sin,
            cos,
            centre - sin * centre - cos * centre - shift[1],
            0.0,
            0.0,
        ]
    )
    stacked = tf.raw_ops.ImageProjectiveTransformV3(
        images=stacked[None],
        transforms=transform[None],
        output_shape=tf.shape(image)[:2],
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
        fill_value=0.0,
    )[0]
    image, target = stacked[..., :channels], stacked[..., channels:]
    if channels == 3:
        below, middle, above = image[..., 0:1], image[..., 1:2], image[..., 2:3]
        swap = tf.random.uniform([]) < 0.5
        below, above = tf.where(swap, above, below), tf.where(swap, below, above)
        alone = tf.random.uniform([]) < neighbour_dropout
        below, above = tf.where(alone, middle, below), tf.where(alone, middle, above)
        image = tf.concat([below, middle, above], axis=-1)
    inside = tf.cast(image > 0, tf.float32)  # the intracranial cut stays sharp under jitter
    contrast = tf.random.uniform([], 0.85, 1.15)
    brightness = tf.random.uniform([], -0.06, 0.06)
    gamma = tf.exp(tf.random.uniform([], -0.2, 0.2))
    image = tf.clip_by_value(image * contrast + brightness, 0.0, 1.0) ** gamma
    image = image + tf.random.normal(tf.shape(image), stddev=tf.random.uniform([], 0.0, 0.02))
    return tf.clip_by_value(image, 0.0, 1.0) * inside, target


def make_dataset(
    data: TrainingSet,
    indices: np.ndarray,
    batch_size: int,
    training: bool,
    dist: Distribution,
    seed: int,
    neighbour_dropout: float = 0.0,
) -> tf.data.Dataset:
    """A tf.data pipeline over rows ``indices`` of the training set (this rank's shard when training)."""
    if training:
        indices = indices[dist.rank :: dist.size]
    images = data.images[indices]
    if images.ndim == 3:  # a single-channel set
        images = images[..., None]
    targets = np.stack([data.masks[indices], data.mask_weights[indices]], axis=-1)
    labels = data.labels[indices][:, None].astype(np.float32)
    subtypes = data.subtypes[indices].astype(np.float32)
    label_weights = data.label_weights[indices].astype(np.float32)

    def to_float(image, target, label, subtype, weight):  # type: ignore[no-untyped-def]
        return tf.cast(image, tf.float32) / 255.0, tf.cast(target, tf.float32) / 255.0, label, subtype, weight

    ds = tf.data.Dataset.from_tensor_slices((images, targets, labels, subtypes, label_weights)).map(to_float)
    if training:
        ds = ds.shuffle(len(indices), seed=seed + dist.rank, reshuffle_each_iteration=True).repeat()

        def augmented(image, target, label, subtype, weight):  # type: ignore[no-untyped-def]
            image, target = augment(image, target, neighbour_dropout)
            return image, target, label, subtype, weight

        ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)

    def to_keras(image, target, label, subtype, weight):  # type: ignore[no-untyped-def]
        # Mask weights live in the target's second channel; the slice outputs use sample weights.
        return (
            image,
            {MASK_OUTPUT: target, SLICE_OUTPUT: label, SUBTYPE_OUTPUT: subtype},
            {SLICE_OUTPUT: weight, SUBTYPE_OUTPUT: weight},
        )

    return ds.map(to_keras).batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


class AverageNonTrainableWeights(tf.keras.callbacks.Callback):
    """Average batch-norm moving statistics across ranks at each epoch end.

    Gradients are averaged by Horovod, but moving means/variances are updated from each rank's own
    shard; averaging them keeps every rank's model identical and gives the saved model statistics
    from all of the data, not just rank 0's shard. Runs before the checkpoint callback.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import horovod.tensorflow as hvd_tf

        for variable in self.model.non_trainable_variables:
            variable.assign(hvd_tf.allreduce(variable, op=hvd_tf.Average, name=f"avg_{variable.name}"))


class TimeBudget(tf.keras.callbacks.Callback):
    """Stop after the epoch whose successor would not finish inside ``minutes``; the epoch
    checkpoint is written first, so ``--resume`` carries on where the budget ran out."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = minutes * 60.0
        self.started = time.time()
        self.epoch_started = self.started

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.time()
        if now + (now - self.epoch_started) > self.started + self.seconds:
            log.info("time budget of %.1f min reached after epoch %d", self.seconds / 60, epoch + 1)
            self.model.stop_training = True


class EpochTimer(tf.keras.callbacks.Callback):
    """Wall time of each epoch (the first one includes graph tracing; later ones are steady state)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.time()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.time() - self._started)


def oversample(indices: np.ndarray, selected: np.ndarray, factor: int) -> np.ndarray:
    """``indices`` plus the rows where ``selected`` holds, repeated to ``factor`` copies in all."""
    chosen = indices[selected[indices]]
    return np.concatenate([indices] + [chosen] * max(factor - 1, 0))


def training_rows(data: TrainingSet, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Train-split rows, hemorrhage slices repeated (about 1 slice in 9 is positive in CT-ICH) and
    slices with a radiologist's mask repeated again (they are few and the best targets there are)."""
    rows = np.flatnonzero(data.split == "train")
    rows = oversample(rows, data.labels > 0.5, config.positive_oversampling)
    rows = oversample(rows, data.real_mask & (data.split == "train"), config.real_mask_oversampling)
    return rng.permutation(rows)


def compile_model(
    model: tf.keras.Model,
    learning_rate: float,
    slice_loss_weight: float,
    use_horovod: bool,
    subtype_loss_weight: float = 0.3,
) -> None:
    # The legacy Adam is what Horovod 0.28's DistributedOptimizer wraps reliably under Keras 2.
    optimizer = tf.keras.optimizers.legacy.Adam(learning_rate)
    if use_horovod:
        import horovod.tensorflow.keras as hvd

        optimizer = hvd.DistributedOptimizer(optimizer)
    losses = {MASK_OUTPUT: mask_loss, SLICE_OUTPUT: tf.keras.losses.BinaryCrossentropy()}
    weights = {MASK_OUTPUT: 1.0, SLICE_OUTPUT: slice_loss_weight}
    if SUBTYPE_OUTPUT in model.output_names:
        losses[SUBTYPE_OUTPUT] = tf.keras.losses.BinaryCrossentropy()
        weights[SUBTYPE_OUTPUT] = subtype_loss_weight
    model.compile(
        optimizer=optimizer,
        loss=losses,
        loss_weights=weights,
        metrics={MASK_OUTPUT: [dice_metric, iou_metric], SLICE_OUTPUT: [tf.keras.metrics.AUC(name="auc")]},
        weighted_metrics=[],
    )


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """After every epoch: weights, optimizer state, the epoch and the best validation loss so far,
    in each of ``folders`` (the run's own, and SageMaker's synced one when present). Beside them,
    the weights alone (``last.weights.h5``, a third of the size) with the learning rate in the state:
    small enough to commit, so that a long run survives the loss of its machine (``initial_epoch``)."""

    STATE = "state.json"
    WEIGHTS = "last.weights.h5"

    def __init__(self, folders: list[Path], monitor: str, best: float = math.inf) -> None:
        super().__init__()
        self.folders = folders
        self.monitor = monitor
        self.best = best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is not None and value < self.best:
            self.best = float(value)
        checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
            checkpoint.write(str(folder / "last"))
            self.model.save_weights(str(folder / self.WEIGHTS))
            learning_rate = float(tf.keras.backend.get_value(self.model.optimizer.learning_rate))
            # The state file is written last: a checkpoint without it is incomplete and ignored.
            state = {"epoch": epoch + 1, "best": self.best, "learning_rate": learning_rate}
            (folder / self.STATE).write_text(json.dumps(state))


def restore_checkpoint(model: tf.keras.Model, folders: list[Path]) -> tuple[int, float]:
    """Restore the newest complete checkpoint among ``folders``; returns (epochs done, best value)."""
    states = [f / EpochCheckpoint.STATE for f in folders]
    found = [(json.loads(state.read_text()), state.parent) for state in states if state.is_file()]
    if not found:
        log.info("no checkpoint to resume from in %s; starting afresh", ", ".join(map(str, folders)))
        return 0, math.inf
    state, folder = max(found, key=lambda item: item[0]["epoch"])
    # The optimizer's slots exist only after its first step: build them, then restore over them.
    model.optimizer._create_all_weights(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(str(folder / "last")).assert_consumed()
    log.info("resumed from %s after epoch %d", folder, state["epoch"])
    return int(state["epoch"]), float(state["best"])


def train(config: TrainConfig) -> dict[str, object]:
    """Run one training job; returns (and, on the chief, writes) a summary of the run."""
    dist = init_distribution(config.horovod)
    tf.keras.utils.set_random_seed(config.seed)  # same initial weights everywhere; rank 0's are broadcast anyway
    data = load_training_set(config.data)
    rng = np.random.default_rng(config.seed)
    train_rows = training_rows(data, config, rng)
    val_rows = np.flatnonzero(data.split == "val")
    input_size = data.images.shape[1]
    channels = data.images.shape[3] if data.images.ndim == 4 else 1
    model = build_model(input_size, config.base_filters, config.depth, config.variant, channels, config.norm)  # type: ignore[arg-type]
    if config.initial_weights:
        model.load_weights(config.initial_weights)
    learning_rate = config.learning_rate * dist.size  # linear scaling with the global batch
    compile_model(model, learning_rate, config.slice_loss_weight, config.horovod, config.subtype_loss_weight)

    steps = config.steps_per_epoch or max(1, math.ceil(len(train_rows) / dist.size / config.batch_size))
    train_ds = make_dataset(data, train_rows, config.batch_size, True, dist, config.seed, config.neighbour_dropout)
    val_ds = make_dataset(data, val_rows, config.batch_size, False, dist, config.seed) if len(val_rows) else None

    out = Path(config.out)
    monitor = "val_loss" if val_ds else "loss"
    checkpoint_folders = [out / "checkpoints"]
    if SAGEMAKER_CHECKPOINTS.is_dir():
        checkpoint_folders.append(SAGEMAKER_CHECKPOINTS)
    initial_epoch, best = restore_checkpoint(model, checkpoint_folders) if config.resume else (0, math.inf)
    initial_epoch = initial_epoch or config.initial_epoch
    callbacks: list[tf.keras.callbacks.Callback] = []
    if config.horovod:
        import horovod.tensorflow.keras as hvd

        callbacks += [
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),
            hvd.callbacks.MetricAverageCallback(),
            AverageNonTrainableWeights(),
        ]
    callbacks.append(tf.keras.callbacks.ReduceLROnPlateau("val_loss" if val_ds else "loss", factor=0.5, patience=2))
    if dist.is_chief:
        out.mkdir(parents=True, exist_ok=True)
        callbacks += [
            tf.keras.callbacks.ModelCheckpoint(
                str(out / "model.h5"), monitor=monitor, save_best_only=True, initial_value_threshold=best
            ),
            tf.keras.callbacks.CSVLogger(str(out / "history.csv"), append=initial_epoch > 0),
            EpochCheckpoint(checkpoint_folders, monitor, best),
        ]
    if config.max_minutes is not None:
        callbacks.append(TimeBudget(config.max_minutes))  # after the checkpoint callback
    timer = EpochTimer()
    callbacks.insert(0, timer)
    started = time.time()
    history = model.fit(
        train_ds,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        validation_data=val_ds,
        callbacks=callbacks,
        verbose=2 if dist.is_chief else 0,
    )
    seconds = time.time() - started
    summary: dict[str, object] = {
        "config": asdict(config),
        "ranks": dist.size,
        "input_size": int(input_size),
        "parameters": int(model.count_params()),
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "seconds": round(seconds, 1),
        "slices_per_second": round(steps * config.batch_size * dist.size * len(timer.seconds) / seconds, 2),
        "steady_slices_per_second": round(
            steps * config.batch_size * dist.size / float(np.mean(timer.seconds[1:] or timer.seconds)), 2
        ),
        "epoch_seconds": [round(t, 1) for t in timer.seconds],
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    earlier = out / "training_summary.json"
    if initial_epoch:
        summary["resumed_after_epoch"] = initial_epoch
    if initial_epoch and earlier.is_file():  # a resumed run reports the whole run, not just its tail
        before = json.loads(earlier.read_text())
        summary["seconds"] = round(float(before.get("seconds", 0.0)) + seconds, 1)
        summary["epoch_seconds"] = [*before.get("epoch_seconds", [])[:initial_epoch], *summary["epoch_seconds"]]  # type: ignore[misc]
    if dist.is_chief:
        # model.h5 is the best epoch by validation loss; the last epoch is kept beside it.
        model.save(out / "model-last.h5")
        if not (out / "model.h5").exists():
            model.save(out / "model.h5")
        (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    summary["weights_sha256"] = weights_digest(model)
    # Every rank reports its digest: identical digests prove the ranks trained one model.
    print(f"rank {dist.rank}/{dist.size} weights sha256 {summary['weights_sha256']}", flush=True)
    return summary


def weights_digest(model: tf.keras.Model) -> str:
    """SHA-256 over every weight's bytes: equal only for bit-identical models."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description="Train the ichseg U-Net.")
    parser.add_argument(
        "--data", default=os.environ.get("SM_CHANNEL_TRAINING"), help="training set .npz (or a folder holding one)"
    )
    parser.add_argument("--out", default=os.environ.get("SM_MODEL_DIR", "build/model"))
    parser.add_argument("--variant", choices=VARIANTS, default="unet")
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--norm", choices=("group", "batch"), default="group")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--positive-oversampling", type=int, default=2)
    parser.add_argument("--real-mask-oversampling", type=int, default=4)
    parser.add_argument("--neighbour-dropout", type=float, default=0.15)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--slice-loss-weight", type=float, default=0.5)
    parser.add_argument("--subtype-loss-weight", type=float, default=0.3)
    parser.add_argument("--initial-weights", default=None, help="start from this saved model's weights")
    parser.add_argument(
        "--initial-epoch", type=int, default=0, help="with --initial-weights from a run's last.weights.h5: its epochs"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this --out")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after the last epoch that fits")
    parser.add_argument("--horovod", action="store_true", help="run as one rank of a horovodrun job")
    args = parser.parse_args(argv)
    if not args.data:
        parser.error("--data is required (or set SM_CHANNEL_TRAINING)")
    return TrainConfig(**{k: v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    summary = train(parse_args(argv))
    log.info("trained %s slices/s over %s rank(s)", summary["slices_per_second"], summary["ranks"])


if __name__ == "__main__":
    main()
