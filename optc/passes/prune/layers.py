"""Which nodes carry prunable weights, and which axes of those weights index output and input channels."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from optc.errors import OptcError
from optc.model_facts import attribute
from optc.passes.exclude import excluded_nodes
from optc.passes.prune.config import PruneConfig

FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE})


@dataclass(frozen=True)
class WeightedLayer:
    node: onnx.NodeProto
    weight: str  # initializer name
    out_axis: int  # the weight axis indexing output channels (Conv) or output features (Gemm/MatMul)
    in_axis: int  # the weight axis indexing input channels or features


def weighted_layer(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> WeightedLayer | None:
    """The node's constant float weight and its axes, or None if the node has none we know how to prune."""
    if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
        return None
    weight = initializers.get(node.input[1])
    if weight is None or weight.data_type not in FLOAT_TYPES:
        return None
    if node.op_type == "Conv":
        return WeightedLayer(node, weight.name, out_axis=0, in_axis=1)
    if len(weight.dims) != 2:  # batched MatMul weights have no single feature axis
        return None
    if node.op_type == "Gemm" and attribute(node, "transB", 0):
        return WeightedLayer(node, weight.name, out_axis=0, in_axis=1)
    return WeightedLayer(node, weight.name, out_axis=1, in_axis=0)


def selected_layers(graph: onnx.GraphProto, config: PruneConfig, label: str) -> list[WeightedLayer]:
    """The layers the recipe block asks to prune, in graph order: op_types and nodes, minus the exclude block."""
    names = {n.name for n in graph.node}
    unknown = [n for n in config.nodes if n not in names]
    if unknown:
        raise OptcError(
            f"{label}.nodes: no node named {', '.join(map(repr, unknown))} in the model",
            hint="`optc inspect MODEL --nodes` lists node names",
        )
    excluded = excluded_nodes(graph, config.exclude, label)
    initializers = {t.name: t for t in graph.initializer}
    layers = []
    for node in graph.node:
        if node.op_type not in config.op_types or node.name in excluded:
            continue
        if config.nodes and node.name not in config.nodes:
            continue
        layer = weighted_layer(node, initializers)
        if layer is not None:
            layers.append(layer)
    return layers
