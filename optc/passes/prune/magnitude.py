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

from optc.passes.prune.allocate import share_by_cost
from optc.passes.prune.layers import WeightedLayer
from optc.passes.prune.reconstruct import Hessians, as_rows, damped_hessian, prune_reconstructed, smallest
from optc.tensors import is_lazy, spill, tensor_values

MAX_LAYER_SPARSITY = 0.95  # with fitted global sparsity: every layer keeps at least 5 % of its weights


def prune_magnitude(
    model: onnx.ModelProto,
    layers: list[WeightedLayer],
    sparsity: float,
    scope: Literal["per_layer", "global"],
    store: Path,
    hessians: Hessians | None = None,
    costs: dict[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, list[dict]]:
    """Zero ``round(sparsity * n)`` weights (per layer, or over all layers together for ``global``).

    A weight with an entry in ``hessians`` is pruned by SparseGPT against its layer's inputs, which chooses the zeros
    by their cost to the layer's output and moves the weights that stay to make up for them. With ``global``, those
    weights share their zeros by that cost (``fitted_sparsities`` over ``costs``, from ``layer_costs``: a search over
    sparsities passes them in, since they do not depend on the sparsity) instead of by magnitude.

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
    layer_sparsity = dict.fromkeys(owners, sparsity)
    pruned_together = {}
    if scope == "global":
        if costs is None:
            costs = layer_costs(initializers, layers, hessians)
        layer_sparsity.update(fitted_sparsities(costs, sparsity))
        unfitted = [name for name in owners if name not in hessians]
        pruned_together = _pruned_globally(initializers, unfitted, sparsity)
    rows = []
    for name, layer in owners.items():
        array = pruned_together.pop(name, None)
        if array is None:
            array = tensor_values(initializers[name]).copy()
            if name in hessians:
                array = prune_reconstructed(array, layer, hessians[name], layer_sparsity[name])
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


def layer_costs(
    initializers: dict[str, onnx.TensorProto], layers: list[WeightedLayer], hessians: Hessians
) -> dict[str, np.ndarray]:
    """Per weight of ``layers`` with an entry in ``hessians``: the sorted cost of each of its entries, the optimal
    brain surgeon's ``w² / [H⁻¹]ᵢᵢ`` (what removing it alone adds to its layer's squared output error after the
    others make up for it) over its layer's output energy ``tr(W H Wᵀ)``."""
    owners = {layer.weight: layer for layer in reversed(layers)}  # a shared weight under its first node
    return {
        name: _relative_costs(initializers[name], layer, hessians[name])
        for name, layer in owners.items()
        if name in hessians
    }


def fitted_sparsities(costs: dict[str, np.ndarray], sparsity: float) -> dict[str, float]:
    """Per weight in ``costs`` (``layer_costs``), a sparsity such that ``sparsity`` of all their weights are zeroed,
    more of them where they cost less: one threshold on the relative cost places the zeros, no layer past
    ``MAX_LAYER_SPARSITY`` (``share_by_cost``)."""
    sizes = {name: cost.size for name, cost in costs.items()}
    cheapest = {name: cost[: int(MAX_LAYER_SPARSITY * cost.size)] for name, cost in costs.items()}
    return {name: count / sizes[name] for name, count in share_by_cost(cheapest, sizes, sparsity).items()}


def _relative_costs(tensor: onnx.TensorProto, layer: WeightedLayer, hessians: list[np.ndarray]) -> np.ndarray:
    matrices = as_rows(tensor_values(tensor), layer)
    costs, energy = [], 0.0
    for matrix, hessian in zip(matrices, hessians, strict=True):
        damped = damped_hessian(hessian)
        costs.append((matrix**2 / np.diag(np.linalg.inv(damped))[None, :]).reshape(-1))
        energy += float(np.sum((matrix @ damped) * matrix))
    return np.sort(np.concatenate(costs)) / max(energy, np.finfo(np.float64).tiny)


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
