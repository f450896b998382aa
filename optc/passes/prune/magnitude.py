"""Unstructured magnitude pruning: set the smallest-magnitude weights to exactly zero.

The tensors keep their shapes, so dense kernels do the same work: the gain is in the compressed size (runs of zeros
compress well), not in latency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from optc.passes.prune.layers import WeightedLayer
from optc.passes.prune.reconstruct import Hessians, prune_reconstructed, smallest
from optc.tensors import is_lazy, spill, tensor_values


def prune_magnitude(
    model: onnx.ModelProto,
    layers: list[WeightedLayer],
    sparsity: float,
    scope: Literal["per_layer", "global"],
    store: Path,
    hessians: Hessians | None = None,
) -> tuple[onnx.ModelProto, list[dict]]:
    """Zero ``round(sparsity * n)`` weights (per layer, or over all layers together for ``global``).

    A weight with an entry in ``hessians`` (per layer only) is pruned by SparseGPT against its layer's inputs, which
    chooses the zeros by their cost to the layer's output and moves the weights that stay to make up for them.

    Per layer, weights are read, pruned and put back one at a time; a weight that was still on disk goes back to
    disk (appended to ``store``), so a model too large to hold twice is never in memory whole.
    Returns the new model and one row per pruned weight: layer, op, weights, zeros, sparsity.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    initializers = {t.name: t for t in result.graph.initializer}
    hessians = hessians or {}
    owners: dict[str, WeightedLayer] = {}  # a weight shared by several nodes is pruned once, under its first node
    for layer in layers:
        owners.setdefault(layer.weight, layer)
    pruned_together = _pruned_globally(initializers, list(owners), sparsity) if scope == "global" else {}
    rows = []
    for name, layer in owners.items():
        array = pruned_together.pop(name, None)
        if array is None:
            array = tensor_values(initializers[name]).copy()
            if name in hessians:
                array = prune_reconstructed(array, layer, hessians[name], sparsity)
            else:
                _zero_smallest(array.reshape(-1), round(sparsity * array.size))
        tensor = initializers[name]
        tensor.CopyFrom(spill(array, name, store) if is_lazy(tensor) else numpy_helper.from_array(array, name))
        zeros = int(array.size - np.count_nonzero(array))
        rows.append(
            {
                "layer": layer.node.name,
                "op": layer.node.op_type,
                "weights": int(array.size),
                "zeros": zeros,
                "sparsity": round(zeros / array.size, 4),
                "reconstructed": name in hessians,
            }
        )
    return result, rows


def _pruned_globally(initializers: dict[str, onnx.TensorProto], names: list[str], sparsity: float) -> dict:
    """Every weight with the smallest magnitudes over all of them together zeroed: one threshold needs them all."""
    weights = {name: tensor_values(initializers[name]).copy() for name in names}
    if not weights:
        return weights
    flat = np.concatenate([np.abs(a).reshape(-1) for a in weights.values()])
    chosen = smallest(flat, round(sparsity * flat.size))
    start = 0
    for array in weights.values():
        inside = chosen[(chosen >= start) & (chosen < start + array.size)] - start
        array.reshape(-1)[inside] = 0
        start += array.size
    return weights


def _zero_smallest(flat: np.ndarray, count: int) -> None:
    flat[smallest(np.abs(flat), count)] = 0
