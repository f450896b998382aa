"""Unstructured magnitude pruning: set the smallest-magnitude weights to exactly zero.

The tensors keep their shapes, so dense kernels do the same work: the gain is in the compressed size (runs of zeros
compress well), not in latency.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from optc.passes.prune.layers import WeightedLayer
from optc.tensors import tensor_values


def prune_magnitude(
    model: onnx.ModelProto,
    layers: list[WeightedLayer],
    sparsity: float,
    scope: Literal["per_layer", "global"],
) -> tuple[onnx.ModelProto, list[dict]]:
    """Zero ``round(sparsity * n)`` weights (per layer, or over all layers together for ``global``).

    Returns the new model and one row per pruned weight: layer, op, weights, zeros, sparsity.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    initializers = {t.name: t for t in result.graph.initializer}
    owners = {}  # a weight shared by several nodes is pruned once, under its first node's name
    for layer in layers:
        owners.setdefault(layer.weight, layer.node)
    weights = {name: tensor_values(initializers[name]).copy() for name in owners}
    if scope == "per_layer":
        for array in weights.values():
            _zero_smallest(array.reshape(-1), round(sparsity * array.size))
    elif weights:
        flat = np.concatenate([np.abs(a).reshape(-1) for a in weights.values()])
        chosen = _smallest(flat, round(sparsity * flat.size))
        start = 0
        for array in weights.values():
            inside = chosen[(chosen >= start) & (chosen < start + array.size)] - start
            array.reshape(-1)[inside] = 0
            start += array.size
    rows = []
    for name, array in weights.items():
        initializers[name].CopyFrom(numpy_helper.from_array(array, name))
        zeros = int(array.size - np.count_nonzero(array))
        node = owners[name]
        rows.append(
            {
                "layer": node.name,
                "op": node.op_type,
                "weights": int(array.size),
                "zeros": zeros,
                "sparsity": round(zeros / array.size, 4),
            }
        )
    return result, rows


def _smallest(magnitudes: np.ndarray, count: int) -> np.ndarray:
    if count <= 0:
        return np.empty(0, dtype=np.int64)
    return np.argpartition(magnitudes, count - 1)[:count]


def _zero_smallest(flat: np.ndarray, count: int) -> None:
    flat[_smallest(np.abs(flat), count)] = 0
