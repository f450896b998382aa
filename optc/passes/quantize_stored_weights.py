"""Weights stored in int8 for float compute: what dynamic int8 and weight-only quantization do with the weights of
ops they have no integer kernel for — convolutions, and recurrent cells where no ``DynamicQuantizeLSTM`` serves.

Each constant float weight becomes an int8 initializer with one scale per slice of its leading axes (a Conv's output
channels; a recurrent weight's rows, one per direction and gate unit), read back through ``Cast → Mul``. ONNX
Runtime constant-folds that pair when it loads the model, so the session holds and runs the same float op as before,
NCHWc kernels and prepacked recurrent weights included, while the file keeps one byte per weight. Two alternatives
measured worse on the corpus CNNs (AVX2, 1 thread): ``DequantizeLinear`` in the pair's place is not folded (ONNX
Runtime keeps it for its QDQ fusions), so it dequantized on every run and the Conv lost its NCHWc kernels
(0.44-0.98x fp32); a dynamically quantized Conv (ConvInteger) ran at 0.15-0.61x. The corpus's GRU encoders, and its
LSTM models under weight-only quantization, kept their recurrent weights (most of each model) in float before.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optc.errors import OptcError
from optc.model_facts import all_nodes, graph_scopes, reader_counts
from optc.passes.quantize_prepare import subgraph_nodes
from optc.tensors import tensor_values

CONV_OP_TYPES = ("Conv", "ConvTranspose")
RECURRENT_OP_TYPES = ("LSTM", "GRU", "RNN")
# Which inputs are weights, and how many leading axes index the slices that get a scale each: a Conv's kernel
# [out, in, kh, kw] per output channel; a recurrent cell's W [directions, gates x hidden, input] and R per row.
WEIGHT_INPUTS = {"Conv": ((1,), 1), "ConvTranspose": ((1,), 1), **{op: ((1, 2), 2) for op in RECURRENT_OP_TYPES}}
STORED_WEIGHT_OP_TYPES = tuple(WEIGHT_INPUTS)
LEVELS = 127  # symmetric int8: the scale maps each slice's largest magnitude to 127


def stored_weight_nodes(model: onnx.ModelProto, op_types: tuple[str, ...]) -> set[str]:
    """Names of the ``op_types`` nodes, in the main graph or inside If/Loop/Scan bodies, whose weights are float32
    initializers of rank 3 or more of the graph holding the node (not graph inputs, which a caller may override)."""
    return {name for graph, _ in graph_scopes(model.graph) for name in _weighted_in(graph, op_types)}


def nested_weight_nodes(model: onnx.ModelProto, op_types: tuple[str, ...]) -> set[str]:
    """The ``stored_weight_nodes`` inside bodies: no quantizer reaches them with an integer kernel (ONNX Runtime's
    static and dynamic quantizers leave bodies alone), so their weights can only be stored in int8."""
    return {name for graph, nested in graph_scopes(model.graph) if nested for name in _weighted_in(graph, op_types)}


def _weighted_in(graph: onnx.GraphProto, op_types: tuple[str, ...]) -> set[str]:
    inputs = {i.name for i in graph.input}
    weights = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 3}
    return {
        n.name
        for n in graph.node
        if n.name
        and n.op_type in op_types
        and all(len(n.input) > i and n.input[i] in weights and n.input[i] not in inputs for i in _weights_of(n))
    }


def _weights_of(node: onnx.NodeProto) -> tuple[int, ...]:
    return WEIGHT_INPUTS[node.op_type][0] if node.op_type in WEIGHT_INPUTS else ()


def int8_codes(values: np.ndarray, leading: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of ``values`` and the scales, one per slice of the first ``leading`` axes shaped to
    broadcast against them (an all-zero slice gets scale 1)."""
    slices = values.shape[:leading]
    largest = np.abs(values.reshape(int(np.prod(slices)), -1)).max(axis=1)
    scales = np.where(largest > 0, largest / LEVELS, 1).astype(np.float32)
    scales = scales.reshape(*slices, *[1] * (values.ndim - leading))
    codes = np.clip(np.rint(values / scales), -LEVELS, LEVELS).astype(np.int8)
    return codes, scales


