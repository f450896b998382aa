"""Conv weights stored in int8 for float compute: what dynamic int8 and weight-only quantization do with convolutions.

Each constant float Conv/ConvTranspose weight becomes an int8 initializer with one scale per slice of its first axis
(a Conv's output channels), read back through ``Cast → Mul``. ONNX Runtime constant-folds that pair when it loads
the model, so the session holds and runs the same float Conv as before, NCHWc kernels included, while the file keeps
one byte per weight. Two alternatives measured worse on the corpus CNNs (AVX2, 1 thread): ``DequantizeLinear`` in
the pair's place is not folded (ONNX Runtime keeps it for its QDQ fusions), so it dequantized on every run and the
Conv lost its NCHWc kernels (0.44-0.98x fp32); a dynamically quantized Conv (ConvInteger) ran at 0.15-0.61x.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optc.errors import OptcError
from optc.model_facts import reader_counts
from optc.tensors import tensor_values

CONV_OP_TYPES = ("Conv", "ConvTranspose")
LEVELS = 127  # symmetric int8: the scale maps each slice's largest magnitude to 127


def conv_weight_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the Conv/ConvTranspose nodes whose weight is a float32 initializer (not a graph input, which a
    caller may override) of rank 3 or more."""
    graph = model.graph
    inputs = {i.name for i in graph.input}
    weights = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 3}
    return {
        n.name
        for n in graph.node
        if n.op_type in CONV_OP_TYPES and len(n.input) > 1 and n.input[1] in weights and n.input[1] not in inputs
    }


def int8_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of ``values`` and the scales, one per slice of axis 0 shaped to broadcast against them
    (an all-zero slice gets scale 1)."""
    largest = np.abs(values.reshape(values.shape[0], -1)).max(axis=1)
    scales = np.where(largest > 0, largest / LEVELS, 1).astype(np.float32).reshape(-1, *[1] * (values.ndim - 1))
    codes = np.clip(np.rint(values / scales), -LEVELS, LEVELS).astype(np.int8)
    return codes, scales


def store_conv_weights_int8(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """``model`` with the weights of the Conv nodes in ``nodes`` stored as int8 behind ``Cast → Mul`` (which
    reproduce the weight's name, so the Conv itself is untouched); a pure rewrite. A weight that anything else also
    reads, or that holds a non-finite value, stays float."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    candidates = conv_weight_nodes(model) & nodes
    readers = reader_counts(graph)
    convs_reading = Counter(n.input[1] for n in graph.node if n.name in candidates)
    initializers = {t.name: t for t in graph.initializer}
    stored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, count in convs_reading.items():
        values = tensor_values(initializers[name]) if name in initializers and readers[name] == count else None
        if values is not None and np.isfinite(values).all():
            stored[name] = int8_codes(values)
    rebuilt: list[onnx.NodeProto] = []
    dequantized: set[str] = set()  # a weight several Convs read is dequantized once, before the first of them
    for node in graph.node:
        weight = node.input[1] if node.name in candidates else None
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
                    "Mul", [f"{weight}_int8_as_float", f"{weight}_int8_scale"], [weight], name=f"{weight}_dequantize"
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
    return out


def int8_conv_weights(model: onnx.ModelProto) -> int:
    """How many Conv weights of ``model`` are stored in int8, read from the nodes ``store_conv_weights_int8`` names."""
    return sum(n.op_type == "Mul" and n.name == f"{n.output[0]}_dequantize" for n in model.graph.node)


def nothing_to_quantize(model: onnx.ModelProto, label: str, what: str, mode: str, conv_weights: str) -> OptcError:
    """The refusal of a model holding neither ``what`` (a mode's own candidates) nor, where ``conv_weights`` is
    int8, a Conv weight to store."""
    kinds = what if conv_weights == "float" else f"{what} or Conv"
    return OptcError(
        f"{label}: the model has no {kinds} node with constant weights, so {mode} has nothing to quantize",
        hint="set conv_weights: int8 to store its Conv weights in int8, or use the int8 recipe (static int8, with "
        "--calibration-data)"
        if conv_weight_nodes(model) and conv_weights == "float"
        else "int8 shrinks the weights of MatMul, Gemm, Gather and Conv nodes; `optc inspect` shows what this "
        "model holds",
    )
