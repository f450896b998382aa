"""matmul_add_to_gemm: ``MatMul(A, W) + b`` becomes ``Gemm(A, W, b)`` when A is known to be 2-D.

Gemm takes only 2-D operands, so a MatMul over a 3-D activation (a transformer's [batch, seq, hidden]) is left alone,
as is one whose A has an unknown rank. W must be a constant matrix and b a constant broadcastable to one row.
The Gemm keeps the MatMul's name, so exclusions by name in later passes still find it.
"""

from __future__ import annotations

import onnx
from onnx import helper

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, copy_model, is_standard


@rewrite("matmul_add_to_gemm", "MatMul + Add of a constant row fused into Gemm (2-D inputs only)")
def matmul_add_to_gemm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    for matmul in list(model.graph.node):
        if matmul.op_type != "MatMul" or not is_standard(matmul):
            continue
        weight = index.const(matmul.input[1])
        shape = index.shape(matmul.input[0])
        add = index.sole_consumer(matmul.output[0])
        if weight is None or weight.ndim != 2 or weight.dtype.kind != "f" or shape is None or len(shape) != 2:
            continue
        if add is None or add.op_type != "Add" or not is_standard(add):
            continue
        other = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
        bias = index.const(other)
        if bias is None or bias.dtype != weight.dtype or bias.size not in (1, weight.shape[1]) or bias.ndim > 2:
            continue
        if bias.ndim == 2 and bias.shape[0] != 1:
            continue
        gemm = helper.make_node("Gemm", [matmul.input[0], matmul.input[1], other], [add.output[0]], name=matmul.name)
        position = list(model.graph.node).index(matmul)
        model.graph.node.remove(matmul)
        model.graph.node.remove(add)
        model.graph.node.insert(position, gemm)
        applied += 1
    return model, applied
