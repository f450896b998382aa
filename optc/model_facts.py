"""Facts about a model read from its graph alone: no session, no data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import onnx
from pydantic import BaseModel

from optc.tensors import tensor_values

QUANTIZED_OP_TYPES = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSoftmax",
        "QAttention",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "QEmbedLayerNormalization",
        "DynamicQuantizeLSTM",
        "MatMulNBits",
    }
)
# Ops whose weights are "the model": counted for sparsity.
WEIGHTED_OP_TYPES = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


class TensorInfo(BaseModel):
    name: str
    dtype: str
    shape: list[int | str | None]


def _elem_type_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "unknown"


def value_info_of(value: onnx.ValueInfoProto) -> TensorInfo:
    t = value.type.tensor_type
    shape: list[int | str | None] = []
    if t.HasField("shape"):
        for d in t.shape.dim:
            shape.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
    dtype = _elem_type_name(t.elem_type) if value.type.HasField("tensor_type") else "non-tensor"
    return TensorInfo(name=value.name, dtype=dtype, shape=shape)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (IR < 4 lists initializers as inputs too)."""
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of an If/Loop/Scan node; empty for every other node."""
    bodies = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            bodies.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            bodies.extend(attr.graphs)
    return bodies


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and, depth first, of the subgraphs inside it."""
    for node in graph.node:
        yield node
        for body in subgraphs(node):
            yield from all_nodes(body)


def graph_scopes(graph: onnx.GraphProto, nested: bool = False) -> Iterator[tuple[onnx.GraphProto, bool]]:
    """``graph`` and, depth first, every body inside it, each with whether it is a body. A rewrite that rebuilds
    a graph's node list copies the bodies with it: walk this in reverse, innermost first."""
    yield graph, nested
    for node in graph.node:
        for body in subgraphs(node):
            yield from graph_scopes(body, True)


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Names ``node`` reads from its graph: its inputs, and whatever its subgraphs (at any depth) read from outside
    themselves — what orders it after their producers."""
    return {name for name in node.input if name} | set().union(*(_outer_reads(sub) for sub in subgraphs(node)))


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads that it does not define itself (inputs, initializers or node outputs)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    defined |= {t.values.name for t in graph.sparse_initializer}
    defined |= {out for node in graph.node for out in node.output}
    wanted: set[str] = set()
    for node in graph.node:
        wanted |= node_reads(node)
    return wanted - defined


def topological_order(graph: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> list[onnx.NodeProto]:
    """The graph's nodes with every producer before its readers, reads inside its subgraphs included (names in
    ``outer`` come from enclosing scopes); a cycle keeps the rest in the order it had."""
    available = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    reads = {id(n): node_reads(n) for n in pending}
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if reads[id(n)] <= available]
        if not ready:
            ordered.extend(pending)
            break
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    return ordered


def in_topological_order(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every graph's nodes in topological order, subgraph bodies included. ONNX Runtime's quantizers
    (static and dynamic) sort their output by node inputs alone, so an If can land before what its branches read
    (Silero VAD)."""

    def sort(graph: onnx.GraphProto, outer: frozenset[str]) -> None:
        ordered = topological_order(graph, outer)
        del graph.node[:]
        graph.node.extend(ordered)
        scope = outer | {i.name for i in graph.input} | {t.name for t in graph.initializer}
        scope |= {name for node in graph.node for name in node.output}
        for node in graph.node:
            for body in subgraphs(node):
                sort(body, frozenset(scope))

    if not _misordered(model.graph, frozenset()):
        return model  # no copy: a large model's weights would be held twice
    out = onnx.ModelProto()
    out.CopyFrom(model)
    sort(out.graph, frozenset())
    return out


def _misordered(graph: onnx.GraphProto, outer: frozenset[str]) -> bool:
    available = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        if not node_reads(node) <= available:
            return True
        available.update(node.output)
    return any(_misordered(body, frozenset(available)) for node in graph.node for body in subgraphs(node))


def reader_counts(graph: onnx.GraphProto) -> Counter[str]:
    """How many times each name is read in ``graph``: node inputs, reads from inside If/Loop bodies, graph outputs.
    A rewrite may drop an initializer only once nothing counts it any more."""
    reads = [n for node in graph.node for n in (*node.input, *sorted(node_reads(node) - set(node.input)))]
    return Counter(reads + [o.name for o in graph.output])


def node_count(model: onnx.ModelProto) -> int:
    return sum(1 for _ in all_nodes(model.graph))


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(n.op_type for n in all_nodes(model.graph)).most_common())


def parameter_count(model: onnx.ModelProto) -> int:
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in QUANTIZED_OP_TYPES for n in all_nodes(model.graph))


def weight_sparsity(model: onnx.ModelProto) -> float:
    """Fraction of exact zeros among the float weights of Conv/Gemm/MatMul nodes."""
    initializers = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    zeros = total = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OP_TYPES or len(node.input) < 2:
            continue
        tensor = initializers.get(node.input[1])
        if tensor is None or tensor.name in seen or tensor.data_type not in FLOAT_TYPES:
            continue
        seen.add(tensor.name)
        values = tensor_values(tensor)
        zeros += int(values.size - np.count_nonzero(values))
        total += values.size
    return zeros / total if total else 0.0


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class ModelSummary(BaseModel):
    path: str
    size_bytes: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    nodes: int
    op_types: dict[str, int]
    parameters: int
    weight_sparsity: float
    quantized: bool
    node_names: list[str] | None = None


def summarize(model: onnx.ModelProto, path: str, size_bytes: int, with_nodes: bool = False) -> ModelSummary:
    return ModelSummary(
        path=path,
        size_bytes=size_bytes,
        ir_version=model.ir_version,
        opsets={o.domain or "ai.onnx": o.version for o in model.opset_import},
        producer=" ".join(filter(None, [model.producer_name, model.producer_version])),
        inputs=[value_info_of(v) for v in graph_inputs(model)],
        outputs=[value_info_of(v) for v in model.graph.output],
        nodes=node_count(model),
        op_types=op_histogram(model),
        parameters=parameter_count(model),
        weight_sparsity=weight_sparsity(model),
        quantized=is_quantized(model),
        node_names=[f"{n.name} ({n.op_type})" for n in model.graph.node] if with_nodes else None,
    )


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name``, or ``default`` where the node does not set it."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default
