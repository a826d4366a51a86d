"""Give ONNX Runtime one fused operator per group normalisation instead of ~30 small ones.

tf2onnx spells Keras 2's ``GroupNormalization`` the way Keras computes it: ``weighted_moments``
against a tensor of ones, shape arithmetic, ``Where`` guards and casts, about 30 nodes and four
extra passes over the activation per layer. On the CPU that made ONNX Runtime *slower* than
TensorFlow on the same weights. Group normalisation of ``(N, C, H, W)`` with ``G`` groups is
instance normalisation of ``(N, G, C/G*H*W)`` followed by the per-channel affine transform, and
``InstanceNormalization`` is a single, vectorised ONNX Runtime kernel on every execution provider.

:func:`fuse_group_norms` rewires each layer's consumers to that form and drops the dead nodes. The
exporter checks the result against Keras (``keras_onnx_max_difference``), so a rewrite that
changed the numbers could not ship.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class GroupNormLayer:
    """What the rewrite needs to know about one Keras ``GroupNormalization`` layer."""

    name: str
    groups: int
    epsilon: float
    gamma: np.ndarray
    beta: np.ndarray


def _producer_map(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _scope_nodes(graph: onnx.GraphProto, layer: str) -> list[onnx.NodeProto]:
    return [node for node in graph.node if f"/{layer}/" in node.name]


def _layer_boundary(graph: onnx.GraphProto, layer: str) -> tuple[str, str]:
    """(NHWC input tensor, NHWC output tensor) of one layer's subgraph in tf2onnx's naming."""
    nodes = _scope_nodes(graph, layer)
    if not nodes:
        raise ValueError(f"no nodes of group normalisation layer {layer!r} in the graph")
    reshape = next((n for n in nodes if n.op_type == "Reshape" and n.name.endswith(f"/{layer}/Reshape")), None)
    if reshape is None:
        raise ValueError(f"layer {layer!r}: cannot find the reshape of its input")
    inside = {output for node in nodes for output in node.output}
    # tf2onnx's own helper nodes carry no scope ("Equal__169"): only nodes of another Keras
    # layer ("ichseg_unet/enc0_relu1/Relu") mark where this layer's result leaves it.
    consumed_outside = [
        name
        for node in graph.node
        if "/" in node.name and f"/{layer}/" not in node.name
        for name in node.input
        if name in inside
    ]
    consumed_outside += [o.name for o in graph.output if o.name in inside]
    outputs = sorted(set(consumed_outside))
    if len(outputs) != 1:
        raise ValueError(f"layer {layer!r}: expected one tensor leaving the layer, found {outputs}")
    return reshape.input[0], outputs[0]


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(list(graph.node)):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def fuse_group_norms(proto: onnx.ModelProto, layers: list[GroupNormLayer]) -> onnx.ModelProto:
    """Replace every listed layer's subgraph by Transpose -> Reshape -> InstanceNormalization ->
    Reshape -> affine -> Transpose (ONNX Runtime cancels the transposes against the convolutions')."""
    graph = proto.graph
    for layer in layers:
        source, result = _layer_boundary(graph, layer.name)
        channels = layer.gamma.size
        prefix = f"ichseg_fused/{layer.name}"

        def name(part: str, prefix: str = prefix) -> str:
            return f"{prefix}/{part}"

        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ones(layer.groups, np.float32), name("unit_scale")),
                numpy_helper.from_array(np.zeros(layer.groups, np.float32), name("zero_bias")),
                numpy_helper.from_array(np.array([0, layer.groups, -1], np.int64), name("grouped_shape")),
                numpy_helper.from_array(layer.gamma.astype(np.float32).reshape(channels, 1, 1), name("gamma")),
                numpy_helper.from_array(layer.beta.astype(np.float32).reshape(channels, 1, 1), name("beta")),
            ]
        )
        new_nodes = [
            helper.make_node("Transpose", [source], [name("nchw")], perm=[0, 3, 1, 2], name=name("to_nchw")),
            helper.make_node("Shape", [name("nchw")], [name("shape")], name=name("shape")),
            helper.make_node("Reshape", [name("nchw"), name("grouped_shape")], [name("grouped")], name=name("group")),
            helper.make_node(
                "InstanceNormalization",
                [name("grouped"), name("unit_scale"), name("zero_bias")],
                [name("normalised")],
                epsilon=float(layer.epsilon),
                name=name("instance_norm"),
            ),
            helper.make_node("Reshape", [name("normalised"), name("shape")], [name("ungrouped")], name=name("ungroup")),
            helper.make_node("Mul", [name("ungrouped"), name("gamma")], [name("scaled")], name=name("scale")),
            helper.make_node("Add", [name("scaled"), name("beta")], [name("shifted")], name=name("shift")),
            helper.make_node("Transpose", [name("shifted")], [name("nhwc")], perm=[0, 2, 3, 1], name=name("to_nhwc")),
        ]
        for node in graph.node:
            for i, tensor in enumerate(node.input):
                if tensor == result:
                    node.input[i] = name("nhwc")
        for output in graph.output:
            if output.name == result:
                raise ValueError(f"layer {layer.name!r} is a graph output; not rewritten")
        # Insert right after the source's producer keeps the node list topologically sorted.
        producers = _producer_map(graph)
        position = list(graph.node).index(producers[source]) + 1 if source in producers else 0
        for offset, node in enumerate(new_nodes):
            graph.node.insert(position + offset, node)
    _prune(graph)
    return proto
