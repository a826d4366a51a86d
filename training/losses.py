"""Losses and metrics for small, imbalanced bleeds with partly-trusted targets.

The mask output's target packs two channels: ``[..., 0]`` the target mask and ``[..., 1]`` the
per-pixel weight (1 trusted, 0 ambiguous; see :mod:`training.weak_labels`). Packing keeps Keras's
plain ``compile``/``fit`` while letting weak labels say "don't know" per pixel.
"""

from __future__ import annotations

import tensorflow as tf

SMOOTH = 1.0


def _unpack(y_true: tf.Tensor, y_pred: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    target = y_true[..., 0:1]
    weight = y_true[..., 1:2]
    return target, weight, tf.clip_by_value(y_pred, 1e-6, 1 - 1e-6)


def weighted_focal_bce(y_true: tf.Tensor, y_pred: tf.Tensor, gamma: float = 2.0, alpha: float = 0.75) -> tf.Tensor:
    """Focal binary cross-entropy (Lin et al. 2017) over trusted pixels: easy background counts less."""
    target, weight, pred = _unpack(y_true, y_pred)
    p_t = target * pred + (1 - target) * (1 - pred)
    alpha_t = target * alpha + (1 - target) * (1 - alpha)
    loss = -alpha_t * tf.pow(1 - p_t, gamma) * tf.math.log(p_t)
    return tf.reduce_sum(loss * weight) / (tf.reduce_sum(weight) + 1e-6) * 10.0


def weighted_soft_dice_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """1 - soft Dice pooled over the batch's trusted pixels (batch pooling keeps empty slices stable)."""
    target, weight, pred = _unpack(y_true, y_pred)
    intersection = tf.reduce_sum(weight * target * pred)
    total = tf.reduce_sum(weight * target) + tf.reduce_sum(weight * pred)
    return 1.0 - (2.0 * intersection + SMOOTH) / (total + SMOOTH)


def mask_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Dice + focal BCE: Dice for overlap on small bleeds, focal BCE for a calibrated pixel map."""
    return weighted_soft_dice_loss(y_true, y_pred) + weighted_focal_bce(y_true, y_pred)


def dice_metric(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Hard Dice at 0.5 over trusted pixels of the batch."""
    target, weight, pred = _unpack(y_true, y_pred)
    hard = tf.cast(pred > 0.5, tf.float32)
    intersection = tf.reduce_sum(weight * target * hard)
    total = tf.reduce_sum(weight * target) + tf.reduce_sum(weight * hard)
    return (2.0 * intersection + 1e-6) / (total + 1e-6)


def iou_metric(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Hard IoU at 0.5 over trusted pixels of the batch."""
    target, weight, pred = _unpack(y_true, y_pred)
    hard = tf.cast(pred > 0.5, tf.float32)
    intersection = tf.reduce_sum(weight * target * hard)
    union = tf.reduce_sum(weight * tf.maximum(target, hard))
    return (intersection + 1e-6) / (union + 1e-6)


dice_metric.__name__ = "dice"
iou_metric.__name__ = "iou"
