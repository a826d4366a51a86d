"""Fit the scan head (:mod:`ichseg.scan_context`) for one segmentation model; ``model_export.scan_head``
exports it.

1. **Answers.** The segmentation model reads every CT-ICH patient of the pinned split as a user's
   folder would be read, and each slice's answer becomes a row of :data:`~ichseg.scan_context.FEATURES`
   (the probability maps quantised to x 255 exactly as the endpoint sends them). Cached per model.
2. **Out of fold, by patient.** Training patients' answers are in-sample for the segmentation
   model (it has learnt them); validation patients' are not. So the head learns from validation
   patients only (:func:`fitting_scans`), and each of them is also answered by a head fitted on the
   other folds (patient k-fold). Those out-of-fold answers give the validation figures and choose
   the scan threshold (:func:`choose_threshold`).
3. **Final head** on all validation patients (exported by ``python -m model_export.scan_head``).
   Test patients are read only by its ``--evaluate-test``, once, at the end.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichseg.endpoint_protocol import quantize_probabilities
from ichseg.inference import OnnxSegmenter
from ichseg.model_metadata import SUBTYPES
from ichseg.readers import read_scan
from ichseg.readers.naming import natural_key
from ichseg.scan_context import (
    FEATURES,
    INPUT_NAME,
    SCAN_OUTPUT,
    SCAN_SUBTYPE_OUTPUT,
    SLICE_OUTPUT,
    SLICE_SUBTYPE_OUTPUT,
    ScanOutput,
    map_features,
    slice_features,
)
from training.datasets import list_ct_ich_slices, pinned_ct_ich_split
from training.evaluate import TARGET_SENSITIVITY, bootstrap_ci
from training.metrics import roc_auc

log = logging.getLogger("ichseg.scan_head")
OUTPUTS = (SLICE_OUTPUT, SLICE_SUBTYPE_OUTPUT, SCAN_OUTPUT, SCAN_SUBTYPE_OUTPUT)
"""The Keras head's outputs, in order."""
FOLDS = 7
"""Validation patients in 7 folds: 2 per fold for 14 patients."""
SEED = 0


@dataclass(frozen=True)
class PatientScan:
    """One patient's slices in scan order: the head's input and what the radiologists said."""

    patient: str
    split: str
    features: np.ndarray
    """(N, F) float32."""
    labelled: np.ndarray
    """(N,) bool: the slice has a CSV row (unlabelled slices add no loss)."""
    hemorrhage: np.ndarray
    """(N,) float32 0/1."""
    subtypes: np.ndarray
    """(N, S) float32 0/1."""

    @property
    def bleeding(self) -> bool:
        return bool(self.hemorrhage[self.labelled].max(initial=0) > 0)

    @property
    def scan_subtypes(self) -> np.ndarray:
        return self.subtypes[self.labelled].max(axis=0, initial=0)


def collect(model: Path, data: Path, split_file: Path) -> list[PatientScan]:
    """Every CT-ICH patient of ``split_file`` through ``model``, as :class:`PatientScan` rows."""
    root = data / "ct-ich"
    slices = list_ct_ich_slices(root)
    splits = pinned_ct_ich_split(slices, split_file)
    by_patient: dict[str, dict[str, Any]] = {}
    for item in slices:
        by_patient.setdefault(item.patient, {})[str(item.slice_number)] = item
    segmenter = OnnxSegmenter(model)
    meta = segmenter.metadata
    scans = []
    for split in ("train", "val", "test"):
        for patient in sorted(splits[split], key=natural_key):
            scan = read_scan(root / "Patients_CT" / patient)
            prediction = segmenter.predict(np.asarray(scan.slices, dtype=np.uint8))
            # Map by map (their sizes may differ), quantised as the endpoint sends them.
            maps_u8 = [quantize_probabilities(m[None]) for m in prediction.probabilities]
            pairs = [map_features(m, meta.pixel_threshold) for m in maps_u8]
            outlined = np.array([o[0] for o, _ in pairs], np.float32)
            peak = np.array([p[0] for _, p in pairs], np.float32)
            features = slice_features(prediction.slice_probabilities, prediction.subtype_probabilities, outlined, peak)
            items = [by_patient[patient].get(slice_id) for slice_id in scan.slice_ids]
            scans.append(
                PatientScan(
                    patient,
                    split,
                    features,
                    np.array([i is not None for i in items]),
                    np.array([float(i.any_hemorrhage) if i else 0.0 for i in items], np.float32),
                    np.array(
                        [[float(i.subtypes.get(s, False)) if i else 0.0 for s in SUBTYPES] for i in items], np.float32
                    ),
                )
            )
            log.info("%s %s: %d slices", split, patient, len(features))
    return scans


