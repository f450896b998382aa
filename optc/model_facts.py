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


def final_uses(
    graph: onnx.GraphProto, name: str, carried: frozenset[str] = frozenset(), cache: dict | None = None
) -> list[tuple[onnx.NodeProto, int] | None]:
    """Where the value of ``name`` ends up being read, as (node, input index), following it into bodies that read
    it from outside, through Identity, and through a Loop's state slot that its body passes on unchanged (tf2onnx and
    paddle2onnx hand a loop's weights in that way), the Loop's final value of the slot included. None stands for a
    graph output (``carried`` names the body outputs that only pass a state slot on). Pass one ``cache`` dict to
    calls on the same graph to index each (sub)graph once."""
    if not name:
        return []
    cache = {} if cache is None else cache
    reads, captures = _read_index(graph, cache)
    uses: list[tuple[onnx.NodeProto, int] | None] = [
        None for o in graph.output if o.name == name and o.name not in carried
    ]
    for node, index in reads.get(name, []):
        slot = _passed_through_slot(node, index)
        if node.op_type == "Identity":
            uses += final_uses(graph, node.output[0], carried, cache)
        elif slot is None:
            uses.append((node, index))
        else:
            body, inner, outer_output = slot
            uses += final_uses(body, inner, frozenset({inner, body.output[index - 1].name}), cache)
            uses += final_uses(graph, outer_output, carried, cache)
    for body in captures.get(name, []):
        uses += final_uses(body, name, frozenset(), cache)
    return uses


def _read_index(graph: onnx.GraphProto, cache: dict) -> tuple[dict, dict]:
    """(name → [(node, input index)], name → [bodies reading it from outside]) of ``graph``, built once per cache."""
    held = cache.get(id(graph))
    if held is not None and held[0] is graph:  # the graph is held too, so its id cannot be reused meanwhile
        return held[1]
    reads: dict[str, list] = {}
    captures: dict[str, list] = {}
    for node in graph.node:
        for index, read in enumerate(node.input):
            reads.setdefault(read, []).append((node, index))
        for body in subgraphs(node):
            for read in _outer_reads(body):
                captures.setdefault(read, []).append(body)
    cache[id(graph)] = (graph, (reads, captures))
    return reads, captures


def _passed_through_slot(node: onnx.NodeProto, index: int) -> tuple[onnx.GraphProto, str, str] | None:
    """(body, the body's name for it, the Loop's output of its final value) where input ``index`` of a Loop is a state
    slot the body passes on unchanged (directly or through one Identity); None otherwise."""
    if node.op_type != "Loop" or index < 2:
        return None
    body = subgraphs(node)[0]
    if len(body.input) <= index or len(body.output) < index:
        return None
    inner, passed = body.input[index].name, body.output[index - 1].name
    through_identity = any(
        n.op_type == "Identity" and list(n.input) == [inner] and n.output[0] == passed for n in body.node
    )
    if passed != inner and not through_identity:
        return None
    return body, inner, node.output[index - 2] if len(node.output) > index - 2 else ""


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
