"""Rewrites that make exported models look like what ONNX Runtime's static quantizer expects.

Exporters other than a recent PyTorch (Paddle, tf2onnx, spox, old torch.onnx) store weights as ``Constant`` nodes,
list initializers as graph inputs (IR < 4), leave nodes unnamed or target opsets before 13. The quantizer then treats
weights as activations (nothing shrinks), cannot exclude nodes by name, or writes per-channel ``DequantizeLinear``
nodes with an ``axis`` the old opset lacks, or fails outright on a ``Gemm`` whose C is not one value per column.
Each function here is a pure model → model rewrite.
"""

from __future__ import annotations

import bisect

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from optc.model_facts import all_nodes, default_opset, subgraphs
from optc.tensors import tensor_values

PER_CHANNEL_OPSET = 13  # DequantizeLinear gained `axis` (per-channel) in opset 13
_CONSTANT_VALUE_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def constants_to_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Turn top-level ``Constant`` nodes holding numbers into initializers, so weights are quantized as weights."""
    out = _copy(model)
    graph = out.graph
    kept, moved = [], 0
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        value_attr = next((attrs[name] for name in _CONSTANT_VALUE_ATTRS if name in attrs), None)
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or value_attr is None:
            kept.append(node)
            continue
        value = helper.get_attribute_value(value_attr)
        if isinstance(value, onnx.TensorProto):
            array = tensor_values(value)
        else:
            array = np.asarray(value, dtype=np.float32 if "float" in value_attr.name else np.int64)
        graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        moved += 1
    del graph.node[:]
    graph.node.extend(kept)
    return out, moved


def unprefixed_initializer_names(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Initializers whose name begins another tensor's name renamed (``<name>__init<i>``), and how many.

    ONNX Runtime's static quantizer derives new names by appending to old ones, and on tf2onnx's names, where a Conv's
    bias ``.../conv1d_25`` and its output ``.../conv1d_252`` differ by a trailing digit, its quantized model fed a
    [36] bias to a 4-D Transpose (basic-pitch; its own ``quantize_static`` too): "Invalid attribute perm". Only the
    names of constants change; the nodes keep theirs."""
    graph = model.graph
    names = sorted({o for n in graph.node for o in n.output} | {t.name for t in graph.initializer})
    taken = set(names)
    renamed: dict[str, str] = {}
    for index, tensor in enumerate(graph.initializer):
        position = bisect.bisect_right(names, tensor.name)
        if position < len(names) and names[position].startswith(tensor.name):
            new = f"{tensor.name}__init{index}"
            while new in taken:
                new += "_"
            renamed[tensor.name] = new
            taken.add(new)
    if not renamed:
        return model, 0
    out = _copy(model)
    for tensor in out.graph.initializer:
        tensor.name = renamed.get(tensor.name, tensor.name)
    for node in all_nodes(out.graph):
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for value in (*out.graph.input, *out.graph.value_info):
        value.name = renamed.get(value.name, value.name)
    return out, len(renamed)


def normalize_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """One ``opset_import`` entry per domain, the default one spelled ``""``: models merged with onnx.compose repeat
    entries, and some exporters write ``ai.onnx``; ONNX Runtime's quantizer then stops with "Failed to find proper
    ai.onnx domain". Repeated entries keep their highest version."""
    versions: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        versions[domain] = max(versions.get(domain, 0), entry.version)
    if len(versions) == len(model.opset_import) and all(e.domain != "ai.onnx" for e in model.opset_import):
        return model
    out = _copy(model)
    del out.opset_import[:]
    out.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in versions.items())
    return out