def save_scans(scans: list[PatientScan], path: Path) -> None:
    """Cache :func:`collect`'s rows (one ``.npz``, no pickles)."""
    arrays: dict[str, np.ndarray] = {}
    for i, s in enumerate(scans):
        arrays.update({f"{i}_features": s.features, f"{i}_labelled": s.labelled, f"{i}_hemorrhage": s.hemorrhage})
        arrays[f"{i}_subtypes"] = s.subtypes
    index = [{"patient": s.patient, "split": s.split} for s in scans]
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays["index"] = np.frombuffer(json.dumps(index).encode(), np.uint8)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


def load_scans(path: Path) -> list[PatientScan]:
    """:func:`save_scans`'s rows back."""
    with np.load(path, allow_pickle=False) as arrays:
        index = json.loads(arrays["index"].tobytes().decode())
        return [
            PatientScan(
                e["patient"],
                e["split"],
                arrays[f"{i}_features"],
                arrays[f"{i}_labelled"],
                arrays[f"{i}_hemorrhage"],
                arrays[f"{i}_subtypes"],
            )
            for i, e in enumerate(index)
        ]


HEAD_WIDTH = 16
EPOCHS = 40
LEARNING_RATE = 3e-3
HEAD_L2 = 1e-3
"""On the corrections' weights: the head departs from the old rule only where the patients insist."""
SCAN_LOSS_WEIGHT = 2.0
"""The scan outputs are what the report reads; the per-slice ones regularise the shared layers."""


def build_head(width: int = HEAD_WIDTH, seed: int = SEED) -> Any:
    """The Keras scan head, residual over the most-confident-slice rule.

    Two temporal convolutions (receptive field 7 slices) read the slices' answers in order. Each
    output is the segmentation model's own logit plus a correction that starts at zero: a slice's
    probability is its slice logit plus what its neighbours say; the scan's is the most confident
    slice's logit (the rule reports used before) plus what the pooled scan says; subtypes likewise.
    So an untrained head is the old rule, and training moves it only as far as the patients show.
    """
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    n_subtypes = len(SUBTYPES)
    inputs = tf.keras.Input((None, len(FEATURES)), name=INPUT_NAME)
    slice_logit = layers.Lambda(lambda t: t[..., :1], name="slice_logit")(inputs)
    subtype_logits = layers.Lambda(lambda t: t[..., 1 : 1 + n_subtypes], name="subtype_logits")(inputs)
    h = layers.Conv1D(width, 3, padding="same", activation="relu")(inputs)
    h = layers.Conv1D(width, 3, padding="same", dilation_rate=2, activation="relu")(h)
    h = layers.Concatenate()([inputs, h])
    regulariser = tf.keras.regularizers.L2(HEAD_L2)

    def correction(units: int, kind: str) -> Any:
        if kind == "conv":
            return layers.Conv1D(units, 1, kernel_initializer="zeros", kernel_regularizer=regulariser)
        return layers.Dense(units, kernel_initializer="zeros", kernel_regularizer=regulariser)

    slice_out = layers.Activation("sigmoid")(layers.Add()([slice_logit, correction(1, "conv")(h)]))
    slice_out = layers.Reshape((-1,), name=SLICE_OUTPUT)(slice_out)
    slice_subtypes = layers.Add()([subtype_logits, correction(n_subtypes, "conv")(h)])
    slice_subtypes = layers.Activation("sigmoid", name=SLICE_SUBTYPE_OUTPUT)(slice_subtypes)
    pooled = layers.Concatenate()([layers.GlobalMaxPooling1D()(h), layers.GlobalAveragePooling1D()(h)])
    top = layers.GlobalMaxPooling1D()(slice_logit)
    scan_out = layers.Add()([top, correction(1, "dense")(pooled)])
    scan_out = layers.Activation("sigmoid", name=SCAN_OUTPUT)(scan_out)
    top_subtypes = layers.GlobalMaxPooling1D()(subtype_logits)
    scan_subtypes = layers.Add()([top_subtypes, correction(n_subtypes, "dense")(pooled)])
    scan_subtypes = layers.Activation("sigmoid", name=SCAN_SUBTYPE_OUTPUT)(scan_subtypes)
    return tf.keras.Model(inputs, [slice_out, slice_subtypes, scan_out, scan_subtypes], name="ichseg_scan_head")


