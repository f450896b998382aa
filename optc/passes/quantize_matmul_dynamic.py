"""Dynamic int8 for MatMul with a constant weight, one weight at a time.

It writes what ONNX Runtime's ``quantize_dynamic`` writes for a MatMul (QOperator format): the activation through
``DynamicQuantizeLinear`` (once per tensor, shared by its readers), ``MatMulInteger`` on the int8 weight, and the
product rescaled by activation scale × weight scale — which ONNX Runtime fuses into ``DynamicQuantizeMatMul`` at
load. The weight codes come from ONNX Runtime's own ``quantize_data``, column by column for per-channel scales, so
they are the same bytes. What differs is memory: ONNX Runtime's quantizer loads the whole model, saves and reloads
it for shape inference and keeps the float and the quantized copies, about 3× the model's size at its peak; here
each weight is read from disk (``optc.tensors``), quantized and dropped before the next, so the model never sits
in memory whole.

``scales`` (from ``quantize_smooth``) divide an input's channels before its ``DynamicQuantizeLinear`` and multiply
the matching weight rows before they are quantized: the float product is unchanged, the int8 one more accurate.
A channel scaled by ``inf`` is zeroed in the int8 product and its weight row is multiplied in float, then added.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.quant_utils import quantize_data

from optc.model_facts import reader_counts
from optc.passes.channel_scaling import divided_input
from optc.tensors import tensor_values

WEIGHT_TYPES = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}


def quantize_matmuls(
    model: onnx.ModelProto,
    nodes: set[str],
    weight_type: str,
    per_channel: bool,
    reduce_range: bool,
    scales: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """``model`` with each MatMul in ``nodes`` (constant 2-D float32 weight) quantized dynamically, the inputs in
    ``scales`` smoothed; a pure rewrite."""
    scales = scales or {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    readers = reader_counts(graph)  # a float weight stays while anything else reads it, an If branch included
    rebuilt: list[onnx.NodeProto] = []
    quantized_inputs: set[str] = set()
    quantized_weights: set[str] = set()  # a weight shared by several MatMuls (tf2onnx's TimeDistributed) is stored once
    added: list[onnx.TensorProto] = []
    float_channels: set[str] = set()
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and node.name in nodes else None
        if weight is None or len(weight.dims) != 2 or weight.data_type != TensorProto.FLOAT:
            rebuilt.append(node)
            continue
        source = node.input[0]
        if source not in quantized_inputs:
            quantized_inputs.add(source)
            if source in scales:
                mul, inverse = divided_input(source, scales[source], np.float32, "smooth", f"{source}_smoothed")
                added.append(inverse)
                rebuilt.append(mul)
            rebuilt.append(
                helper.make_node(
                    "DynamicQuantizeLinear",
                    [f"{source}_smoothed" if source in scales else source],
                    [f"{source}_quantized", f"{source}_scale", f"{source}_zero_point"],
                    name=f"{source}_QuantizeLinear",
                )
            )
        in_float = np.flatnonzero(np.isinf(scales[source])) if source in scales else np.empty(0, np.int64)
        if weight.name not in quantized_weights:
            quantized_weights.add(weight.name)
            added += quantized_weight(weight, scales.get(source), weight_type, per_channel, reduce_range)
            if in_float.size:
                rows = tensor_values(weight)[in_float].astype(np.float32)
                added.append(numpy_helper.from_array(rows, f"{weight.name}_float_rows"))
        readers[weight.name] -= 1
        if not in_float.size:
            rebuilt += _matmul_integer(node, source, weight.name, node.output[0])
            continue
        if f"{source}_float_channels" not in float_channels:
            float_channels.add(f"{source}_float_channels")
            indices = numpy_helper.from_array(in_float.astype(np.int64), f"{source}_float_channel_indices")
            added.append(indices)
            rebuilt.append(
                helper.make_node(
                    "Gather",
                    [source, indices.name],
                    [f"{source}_float_channels"],
                    name=f"{source}_float_channels",
                    axis=-1,
                )
            )
        output = node.output[0]
        rebuilt += _matmul_integer(node, source, weight.name, f"{output}_int8_part")
        rebuilt += [
            helper.make_node(
                "MatMul",
                [f"{source}_float_channels", f"{weight.name}_float_rows"],
                [f"{output}_float_part"],
                name=f"{node.name}_float_channels",
            ),
            helper.make_node(
                "Add", [f"{output}_int8_part", f"{output}_float_part"], [output], name=f"{node.name}_float_add"
            ),
        ]
    del graph.node[:]
    graph.node.extend(rebuilt)
    kept = [t for t in graph.initializer if readers.get(t.name, 0) > 0]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    return out


def smoothing_facts(model: onnx.ModelProto) -> dict[str, int]:
    """How many inputs of ``model``'s dynamic int8 MatMuls are smoothed, and how many of their channels are
    multiplied in float, read from the nodes and initializers ``quantize_matmuls`` names."""
    return {
        "smoothed_inputs": sum(
            n.op_type == "Mul" and n.output[0] == f"{n.input[0]}_smoothed" for n in model.graph.node
        ),
        "channels_in_float": sum(
            int(np.prod(t.dims)) for t in model.graph.initializer if t.name.endswith("_float_channel_indices")
        ),
    }


def quantized_weight(
    weight: onnx.TensorProto, row_scale: np.ndarray | None, weight_type: str, per_channel: bool, reduce_range: bool
) -> list[onnx.TensorProto]:
    """``<W>_quantized`` [K, N], ``<W>_scale`` and ``<W>_zero_point`` ([N] per channel, scalars otherwise), as
    ONNX Runtime's dynamic quantizer computes them (int8 weights symmetric, uint8 not), rows first multiplied by
    ``row_scale`` where given."""
    qtype = WEIGHT_TYPES[weight_type]
    symmetric = weight_type == "int8"
    values = tensor_values(weight)
    if row_scale is not None:  # rows of channels multiplied in float (inf) are zero here
        values = values * np.where(np.isinf(row_scale), 0, row_scale)[:, None]
    if per_channel:
        columns = [quantize_data(values[:, j], qtype, symmetric, reduce_range) for j in range(values.shape[1])]
        zero_points = np.array([c[0] for c in columns]).reshape(-1)
        scales = np.array([c[1] for c in columns], dtype=np.float32).reshape(-1)
        codes = np.stack([c[2] for c in columns], axis=1)
    else:
        zero_point, scale, codes = quantize_data(values, qtype, symmetric, reduce_range)
        zero_points, scales = np.asarray(zero_point), np.asarray(scale, dtype=np.float32)
    dtype = np.int8 if qtype == TensorProto.INT8 else np.uint8
    return [
        numpy_helper.from_array(codes.astype(dtype), f"{weight.name}_quantized"),
        numpy_helper.from_array(scales, f"{weight.name}_scale"),
        numpy_helper.from_array(zero_points.astype(dtype), f"{weight.name}_zero_point"),
    ]


def _matmul_integer(node: onnx.NodeProto, source: str, weight: str, output: str) -> list[onnx.NodeProto]:
    scales = f"{node.name}_quant_scales_mul:0"
    return [
        helper.make_node("Mul", [f"{source}_scale", f"{weight}_scale"], [scales], name=f"{node.name}_quant_scales_mul"),
        helper.make_node(
            "MatMulInteger",
            [f"{source}_quantized", f"{weight}_quantized", f"{source}_zero_point", f"{weight}_zero_point"],
            [f"{output}_output_quantized"],
            name=f"{node.name}_quant",
        ),
        helper.make_node(
            "Cast",
            [f"{output}_output_quantized"],
            [f"{output}_output_quantized_cast_output"],
            name=f"{node.name}_quant_cast",
            to=TensorProto.FLOAT,
        ),
        helper.make_node(
            "Mul",
            [f"{output}_output_quantized_cast_output", scales],
            [output],
            name=f"{node.name}_quant_output_scale_mul",
        ),
    ]