def drop_initializer_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Remove initializers from the graph inputs (IR < 4 style): ONNX Runtime treats those as overridable inputs,
    so the quantizer sees no constant weights and quantizes nothing."""
    initializers = {t.name for t in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in initializers]
    if not listed:
        return model, 0
    out = _copy(model)
    real = [i for i in out.graph.input if i.name not in initializers]
    del out.graph.input[:]
    out.graph.input.extend(real)
    out.ir_version = max(out.ir_version, 4)  # IR 4 is where initializers stopped having to be inputs
    return out, len(listed)


def name_unnamed_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every top-level node a unique name, so exclusions, sensitivity and the report can refer to it."""
    if all(node.name for node in model.graph.node) and len({n.name for n in model.graph.node}) == len(model.graph.node):
        return model
    out = _copy(model)
    taken: set[str] = set()
    for index, node in enumerate(out.graph.node):
        if not node.name or node.name in taken:
            node.name = f"{node.op_type}_{index}" if f"{node.op_type}_{index}" not in taken else f"node_{index}"
        taken.add(node.name)
    return out


def upgrade_opset(model: onnx.ModelProto, target: int = PER_CHANNEL_OPSET) -> onnx.ModelProto | None:
    """The model converted to ``target`` with onnx's version converter, or None when it cannot be converted
    (then quantize per tensor). A model already at ``target`` or later is returned unchanged."""
    if default_opset(model) >= target:
        return model
    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception:  # noqa: BLE001 - the converter raises many types; any failure means "not convertible"
        return None
    return converted


def subgraph_nodes(model: onnx.ModelProto, op_types: set[str] | None) -> int:
    """How many nodes of ``op_types`` (any, when None) sit inside If/Loop/Scan bodies, out of the quantizer's reach."""

    def count(graph: onnx.GraphProto, nested: bool) -> int:
        total = 0
        for node in graph.node:
            if nested and (op_types is None or node.op_type in op_types):
                total += 1
            total += sum(count(body, True) for body in subgraphs(node))
        return total

    return count(model.graph, False)


def gemm_bias_columns(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every Gemm with a constant C broadcast along its rows (shape [1, N], [1] or a scalar) a 1-D C of N values.

    ONNX Runtime's QDQ quantizer reads a Gemm's C one value per output column and stops with "The truth value of an
    array ... is ambiguous" on a [1, N] row — the form its own pre-processing gives a MatMul + Add of a tf2onnx
    export. The result is the same: broadcasting a row over the rows is what Gemm does with a 1-D C.
    """
    initializers = {t.name: t for t in model.graph.initializer}
    columns_of: dict[int, np.ndarray] = {}
    for position, node in enumerate(model.graph.node):
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[2] not in initializers:
            continue
        weight, bias = initializers.get(node.input[1]), initializers[node.input[2]]
        if weight is None or len(weight.dims) != 2:
            continue
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        columns = weight.dims[0] if transposed else weight.dims[1]
        dims = list(bias.dims)
        if dims != [columns] and np.prod(dims, dtype=np.int64) in (1, columns) and all(d == 1 for d in dims[:-1]):
            columns_of[position] = np.broadcast_to(tensor_values(bias).reshape(-1), (columns,)).copy()
    if not columns_of:
        return model
    model = _copy(model)  # the quantizer drops the [1, N] originals once nothing reads them
    for position, values in columns_of.items():
        gemm = model.graph.node[position]
        name = f"{gemm.input[2]}_columns_{position}"
        model.graph.initializer.append(numpy_helper.from_array(values, name))
        gemm.input[2] = name
    return model


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(A, B, C)`` with constant B (alpha = beta = 1, transA = 0) to ``MatMul(A, B') + C``.

    The MatMul keeps the Gemm's name, so exclusions by name still apply to it.
    """
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    graph = model_out.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rewritable = (
            node.op_type == "Gemm"
            and node.input[1] in initializers
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and attrs.get("transA", 0) == 0
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in initializers)
        )
        if not rewritable:
            new_nodes.append(node)
            continue
        weight = tensor_values(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        weight_name = node.input[1]
        if attrs.get("transB", 0):
            weight_name = f"{node.input[1]}_matmul_{node.name or len(new_nodes)}"
            graph.initializer.append(numpy_helper.from_array(weight, weight_name))
            if consumers[node.input[1]] == 1:
                graph.initializer.remove(initializers[node.input[1]])
        has_bias = len(node.input) >= 3 and node.input[2]
        matmul_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [matmul_out], name=node.name))
        if has_bias:
            new_nodes.append(
                helper.make_node("Add", [matmul_out, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            )
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model_out
