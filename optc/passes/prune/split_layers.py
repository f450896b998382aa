"""Turn a Conv whose output channels a Split hands out in parts into one Conv per part, so each part is a layer of
its own that channel pruning can shrink (YOLOv8's C2f blocks: Conv → SiLU → Split in halves, one half into a
bottleneck, both into a Concat). The Conv's weight and bias are cut into the parts and the elementwise chain between
the Conv and the Split (an activation such as SiLU = x · Sigmoid(x)) is repeated per part, so every part computes
exactly the values the Split handed out, and every consumer reads the tensor it read before.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optc.model_facts import attribute, default_opset, reader_counts
from optc.passes.prune.channel_groups import UNARY_PASSTHROUGH
from optc.tensors import tensor_values

# Ops that may sit between the Conv and the Split: elementwise over tensors of the chain only.
CHAIN_BINARY = frozenset({"Mul", "Add", "Sub", "Div", "Max", "Min"})


def split_conv_parts(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every Conv → (elementwise chain) → Split-along-channels written as one Conv (and chain) per
    part; the model itself where there is none."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers = reader_counts(graph)
    plans = []
    for split in graph.node:
        sizes = _channel_split_sizes(split, model, initializers)
        found = sizes and _conv_and_chain(split, graph, producer, readers, initializers)
        if found:
            plans.append((split, sizes, *found))
    if not plans:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    replaced: dict[str, list[onnx.NodeProto]] = {}
    removed: set[str] = set()
    for split, sizes, conv, chain in plans:
        replaced[split.output[0]] = _parts(split, sizes, conv, chain, initializers, out.graph)
        removed.update(node.output[0] for node in [conv, *chain])
    nodes = []
    for node in out.graph.node:
        if node.output and node.output[0] in replaced:
            nodes.extend(replaced[node.output[0]])
        elif not (node.output and node.output[0] in removed):
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    still_read = reader_counts(out.graph)
    kept = [t for t in out.graph.initializer if still_read[t.name] or t.name not in initializers]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def _channel_split_sizes(
    split: onnx.NodeProto, model: onnx.ModelProto, initializers: dict[str, onnx.TensorProto]
) -> list[int] | None:
    """The part sizes of a Split given as constants, else None (its axis is checked against the Conv's rank)."""
    if split.op_type != "Split":
        return None
    if default_opset(model) < 13:
        sizes = attribute(split, "split")
    else:
        name = split.input[1] if len(split.input) > 1 else ""
        sizes = tensor_values(initializers[name]).tolist() if name in initializers else None
    return [int(s) for s in sizes] if sizes and len(sizes) == len(split.output) else None


def _conv_and_chain(
    split: onnx.NodeProto,
    graph: onnx.GraphProto,
    producer: dict[str, onnx.NodeProto],
    readers: Counter[str],
    initializers: dict[str, onnx.TensorProto],
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """The Conv feeding the Split and the elementwise nodes between them (in graph order), when each tensor on the
    way is read only on the way (not by another node, not as a graph output)."""
    chain: dict[str, onnx.NodeProto] = {}
    pending, conv = [split.input[0]], None
    while pending:
        name = pending.pop()
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type == "Conv":
            if conv is not None and conv is not node:
                return None
            conv = node
            continue
        if node.op_type not in UNARY_PASSTHROUGH | CHAIN_BINARY or len(node.output) != 1:
            return None
        chain[node.output[0]] = node
        pending.extend(i for i in node.input if i)
    if conv is None or not _whole_conv(conv, initializers, split):
        return None
    expected_reads = Counter({name: 0 for name in (conv.output[0], *chain)})
    expected_reads.update(name for node in [*chain.values(), split] for name in node.input if name in expected_reads)
    if any(readers[name] != count for name, count in expected_reads.items()):
        return None  # a tensor on the way is read elsewhere too: its full channels are needed there
    return conv, [node for node in graph.node if node.output and node.output[0] in chain]


def _whole_conv(conv: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], split: onnx.NodeProto) -> bool:
    weight = initializers.get(conv.input[1]) if len(conv.input) > 1 else None
    bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    if weight is None or (bias is not None and bias not in initializers) or int(attribute(conv, "group", 1)) != 1:
        return False
    axis = int(attribute(split, "axis", 0))
    return axis == 1 or axis + len(weight.dims) == 1


def _parts(
    split: onnx.NodeProto,
    sizes: list[int],
    conv: onnx.NodeProto,
    chain: list[onnx.NodeProto],
    initializers: dict[str, onnx.TensorProto],
    graph: onnx.GraphProto,
) -> list[onnx.NodeProto]:
    weight = tensor_values(initializers[conv.input[1]])
    bias = tensor_values(initializers[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else None
    nodes, start = [], 0
    for part, (size, output) in enumerate(zip(sizes, split.output, strict=True)):
        suffix = f"__part{part}"
        rename = {name: f"{name}{suffix}" for name in [conv.output[0], *(n.output[0] for n in chain)]}
        rename[split.input[0]] = output  # the part's last tensor is the Split output its readers already read
        cut = slice(start, start + size)
        inputs = [conv.input[0], _add(graph, f"{conv.input[1]}{suffix}", weight[cut])]
        if bias is not None:
            inputs.append(_add(graph, f"{conv.input[2]}{suffix}", bias[cut]))
        nodes.append(_clone(conv, inputs, [rename[conv.output[0]]], f"{conv.name}{suffix}"))
        for node in chain:
            inputs = [rename.get(name, name) for name in node.input]
            nodes.append(_clone(node, inputs, [rename[node.output[0]]], f"{node.name}{suffix}"))
        start += size
    return nodes


def _add(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def _clone(node: onnx.NodeProto, inputs: list[str], outputs: list[str], name: str) -> onnx.NodeProto:
    clone = helper.make_node(node.op_type, inputs, outputs, name=name, domain=node.domain or None)
    clone.attribute.extend(node.attribute)
    return clone
