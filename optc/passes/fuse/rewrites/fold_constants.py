"""fold_constants: a node whose inputs are all constants is computed once, here, and becomes an initializer.

This covers Constant nodes, weight preprocessing an exporter left in the graph (Transpose/Cast of a weight), and
shape arithmetic: a Shape node whose input has a fully known shape (from ONNX shape inference) is a constant too,
which lets the Gather/Concat/Unsqueeze chains built on it fold away.

Values are computed with ONNX's reference evaluator, node by node. Not folded: random ops (a new value per run),
DequantizeLinear and the Cast of an int8/uint8 constant (folding them would undo the compression of a quantized
weight, such as the Conv weights dynamic int8 stores for ONNX Runtime to fold at load), non-standard domains, nodes that
produce graph outputs, and results much larger than their inputs (an Expand of a scalar to a big tensor would only
bloat the file).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, attribute, copy_model, has_subgraph, is_standard

NOT_FOLDED = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
    | {"DequantizeLinear"}
)
GROWTH_FREE_BYTES = 1 << 20  # a folded result may exceed its inputs' size by this much before folding stops paying


@rewrite("fold_constants", "nodes computing only from constants (shapes included) replaced by their values")
def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    opsets = {o.domain: o.version for o in model.opset_import}
    folded_values: dict[str, np.ndarray] = {}
    folded_nodes: list[onnx.NodeProto] = []
    # The graph is edited after the sweep: shapes are inferred on first use, and inferred on a graph half folded they
    # came out poorer (Silero VAD left with 61 nodes, not 52).
    for node in model.graph.node:
        if not is_standard(node) or has_subgraph(node) or node.op_type in NOT_FOLDED:
            continue
        if any(name in index.graph_outputs for name in node.output) or _widens_int8_constant(node, index):
            continue
        outputs = (
            _shape_value(node, index) if node.op_type == "Shape" else _evaluate(node, index, folded_values, opsets)
        )
        if outputs is None:
            continue
        folded_nodes.append(node)
        folded_values.update((name, value) for name, value in zip(node.output, outputs, strict=True) if name)
    for node in folded_nodes:
        model.graph.node.remove(node)
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in folded_values.items())
    return model, len(folded_nodes)


def _widens_int8_constant(node: onnx.NodeProto, index: GraphIndex) -> bool:
    if node.op_type != "Cast":
        return False
    value = index.const(node.input[0])
    return value is not None and value.dtype in (np.int8, np.uint8)


def _evaluate(node, index: GraphIndex, folded: dict[str, np.ndarray], opsets) -> list[np.ndarray] | None:
    feeds = {}
    for name in node.input:
        if not name:
            continue
        value = folded[name] if name in folded else index.const(name)
        if value is None:
            return None
        feeds[name] = value
    graph = helper.make_graph(
        [node], "fold", [], [helper.ValueInfoProto(name=o) for o in node.output if o], initializer=[]
    )
    try:
        evaluator = ReferenceEvaluator(graph, opsets={"": opsets.get("", opsets.get("ai.onnx", 17))})
        outputs = [np.asarray(v) for v in evaluator.run(None, feeds)]
    except Exception:  # noqa: BLE001 - an op the reference evaluator cannot run is simply left in the graph
        return None
    inputs_bytes = sum(v.nbytes for v in feeds.values())
    if sum(v.nbytes for v in outputs) > inputs_bytes + GROWTH_FREE_BYTES:
        return None
    for name, value in zip((o for o in node.output if o), outputs, strict=True):
        expected = index.elem_type(name, symbolic=False)
        if expected is not None and helper.tensor_dtype_to_np_dtype(expected) != value.dtype:
            return None  # the evaluator and the graph disagree on the type: leave it to ONNX Runtime
    return outputs


def _shape_value(node: onnx.NodeProto, index: GraphIndex) -> list[np.ndarray] | None:
    shape = index.shape(node.input[0])
    if shape is None:
        return None
    start, end = attribute(node, "start", 0), attribute(node, "end", len(shape))
    dims = shape[start:end]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return [np.array(dims, np.int64)]
