"""fold_scale_bias: Mul, Div, Add or Sub by a per-channel constant after a Conv/ConvTranspose/Gemm joins its weights.

The constant must broadcast along the channel axis only (shape (C,1,1), (1,C,1,1), scalar...): anything that varies
along a spatial or batch axis, or would widen the output, cannot live in a per-channel weight and bias.
"""

from __future__ import annotations

import numpy as np
import onnx

from optc.passes.fuse.channel_affine import fold_affine, output_channels
from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, copy_model, is_standard

COMMUTATIVE = ("Mul", "Add")


@rewrite("fold_scale_bias", "Mul/Div/Add/Sub by a per-channel constant folded into the preceding Conv/Gemm")
def fold_scale_bias(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    touched: set[str] = set()
    for node in list(model.graph.node):
        if node.op_type not in ("Mul", "Div", "Add", "Sub") or not is_standard(node):
            continue
        data, constant = node.input[0], index.const(node.input[1])
        if constant is None and node.op_type in COMMUTATIVE:
            data, constant = node.input[1], index.const(node.input[0])
        producer = index.producers.get(data)
        if constant is None or producer is None or producer.name in touched or index.sole_consumer(data) is not node:
            continue
        found = output_channels(index, producer)
        if found is None:
            continue
        vector = _per_channel(constant, *found)
        if vector is None or (node.op_type == "Div" and not np.all(vector)):
            continue
        channels = len(vector)
        ones, zeros = np.ones(channels), np.zeros(channels)
        scale, shift = {
            "Mul": (vector, zeros),
            "Div": (1.0 / vector, zeros),
            "Add": (ones, vector),
            "Sub": (ones, -vector),
        }[node.op_type]
        if not index.bypass(node, producer.output[0]):
            continue
        fold_affine(index, producer, scale, shift)
        touched.add(producer.name)
        applied += 1
    return model, applied


def _per_channel(constant: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """The constant as a (channels,) float64 vector, or None unless it broadcasts along axis 1 only."""
    if constant.dtype.kind != "f" or constant.ndim > rank:
        return None
    shape = (1,) * (rank - constant.ndim) + constant.shape
    if any(dim != 1 for axis, dim in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,)).copy()