def store_weights_int8(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """``model`` with the weights of the nodes in ``nodes`` (Conv, ConvTranspose, LSTM, GRU, RNN; in the main graph
    or a body) stored as int8 behind ``Cast → Mul`` (which reproduce the weight's name, so the node itself is
    untouched); a pure rewrite. A weight that anything else also reads, or that holds a non-finite value, stays
    float."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for graph, _ in reversed(list(graph_scopes(out.graph))):
        _store_in(graph, nodes)
    return out


def _store_in(graph: onnx.GraphProto, nodes: set[str]) -> None:
    """Store the weights of ``graph``'s own nodes in ``nodes`` in int8, in place (``graph`` is a fresh copy)."""
    storable = _weighted_in(graph, STORED_WEIGHT_OP_TYPES) & nodes
    candidates = {n.name: n for n in graph.node if n.name in storable}
    if not candidates:
        return
    readers = reader_counts(graph)
    reads = Counter(n.input[i] for n in candidates.values() for i in _weights_of(n))
    leading = {n.input[i]: WEIGHT_INPUTS[n.op_type][1] for n in candidates.values() for i in _weights_of(n)}
    initializers = {t.name: t for t in graph.initializer}
    stored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, count in reads.items():
        values = tensor_values(initializers[name]) if name in initializers and readers[name] == count else None
        if values is not None and np.isfinite(values).all():
            stored[name] = int8_codes(values, leading[name])
    rebuilt: list[onnx.NodeProto] = []
    dequantized: set[str] = set()  # a weight several nodes read is dequantized once, before the first of them
    for node in graph.node:
        weights = [node.input[i] for i in _weights_of(node)] if node.name in candidates else []
        for weight in weights:
            if weight in stored and weight not in dequantized:
                dequantized.add(weight)
                rebuilt += [
                    helper.make_node(
                        "Cast",
                        [f"{weight}_int8"],
                        [f"{weight}_int8_as_float"],
                        name=f"{weight}_to_float",
                        to=TensorProto.FLOAT,
                    ),
                    helper.make_node(
                        "Mul",
                        [f"{weight}_int8_as_float", f"{weight}_int8_scale"],
                        [weight],
                        name=f"{weight}_dequantize",
                    ),
                ]
        rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    kept = [t for t in graph.initializer if t.name not in stored]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for name, (codes, scales) in stored.items():
        graph.initializer.extend(
            [numpy_helper.from_array(codes, f"{name}_int8"), numpy_helper.from_array(scales, f"{name}_int8_scale")]
        )


def int8_stored_weights(model: onnx.ModelProto) -> int:
    """How many weights of ``model`` are stored in int8, read from the nodes ``store_weights_int8`` names."""
    return sum(n.op_type == "Mul" and n.name == f"{n.output[0]}_dequantize" for n in all_nodes(model.graph))


def nothing_to_quantize(model: onnx.ModelProto, label: str, what: str, mode: str, conv_weights: str) -> OptcError:
    """The refusal of a model holding neither ``what`` (a mode's own candidates) nor, where ``conv_weights`` is
    int8, a Conv weight to store."""
    kinds = what if conv_weights == "float" else f"{what} or Conv"
    readers = {*what.split("/"), *([] if conv_weights == "float" else CONV_OP_TYPES)}
    readers |= {"Gemm"} if "MatMul" in readers else set()  # a Gemm is quantized as its MatMul
    nested = subgraph_nodes(model, readers)
    where = f" outside If/Loop/Scan subgraphs ({nested} sit inside them)" if nested else ""
    return OptcError(
        f"{label}: the model has no {kinds} node with constant weights{where}, so {mode} has nothing to quantize",
        hint="inside If/Loop/Scan bodies optc only stores the weights of Conv and LSTM/GRU/RNN nodes in int8; it "
        "quantizes nothing else there (static int8 neither)"
        if nested
        else "set conv_weights: int8 to store its Conv weights in int8, or use the int8 recipe (static int8, with "
        "--calibration-data)"
        if stored_weight_nodes(model, CONV_OP_TYPES) and conv_weights == "float"
        else "int8 shrinks the weights of MatMul, Gemm, Gather and Conv nodes; `optc inspect` shows what this "
        "model holds",
    )
