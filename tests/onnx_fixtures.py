"""Small ONNX models with the shipped model's interface, built without TensorFlow.

The runtime environment has no TensorFlow, and the real model may still be training; these models
have the same input/output names, shapes and ichseg metadata, so the server, the packaging and the
pipeline can be tested against real ONNX Runtime sessions in milliseconds.

The arithmetic is chosen so a test can predict the answer: the pixel head is
``sigmoid(GAIN * (x - 0.5))`` per pixel (bright tissue -> ~1, air -> ~0) and the slice head is
``sigmoid(GAIN * (mean(x) - 0.1))`` per slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ichseg.model_metadata import INPUT_NAME, MASK_OUTPUT, SLICE_OUTPUT, ModelMetadata
from ichseg.preprocess import InputSpec
from model_export.metadata_io import set_metadata

GAIN = 12.0
PIXEL_CENTRE = 0.5
SLICE_CENTRE = 0.1
OPSET = 17


def expected_pixel_probability(inputs_unit: np.ndarray) -> np.ndarray:
    """What the pixel head computes for model inputs in [0, 1] (for assertions)."""
    return 1.0 / (1.0 + np.exp(-GAIN * (inputs_unit - PIXEL_CENTRE)))


def build_tiny_model(
    path: str | Path,
    *,
    size: int = 64,
    name: str = "ichseg-tiny",
    version: str = "0.0.1-test",
    pixel_threshold: float = 0.5,
    slice_threshold: float = 0.5,
    crop_to_head: bool = True,
    with_metadata: bool = True,
) -> Path:
    """Write a two-head ONNX model (``slices`` -> ``mask``, ``hemorrhage``) with ichseg metadata."""
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "pixel_centre"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["pixel_logits"]),
        helper.make_node("Sigmoid", ["pixel_logits"], [MASK_OUTPUT]),
        # opset 17: ReduceMean takes its axes as an attribute (an input only from opset 18)
        helper.make_node("ReduceMean", [INPUT_NAME], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Sub", ["mean", "slice_centre"], ["mean_centred"]),
        helper.make_node("Mul", ["mean_centred", "gain"], ["slice_logits"]),
        helper.make_node("Sigmoid", ["slice_logits"], [SLICE_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "ichseg_tiny",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", size, size, 1])],
        outputs=[
            helper.make_tensor_value_info(MASK_OUTPUT, TensorProto.FLOAT, ["N", size, size, 1]),
            helper.make_tensor_value_info(SLICE_OUTPUT, TensorProto.FLOAT, ["N", 1]),
        ],
        initializer=[
            helper.make_tensor(constant, TensorProto.FLOAT, [], [value])
            for constant, value in (("gain", GAIN), ("pixel_centre", PIXEL_CENTRE), ("slice_centre", SLICE_CENTRE))
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ichseg-tests")
    proto.ir_version = 8  # readable by every onnxruntime this project pins
    if with_metadata:
        metadata = ModelMetadata(
            name=name,
            version=version,
            input=InputSpec(size=size, crop_to_head=crop_to_head),
            pixel_threshold=pixel_threshold,
            slice_threshold=slice_threshold,
            architecture="tiny-test",
            opset=OPSET,
        )
        set_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def head_phantom(count: int = 2, height: int = 96, width: int = 80, seed: int = 0) -> np.ndarray:
    """Windowed uint8 ``(count, height, width)`` slices: a bright elliptical 'head' on black air."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    ellipse = ((rows - height / 2) / (0.4 * height)) ** 2 + ((cols - width / 2) / (0.4 * width)) ** 2 <= 1.0
    slices = np.zeros((count, height, width), np.uint8)
    for index in range(count):
        slices[index][ellipse] = 150 + 20 * index
        slices[index] += rng.integers(0, 3, size=(height, width), dtype=np.uint8)
    return slices
