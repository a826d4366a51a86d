"""The segmentation models: a U-Net and the variants the seeds name, built from small blocks.

Ronneberger et al. (2015) U-Net: an encoder of conv blocks and poolings, a decoder that upsamples
and concatenates the encoder's skip connections, a sigmoid per-pixel output. The variants change
one block each: ResUNet (Zhang et al. 2018) makes every conv block residual; Attention U-Net
(Oktay et al. 2018) gates each skip connection with the decoder's coarser signal. A small
classification head on the bottleneck gives the slice-level "hemorrhage detected" probability,
trained on the CT-ICH slice labels (plentiful) while the mask head learns from scarcer masks;
beside it a five-way multi-label head gives each subtype's probability (epidural, subdural,
intraparenchymal, intraventricular, subarachnoid), trained on the CT-ICH subtype columns.
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf

from ichseg.model_metadata import INPUT_NAME, MASK_OUTPUT, SLICE_OUTPUT, SUBTYPE_OUTPUT, SUBTYPES

Variant = Literal["unet", "resunet", "attention"]
VARIANTS: tuple[Variant, ...] = ("unet", "resunet", "attention")

layers = tf.keras.layers


Norm = Literal["group", "batch"]
GROUPS = 8


def normalization(kind: Norm, filters: int, name: str) -> tf.keras.layers.Layer:
    """Group norm by default: no running statistics, so training and inference behave alike even
    after few CPU steps with mixed-source batches, and Horovod ranks need no statistics sync."""
    if kind == "batch":
        return layers.BatchNormalization(name=name)
    return layers.GroupNormalization(groups=min(GROUPS, filters), name=name)


def conv_block(x: tf.Tensor, filters: int, residual: bool = False, name: str = "", norm: Norm = "group") -> tf.Tensor:
    """Two 3x3 convolutions with normalisation and ReLU; with ``residual``, plus a projected shortcut."""
    shortcut = x
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = normalization(norm, filters, name=f"{name}_norm{i}")(x)
        if i == 1 or not residual:
            x = layers.ReLU(name=f"{name}_relu{i}")(x)
    if residual:
        if shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(shortcut)
        x = layers.ReLU(name=f"{name}_relu2")(layers.Add(name=f"{name}_add")([x, shortcut]))
    return x


def encoder_block(x: tf.Tensor, filters: int, residual: bool, name: str, norm: Norm) -> tuple[tf.Tensor, tf.Tensor]:
    """Conv block, then 2x2 max pooling; returns (skip connection, downsampled)."""
    skip = conv_block(x, filters, residual, name=name, norm=norm)
    return skip, layers.MaxPooling2D(2, name=f"{name}_pool")(skip)


def attention_gate(skip: tf.Tensor, gating: tf.Tensor, filters: int, name: str) -> tf.Tensor:
    """Additive attention: weight the skip features by where the coarser decoder signal points."""
    theta = layers.Conv2D(filters, 1, name=f"{name}_theta")(skip)
    phi = layers.Conv2D(filters, 1, name=f"{name}_phi")(gating)
    attention = layers.ReLU(name=f"{name}_relu")(layers.Add(name=f"{name}_add")([theta, phi]))
    attention = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_psi")(attention)
    return layers.Multiply(name=f"{name}_gate")([skip, attention])


def decoder_block(x: tf.Tensor, skip: tf.Tensor, filters: int, variant: Variant, name: str, norm: Norm) -> tf.Tensor:
    """Upsample 2x, (optionally gate and) concatenate the skip connection, conv block."""
    x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_up")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_reduce")(x)
    if variant == "attention":
        skip = attention_gate(skip, x, max(filters // 2, 1), name=f"{name}_att")
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return conv_block(x, filters, residual=variant == "resunet", name=name, norm=norm)


def build_model(
    input_size: int = 256,
    base_filters: int = 16,
    depth: int = 4,
    variant: Variant = "unet",
    channels: int = 1,
    norm: Norm = "group",
    subtypes: bool = True,
) -> tf.keras.Model:
    """A U-Net (or variant) with outputs per-pixel ``mask``, per-slice ``hemorrhage`` and (with
    ``subtypes``) per-slice ``subtypes`` (one sigmoid per name in :data:`SUBTYPES`).

    ``input_size`` must be divisible by ``2**depth``. Filters double at each level.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if input_size % (2**depth):
        raise ValueError(f"input size {input_size} is not divisible by 2**depth = {2**depth}")
    inputs = tf.keras.Input((input_size, input_size, channels), name=INPUT_NAME)
    residual = variant == "resunet"
    skips = []
    x = inputs
    for level in range(depth):
        skip, x = encoder_block(x, base_filters * 2**level, residual, name=f"enc{level}", norm=norm)
        skips.append(skip)
    x = conv_block(x, base_filters * 2**depth, residual, name="bottleneck", norm=norm)
    pooled = layers.GlobalAveragePooling2D(name="cls_avg")(x)
    pooled_max = layers.GlobalMaxPooling2D(name="cls_max")(x)
    features = layers.Concatenate(name="cls_concat")([pooled, pooled_max])
    features = layers.Dropout(0.3, name="cls_dropout")(features)
    slice_probability = layers.Dense(1, activation="sigmoid", name=SLICE_OUTPUT)(features)
    outputs = {SLICE_OUTPUT: slice_probability}
    if subtypes:
        outputs[SUBTYPE_OUTPUT] = layers.Dense(len(SUBTYPES), activation="sigmoid", name=SUBTYPE_OUTPUT)(features)
    for level in reversed(range(depth)):
        x = decoder_block(x, skips[level], base_filters * 2**level, variant, name=f"dec{level}", norm=norm)
    outputs[MASK_OUTPUT] = layers.Conv2D(1, 1, activation="sigmoid", name=MASK_OUTPUT)(x)
    return tf.keras.Model(inputs, outputs, name=f"ichseg_{variant}")


def count_flops_per_frame(model: tf.keras.Model) -> float:
    """Forward-pass FLOPs for one input frame (multiply-add = 2 FLOPs), from the conv/dense shapes."""
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            _, h, w, c_out = layer.output_shape
            kh, kw = layer.kernel_size
            c_in = layer.input_shape[-1]
            total += 2.0 * h * w * c_out * kh * kw * c_in
        elif isinstance(layer, layers.Dense):
            total += 2.0 * layer.input_shape[-1] * layer.units
    return total