def fit_head(scans: list[PatientScan], epochs: int = EPOCHS, seed: int = SEED) -> Any:
    """A head fitted on ``scans`` (one scan per step, in a shuffled order each epoch)."""
    import tensorflow as tf

    model = build_head(seed=seed)
    optimizer = tf.keras.optimizers.Adam(LEARNING_RATE)
    bce = tf.keras.losses.BinaryCrossentropy(reduction="none")
    spec = tf.TensorSpec((1, None, len(FEATURES)), tf.float32)

    @tf.function(
        input_signature=[
            spec,
            tf.TensorSpec((1, None)),
            tf.TensorSpec((1, None)),
            tf.TensorSpec((1, None, len(SUBTYPES))),
            tf.TensorSpec((1, 1)),
            tf.TensorSpec((1, len(SUBTYPES))),
        ]
    )
    def step(x, weight, hemorrhage, subtypes, scan, scan_subtypes):  # type: ignore[no-untyped-def]
        with tf.GradientTape() as tape:
            slice_p, slice_s, scan_p, scan_s = model(x, training=True)
            weights = weight / tf.maximum(tf.reduce_sum(weight), 1.0)
            loss = tf.reduce_sum(bce(hemorrhage[..., None], slice_p[..., None]) * weights)
            loss += tf.reduce_sum(tf.reduce_mean(bce(subtypes[..., None], slice_s[..., None]), -1) * weights)
            loss += SCAN_LOSS_WEIGHT * (tf.reduce_mean(bce(scan, scan_p)) + tf.reduce_mean(bce(scan_subtypes, scan_s)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        losses = []
        for i in rng.permutation(len(scans)):
            s = scans[i]
            loss = step(
                s.features[None],
                s.labelled.astype(np.float32)[None],
                s.hemorrhage[None],
                s.subtypes[None],
                np.array([[float(s.bleeding)]], np.float32),
                s.scan_subtypes[None].astype(np.float32),
            )
            losses.append(float(loss))
        log.debug("epoch %d loss %.4f", epoch, np.mean(losses))
    return model


@dataclass(frozen=True)
class HeadAnswer:
    """The head's answer for one patient (or the most-confident-slice rule's, for comparison)."""

    patient: str
    scan_probability: float
    scan_subtypes: np.ndarray
    slice_probabilities: np.ndarray


def predict(model: Any, scans: list[PatientScan]) -> list[HeadAnswer]:
    """The Keras head's answers."""
    answers = []
    for s in scans:
        slice_p, _, scan_p, scan_s = model(s.features[None], training=False)
        answers.append(
            HeadAnswer(
                s.patient,
                float(np.asarray(scan_p).reshape(-1)[0]),
                np.asarray(scan_s).reshape(-1),
                np.asarray(slice_p).reshape(-1),
            )
        )
    return answers


def max_rule(scans: list[PatientScan]) -> list[HeadAnswer]:
    """What reports said before the scan head: each score is the most confident slice's."""
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    answers = []
    for s in scans:
        p = sigmoid(s.features[:, 0])
        subtypes = sigmoid(s.features[:, 1 : 1 + len(SUBTYPES)]).max(axis=0)
        answers.append(HeadAnswer(s.patient, float(p.max()), subtypes, p))
    return answers


def scan_metrics(scans: list[PatientScan], answers: list[HeadAnswer], threshold: float | None = None) -> dict[str, Any]:
    """Scan AUC, slice AUC, top subtype right, and (at ``threshold``) sensitivity and specificity."""
    labels = np.array([s.bleeding for s in scans])
    scores = np.array([a.scan_probability for a in answers])
    slice_labels = np.concatenate([s.hemorrhage[s.labelled] for s in scans]) > 0
    slice_scores = np.concatenate([a.slice_probabilities[s.labelled] for s, a in zip(scans, answers, strict=True)])
    pairs = list(zip(scans, answers, strict=True))
    bleeding = [(s, a) for s, a in pairs if s.bleeding]
    right = sum(bool(s.scan_subtypes[int(np.argmax(a.scan_subtypes))]) for s, a in bleeding)
    out: dict[str, Any] = {
        "patients": len(scans),
        "bleeding_patients": int(labels.sum()),
        "scan_auc": round(roc_auc(scores, labels), 4) if 0 < labels.sum() < len(labels) else None,
        "scan_auc_ci": bootstrap_ci({s.patient: [(a.scan_probability, s.bleeding)] for s, a in pairs}, _scan_auc),
        "slice_auc": round(roc_auc(slice_scores, slice_labels), 4),
        "top_subtype_right": right,
        "top_subtype_accuracy": round(right / len(bleeding), 4) if bleeding else None,
    }
    if threshold is not None:
        called = scores >= threshold
        out["sensitivity"] = round(float(called[labels].mean()), 4) if labels.any() else None
        out["specificity"] = round(float((~called[~labels]).mean()), 4) if (~labels).any() else None
    return out


def _scan_auc(groups: list[list[tuple[float, bool]]]) -> float | None:
    scores = np.array([score for group in groups for score, _ in group])
    labels = np.array([label for group in groups for _, label in group])
    return roc_auc(scores, labels) if 0 < labels.sum() < len(labels) else None


def choose_threshold(scans: list[PatientScan], answers: list[HeadAnswer]) -> float:
    """The highest threshold that finds at least :data:`~training.evaluate.TARGET_SENSITIVITY` of
    the bleeding patients on out-of-fold answers (the slice threshold's target too), rounded down to
    4 decimals so the patients it finds are still found after rounding.

    Not "every bleeding patient": one bleed the segmentation model misses entirely puts that
    threshold near 0, and every normal head is then called hemorrhage. Not Youden's point either:
    on a handful of patients it trades half the bleeds for specificity, and a triage tool that
    misses bleeds is worse than one that asks for a second look.
    """
    labels = np.array([s.bleeding for s in scans])
    scores = np.sort(np.array([a.scan_probability for a, s in zip(answers, scans, strict=True) if s.bleeding]))
    if not labels.any():
        return 0.5
    missed = int(np.floor(len(scores) * (1 - TARGET_SENSITIVITY) + 1e-9))  # bleeds it may miss
    return float(np.floor(scores[missed] * 1e4) / 1e4)


def out_of_fold(scans: list[PatientScan], folds: int = FOLDS, epochs: int = EPOCHS) -> list[HeadAnswer]:
    """Each validation patient's answer from a head fitted on the other folds' validation patients
    (folds stratified on bleeding). Training patients never enter: see :func:`fitting_scans`."""
    val = fitting_scans(scans)
    order = sorted(val, key=lambda s: (s.bleeding, s.patient))
    fold_of = {s.patient: i % folds for i, s in enumerate(order)}
    answers: dict[str, HeadAnswer] = {}
    for fold in range(folds):
        held = [s for s in val if fold_of[s.patient] == fold]
        model = fit_head([s for s in val if fold_of[s.patient] != fold], epochs=epochs, seed=SEED + fold)
        answers.update({a.patient: a for a in predict(model, held)})
    return [answers[s.patient] for s in val]


def fitting_scans(scans: list[PatientScan]) -> list[PatientScan]:
    """The scans a head learns from: the validation patients only.

    The segmentation model has learnt its training patients: on them its most confident slice
    separates bleeding from normal scans almost perfectly (0.2.0: scan AUC 0.96 on train, 0.71 on
    validation), and a head fitted to that learns to trust the model exactly where it should not.
    Stacking needs answers for patients the first model never saw; without a k-fold segmentation
    model those are the validation patients', so the head is small and starts as the old rule.
    """
    return [s for s in scans if s.split == "val"]


def adopted_outputs(head: dict[str, Any], rule: dict[str, Any]) -> tuple[ScanOutput, ...]:
    """The scan outputs the head gives in place of the most-confident-slice rule: each only where its
    out-of-fold validation figure beats the rule's (scan AUC for the finding, patients whose first
    subtype is right for the subtypes). Ties keep the rule: a new part must show it pays."""
    adopted = []
    if (head["scan_auc"] or 0) > (rule["scan_auc"] or 0):
        adopted.append(ScanOutput.FINDING)
    if head["top_subtype_right"] > rule["top_subtype_right"]:
        adopted.append(ScanOutput.SUBTYPES)
    return tuple(adopted)
