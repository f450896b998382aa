"""Fold a per-output-channel affine map ``y * scale + shift`` into the Conv, ConvTranspose or Gemm producing ``y``.

Shared by ``fold_batchnorm`` (BatchNorm is exactly such a map at inference) and ``fold_scale_bias`` (Mul/Add/Sub/Div
by a per-channel constant). The producer gets new weight and bias initializers; the old ones are left for
``drop_unused`` because another node may still read them.
"""

from __future__ import annotations

import numpy as np
import onnx

from optc.passes.fuse.graph import GraphIndex, attribute, set_attribute

AFFINE_HOSTS = ("Conv", "ConvTranspose", "Gemm")


def output_channels(index: GraphIndex, producer: onnx.NodeProto) -> tuple[int, int] | None:
    """(number of output channels, rank of the output) of a host whose weight is constant; None otherwise."""
    if producer.op_type not in AFFINE_HOSTS or len(producer.input) < 2:
        return None
    weight = index.const(producer.input[1])
    if weight is None or weight.dtype.kind != "f":
        return None
    if len(producer.input) > 2 and producer.input[2] and index.const(producer.input[2]) is None:
        return None
    if producer.op_type == "Conv":
        return weight.shape[0], weight.ndim
    if producer.op_type == "ConvTranspose":
        return weight.shape[1] * attribute(producer, "group", 1), weight.ndim
    return (weight.shape[0] if attribute(producer, "transB", 0) else weight.shape[1]), 2


def fold_affine(index: GraphIndex, producer: onnx.NodeProto, scale: np.ndarray, shift: np.ndarray) -> None:
    """Rewrite ``producer`` (checked by ``output_channels``) so that it outputs ``y * scale + shift``."""
    weight = index.const(producer.input[1])
    dtype = weight.dtype
    has_bias = len(producer.input) > 2 and bool(producer.input[2])
    bias = index.const(producer.input[2]) if has_bias else None
    channels = len(scale)
    if producer.op_type == "Conv":
        new_weight = weight * scale.reshape(channels, *[1] * (weight.ndim - 1))
    elif producer.op_type == "ConvTranspose":
        group = attribute(producer, "group", 1)
        grouped = weight.reshape(group, weight.shape[0] // group, weight.shape[1], *weight.shape[2:])
        scaled = grouped * scale.reshape(group, 1, weight.shape[1], *[1] * (weight.ndim - 2))
        new_weight = scaled.reshape(weight.shape)
    else:  # Gemm: y = alpha * A·op(B) + beta * C; alpha and beta are folded in so both become 1
        alpha, beta = attribute(producer, "alpha", 1.0), attribute(producer, "beta", 1.0)
        trans_b = attribute(producer, "transB", 0)
        new_weight = alpha * weight * (scale[:, None] if trans_b else scale[None, :])
        bias = beta * bias if bias is not None else None
        set_attribute(producer, "alpha", 1.0)
        set_attribute(producer, "beta", 1.0)
    if bias is None:
        bias = np.zeros(channels, dtype)
    new_bias = bias * scale + shift  # Gemm's C may be (M,), (1, M) or (N, M): broadcasting keeps its shape
    base = producer.name or producer.output[0]
    producer.input[1] = index.add_initializer(f"{base}.weight_folded", new_weight.astype(dtype))
    bias_name = index.add_initializer(f"{base}.bias_folded", np.asarray(new_bias, dtype))
    if len(producer.input) > 2:
        producer.input[2] = bias_name
    else:
        producer.input.append(bias_name)
