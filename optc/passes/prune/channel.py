"""Structured channel pruning: rank each group's output channels by weight norm and cut the weakest out of the graph.

``trace_channels`` finds the groups and the weight edits; this module picks the channels to keep and applies the
edits, so the result has smaller tensors (and less work per inference), not just zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optc.passes.prune.channel_groups import ChannelPlan, Layout
from optc.passes.prune.layers import WeightedLayer
from optc.passes.prune.reconstruct import Hessians, keep_input_channels
from optc.tensors import tensor_values


@dataclass
class ChannelsPruned:
    model: onnx.ModelProto
    layers: list[dict]  # per pruned layer: channels before and after
    left_alone: list[dict]  # per group not pruned: its layers and why


def prune_channels(
    model: onnx.ModelProto,
    plan: ChannelPlan,
    ratio: float,
    norm: Literal["l1", "l2"],
    hessians: Hessians | None = None,
) -> ChannelsPruned:
    """Remove ``round(ratio * C)`` output channels (at least one kept) from every prunable group of ``plan``.

    A layer whose weight has an entry in ``hessians`` (its input's ``XᵀX`` on calibration data) and loses input
    channels keeps the weights of the others refitted to make up for the removed ones."""
    initializers = {t.name: tensor_values(t) for t in model.graph.initializer}
    keep: dict[str, np.ndarray] = {}
    layers, left_alone = [], []
    for root, members in plan.groups().items():
        reasons = plan.reasons(members)
        if reasons:
            left_alone.append({"layers": ", ".join(members), "reason": "; ".join(reasons)})
            continue
        importance = sum(_channel_importance(plan.layers[m], initializers, norm) for m in members)
        channels = len(importance)
        removed = min(round(ratio * channels), channels - 1)
        if removed == 0:
            continue
        # Stable descending order: among equally weak channels the later ones go, so results are reproducible.
        strongest = np.argsort(-importance, kind="stable")[: channels - removed]
        keep[root] = np.sort(strongest)
        layers.extend(
            {
                "layer": m,
                "op": plan.layers[m].node.op_type,
                "channels": channels,
                "kept": channels - removed,
                "coupled_with": len(members) - 1,
            }
            for m in members
        )
    edited = _apply(model, plan, keep, initializers, hessians or {})
    return ChannelsPruned(model=edited, layers=layers, left_alone=left_alone)


def _channel_importance(layer: WeightedLayer, initializers: dict[str, np.ndarray], norm: str) -> np.ndarray:
    """Each output channel's weight norm, divided by the layer's mean so coupled layers of different scale count
    alike."""
    weight = initializers[layer.weight].astype(np.float64)
    rows = np.moveaxis(weight, layer.out_axis, 0).reshape(weight.shape[layer.out_axis], -1)
    values = np.abs(rows).sum(axis=1) if norm == "l1" else np.sqrt((rows**2).sum(axis=1))
    mean = values.mean()
    return values / mean if mean > 0 else values


def _kept_indices(layout: Layout, plan: ChannelPlan, keep: dict[str, np.ndarray]) -> np.ndarray | None:
    """Positions along the layout's axis that survive, or None when none of its channels is removed."""
    parts, offset, changed = [], 0, False
    for segment in layout.segments:
        channels = keep.get(plan.root(segment.layer)) if segment.layer is not None else None
        if channels is None:
            channels = np.arange(segment.size)
        else:
            changed = True
        features = (channels[:, None] * segment.repeat + np.arange(segment.repeat)[None, :]).reshape(-1)
        parts.append(features + offset)
        offset += segment.size * segment.repeat
    return np.concatenate(parts) if changed else None


def _apply(
    model: onnx.ModelProto,
    plan: ChannelPlan,
    keep: dict[str, np.ndarray],
    arrays: dict[str, np.ndarray],
    hessians: Hessians,
) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    changed: dict[str, np.ndarray] = {}
    new_groups: dict[str, int] = {}
    for edit in plan.edits:
        indices = _kept_indices(edit.layout, plan, keep)
        if indices is None:
            continue
        current = changed.get(edit.tensor, arrays[edit.tensor])
        if edit.count_at is not None:
            current = current.copy()
            current[edit.count_at] = len(indices)
            changed[edit.tensor] = current
        elif edit.reader is not None and edit.tensor in hessians:
            (hessian,) = hessians[edit.tensor]
            changed[edit.tensor] = keep_input_channels(current, edit.reader, hessian, indices)
        else:
            changed[edit.tensor] = np.take(current, indices, axis=edit.axis)
        if edit.group_of is not None:
            new_groups[edit.group_of] = len(indices)
    for tensor in result.graph.initializer:
        if tensor.name in changed:
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(changed[tensor.name]), tensor.name))
    for node in result.graph.node:
        if node.name in new_groups:
            kept = [a for a in node.attribute if a.name != "group"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("group", new_groups[node.name])])
    del result.graph.value_info[:]  # intermediate shapes changed; shape inference writes them again
    return result
