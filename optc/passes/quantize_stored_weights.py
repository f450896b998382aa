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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optc.errors import OptcError
from optc.model_facts import all_nodes, final_uses, graph_scopes
from optc.passes.quantize_prepare import subgraph_nodes
from optc.tensors import tensor_values

CONV_OP_TYPES = ("Conv", "ConvTranspose")
RECURRENT_OP_TYPES = ("LSTM", "GRU", "RNN")
# Which inputs are weights, and the axes of the slices that get a scale each: a Conv's kernel [out, in, kh, kw] per
# output channel; a recurrent cell's W [directions, gates x hidden, input] and R per row; a MatMul's matrix [K, N]
# per column (-1), which is stored only inside bodies, where no integer kernel reaches.
WEIGHT_INPUTS = {
    "Conv": ((1,), 1),
    "ConvTranspose": ((1,), 1),
    **{op: ((1, 2), 2) for op in RECURRENT_OP_TYPES},
    "MatMul": ((1,), -1),
}
STORED_WEIGHT_OP_TYPES = tuple(WEIGHT_INPUTS)
LEVELS = 127  # symmetric int8: the scale maps each slice's largest magnitude to 127


def stored_weight_nodes(model: onnx.ModelProto, op_types: tuple[str, ...]) -> set[str]:
    """Names of the ``op_types`` nodes, in the main graph or inside If/Loop/Scan bodies, whose weights are float32
    initializers nothing else reads (of the node's graph or of one enclosing it, a Loop's state slot included; not
    graph inputs, which a caller may override)."""
    return {node.name for uses in _storable(model.graph, op_types).values() for node, _ in uses}


def nested_weight_nodes(model: onnx.ModelProto, op_types: tuple[str, ...]) -> set[str]:
    """The ``stored_weight_nodes`` inside bodies: no quantizer reaches them with an integer kernel (ONNX Runtime's
    static and dynamic quantizers leave bodies alone), so their weights can only be stored in int8."""
    return stored_weight_nodes(model, op_types) - {node.name for node in model.graph.node}


def _storable(graph: onnx.GraphProto, op_types: tuple[str, ...]) -> dict[tuple[int, str], list]:
    """(scope, initializer) → its uses, for every float initializer in ``graph`` or its bodies that only
    ``op_types`` nodes read, as the weights of one layout (scope: the index in ``graph_scopes``)."""
    found, cache = {}, {}
    for scope, (owner, _) in enumerate(graph_scopes(graph)):
        inputs = {i.name for i in owner.input}
        for tensor in owner.initializer:
            if tensor.data_type != TensorProto.FLOAT or tensor.name in inputs:
                continue
            uses = final_uses(owner, tensor.name, cache=cache)
            layouts = {WEIGHT_INPUTS[u[0].op_type][1] if u and u[0].op_type in op_types else None for u in uses}
            if not uses or len(layouts) != 1 or None in layouts:
                continue
            rank_fits = len(tensor.dims) == 2 if layouts == {-1} else len(tensor.dims) >= 3
            if rank_fits and all(u[1] in WEIGHT_INPUTS[u[0].op_type][0] and u[0].name for u in uses):
                found[(scope, tensor.name)] = uses
    return found


def int8_codes(values: np.ndarray, leading: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of ``values`` and the scales, one per slice of the first ``leading`` axes shaped to
    broadcast against them (an all-zero slice gets scale 1); ``leading`` -1: one per column of a matrix."""
    if leading == -1:
        codes, scales = int8_codes(values.T, 1)
        return codes.T, scales.T
    slices = values.shape[:leading]
    largest = np.abs(values.reshape(int(np.prod(slices)), -1)).max(axis=1)
    scales = np.where(largest > 0, largest / LEVELS, 1).astype(np.float32)
    scales = scales.reshape(*slices, *[1] * (values.ndim - leading))
    codes = np.clip(np.rint(values / scales), -LEVELS, LEVELS).astype(np.int8)
    return codes, scales


def store_weights_int8(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """``model`` with the weights of the nodes in ``nodes`` (Conv, ConvTranspose, LSTM, GRU, RNN, and MatMul inside
    bodies; in the main graph or a body) stored as int8 behind ``Cast → Mul`` in the graph that holds the weight
    (which reproduce the weight's name, so the nodes themselves are untouched); a pure rewrite. A weight that
    anything else also reads, or that holds a non-finite value, stays float."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    chosen = {
        key: uses
        for key, uses in _storable(out.graph, STORED_WEIGHT_OP_TYPES).items()
        if all(node.name in nodes for node, _ in uses)
    }
    scopes = list(graph_scopes(out.graph))
    # innermost first: rebuilding a graph copies its nodes, bodies included
    for scope in reversed(range(len(scopes))):
        names = {name: uses[0][0].op_type for (index, name), uses in chosen.items() if index == scope}
        if names:
            _store_in(scopes[scope][0], names)
    return out


def _store_in(graph: onnx.GraphProto, weights: dict[str, str]) -> None:
    """Store the initializers ``weights`` names (each with the op type that reads it) in int8, in place."""
    initializers = {t.name: t for t in graph.initializer}
    stored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, op_type in weights.items():
        values = tensor_values(initializers[name])
        if np.isfinite(values).all():
            stored[name] = int8_codes(values, WEIGHT_INPUTS[op_type][1])
    dequantize = [
        node
        for weight in stored
        for node in (
            helper.make_node(
                "Cast", [f"{weight}_int8"], [f"{weight}_int8_as_float"], name=f"{weight}_to_float", to=TensorProto.FLOAT
            ),
            helper.make_node(
                "Mul", [f"{weight}_int8_as_float", f"{weight}_int8_scale"], [weight], name=f"{weight}_dequantize"
            ),
        )
    ]
    nodes = dequantize + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
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
