"""Small ONNX models with the shipped model's interface, built without TensorFlow.

The runtime environment has no TensorFlow, and the real model may still be training; these models
have the same input/output names, shapes and ichseg metadata, so the server, the packaging and the
pipeline can be tested against real ONNX Runtime sessions in milliseconds.

The arithmetic is chosen so a test can predict the answer: the pixel head is
``sigmoid(GAIN * (x - 0.5))`` per pixel of the centre channel (bright tissue -> ~1, air -> ~0),
the slice head is ``sigmoid(GAIN * (mean(x) - 0.1))`` per slice over all channels, and the
optional subtype head is ``sigmoid(GAIN * (mean(x) - c_i))`` with one centre per subtype
(:data:`SUBTYPE_CENTRES`). With ``channels=3`` the model has the 0.2 interface: 2.5-D context and,
with ``intracranial_only``, the skull-bounded region.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ichseg.model_file import set_metadata
from ichseg.model_metadata import INPUT_NAME, MASK_OUTPUT, SLICE_OUTPUT, SUBTYPE_OUTPUT, SUBTYPES, ModelMetadata
from ichseg.preprocess import InputSpec

GAIN = 12.0
PIXEL_CENTRE = 0.5
SLICE_CENTRE = 0.1
SUBTYPE_CENTRES = (0.05, 0.1, 0.3, 0.5, 0.9)
"""Per subtype: a bright slice is likely epidural and subdural, never subarachnoid."""
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
    channels: int = 1,
    intracranial_only: bool = False,
    subtypes: bool = False,
    lean: float = 0.0,
    test_time_flip: bool = False,
) -> Path:
    """Write an ONNX model (``slices`` -> ``mask``, ``hemorrhage`` [, ``subtypes``]) with ichseg metadata.

    ``lean`` adds ``lean * (column / size - 0.5)`` to the pixel logits: a model whose answer for a
    mirrored slice is not the mirror of its answer (what a mirrored second reading changes).
    """
    centre = (channels - 1) // 2
    nodes = [
        helper.make_node("Slice", [INPUT_NAME, "centre_start", "centre_end", "channel_axis"], ["centre"]),
        helper.make_node("Sub", ["centre", "pixel_centre"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["upright_logits"]),
        helper.make_node("Add", ["upright_logits", "lean"], ["pixel_logits"]),
        helper.make_node("Sigmoid", ["pixel_logits"], [MASK_OUTPUT]),
        # opset 17: ReduceMean takes its axes as an attribute (an input only from opset 18)
        helper.make_node("ReduceMean", [INPUT_NAME], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "channel_axis_1"], ["mean_column"]),
        helper.make_node("Sub", ["mean_column", "slice_centre"], ["mean_centred"]),
        helper.make_node("Mul", ["mean_centred", "gain"], ["slice_logits"]),
        helper.make_node("Sigmoid", ["slice_logits"], [SLICE_OUTPUT]),
    ]
    outputs = [
        helper.make_tensor_value_info(MASK_OUTPUT, TensorProto.FLOAT, ["N", size, size, 1]),
        helper.make_tensor_value_info(SLICE_OUTPUT, TensorProto.FLOAT, ["N", 1]),
    ]
    if subtypes:
        nodes += [
            helper.make_node("Sub", ["mean_column", "subtype_centres"], ["subtype_centred"]),
            helper.make_node("Mul", ["subtype_centred", "gain"], ["subtype_logits"]),
            helper.make_node("Sigmoid", ["subtype_logits"], [SUBTYPE_OUTPUT]),
        ]
        outputs.append(helper.make_tensor_value_info(SUBTYPE_OUTPUT, TensorProto.FLOAT, ["N", len(SUBTYPES)]))
    graph = helper.make_graph(
        nodes,
        "ichseg_tiny",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", size, size, channels])],
        outputs=outputs,
        initializer=[
            helper.make_tensor(constant, TensorProto.FLOAT, [], [value])
            for constant, value in (("gain", GAIN), ("pixel_centre", PIXEL_CENTRE), ("slice_centre", SLICE_CENTRE))
        ]
        + [helper.make_tensor("subtype_centres", TensorProto.FLOAT, [len(SUBTYPES)], list(SUBTYPE_CENTRES))] * subtypes
        + [
            helper.make_tensor("lean", TensorProto.FLOAT, [1, 1, size, 1], list(lean * (np.arange(size) / size - 0.5))),
            helper.make_tensor("centre_start", TensorProto.INT64, [1], [centre]),
            helper.make_tensor("centre_end", TensorProto.INT64, [1], [centre + 1]),
            helper.make_tensor("channel_axis", TensorProto.INT64, [1], [3]),
            helper.make_tensor("channel_axis_1", TensorProto.INT64, [1], [1]),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ichseg-tests")
    proto.ir_version = 8  # readable by every onnxruntime this project pins
    if with_metadata:
        metadata = ModelMetadata(
            name=name,
            version=version,
            input=InputSpec(
                size=size, channels=channels, crop_to_head=crop_to_head, intracranial_only=intracranial_only
            ),
            pixel_threshold=pixel_threshold,
            slice_threshold=slice_threshold,
            subtypes=SUBTYPES if subtypes else (),
            test_time_flip=test_time_flip,
            architecture="tiny-test",
            opset=OPSET,
        )
        set_metadata(proto, metadata)
    onnx.checker.check_model(proto)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return path


def expected_subtype_probabilities(mean_input: float) -> np.ndarray:
    """What the subtype head computes for a slice whose model input averages ``mean_input``."""
    return 1.0 / (1.0 + np.exp(-GAIN * (mean_input - np.array(SUBTYPE_CENTRES))))


def head_phantom(count: int = 2, height: int = 96, width: int = 80, seed: int = 0, skull: bool = False) -> np.ndarray:
    """Windowed uint8 ``(count, height, width)`` slices: a bright elliptical 'head' on black air;
    with ``skull``, inside a white ring, as bone is in a brain window (what ``ichseg segment`` and
    the pipeline require of 8-bit input: :func:`ichseg.fitness.require_brain_window_ct`)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    radius = np.sqrt(((rows - height / 2) / (0.4 * height)) ** 2 + ((cols - width / 2) / (0.4 * width)) ** 2)
    slices = np.zeros((count, height, width), np.uint8)
    for index in range(count):
        slices[index][radius <= 1.0] = 150 + 20 * index
        slices[index] += rng.integers(0, 3, size=(height, width), dtype=np.uint8)
        if skull:
            slices[index][(radius > 1.0) & (radius <= 1.1)] = 255
    return slices


def pair_scan_head(destination: str | Path, model: ModelMetadata, source: str | Path | None = None) -> Path:
    """A copy of the shipped scan head stamped as trained on ``model``'s answers and giving every
    scan output, so a test model's scans are read by a real head (its figures mean nothing for the
    test model: the tests check that the head is run, paired and reported, not what it concludes)."""
    import dataclasses

    from ichseg.model_file import set_entries
    from ichseg.scan_context import METADATA_KEY, SCAN_HEAD, ScanHeadMetadata, ScanOutput

    proto = onnx.load(str(source or SCAN_HEAD))
    entries = {p.key: p.value for p in proto.metadata_props}
    head = ScanHeadMetadata.from_json(entries[METADATA_KEY])
    paired = dataclasses.replace(
        head, segmentation_model=model.name, segmentation_version=model.version, adopted=tuple(ScanOutput)
    )
    set_entries(proto, {METADATA_KEY: paired.to_json()})
    onnx.save(proto, str(destination))
    return Path(destination)
