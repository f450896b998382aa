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

from optc.passes.prune.allocate import share_by_cost
from optc.passes.prune.channel_groups import ChannelPlan, Layout
from optc.passes.prune.layers import WeightedLayer
from optc.passes.prune.reconstruct import Hessians, as_rows, damped_hessian, keep_input_channels
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
    ranking: dict[str, ChannelRanking] | None = None,
) -> ChannelsPruned:
    """Remove ``round(ratio * C)`` output channels (at least one kept) from every prunable group of ``plan``.

    A group with a ``ranking`` (``rank_channels``: the order in which removing its channels costs the refitted
    readers least) loses its channels in that order, and such groups share ``ratio`` of all their channels by that
    cost (``cuts_by_cost``); the others lose their weakest channels by weight norm. Every reader whose weight has an
    entry in ``hessians`` and loses input channels keeps the weights of the others refitted to make up for them."""
    initializers = {t.name: tensor_values(t) for t in model.graph.initializer}
    ranking = ranking or {}
    cuts = cuts_by_cost(ranking, ratio)
    keep: dict[str, np.ndarray] = {}
    layers, left_alone = [], []
    for root, members in plan.groups().items():
        reasons = plan.reasons(members)
        if reasons:
            left_alone.append({"layers": ", ".join(members), "reason": "; ".join(reasons)})
            continue
        if root in ranking:
            order = ranking[root].order
            channels, removed = len(order), cuts[root]
            weakest = order[:removed]
        else:
            importance = sum(_channel_importance(plan.layers[m], initializers, norm) for m in members)
            channels = len(importance)
            removed = min(round(ratio * channels), channels - 1)
            # Stable descending order: among equally weak channels the later ones go, so results are reproducible.
            weakest = np.argsort(-importance, kind="stable")[channels - removed :]
        if removed == 0:
            continue
        keep[root] = np.setdiff1d(np.arange(channels), weakest)
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


CHANNEL_STEPS = 32  # rank a group's channels in about this many steps, each removing the cheapest few together


@dataclass
class ChannelRanking:
    order: np.ndarray  # channels in the order they go (only the first ``len(costs)`` are ever removed)
    costs: np.ndarray  # what removing each of them adds, relative to the readers' output energy, non-decreasing


@dataclass
class _Reader:
    rows: np.ndarray  # the reader's weight as [outputs, input features], compensated as channels go
    inverse: np.ndarray  # H⁻¹ over its input features, with the removed ones taken out
    features: np.ndarray  # [channels, features of each]: where each channel of the group enters
    energy: float  # tr(W H Wᵀ) of the unpruned reader


def rank_channels(
    plan: ChannelPlan, arrays: dict[str, np.ndarray], hessians: Hessians, most: float
) -> dict[str, ChannelRanking]:
    """Per prunable group read by a fitted layer (a weight in ``hessians``): its channels in the order that costs
    those readers least, up to ``most`` of them, chosen greedily as the optimal brain surgeon removes weights.

    Removing channel ``c`` alone from a reader, with the rest of its weights moved to make up for it, adds
    ``tr(W_F [H⁻¹]_FF⁻¹ W_Fᵀ)`` to its squared output error (``F``: the input features the channel feeds, its kernel
    taps for a Conv); relative to the reader's output energy and summed over the readers, that is the channel's
    cost. The cheapest goes, ``W`` and ``H⁻¹`` are updated as if it had never been there, and the costs are taken
    again: channels that stand in for each other are not both removed for being cheap alone (ranking each once by
    that cost did worse than weight norm on a Conv whose filters are mixtures of three)."""
    groups = {root: members for root, members in plan.groups().items() if not plan.reasons(members)}
    root_of = {m: root for root, members in groups.items() for m in members}
    readers: dict[str, list[_Reader]] = {}
    sizes: dict[str, int] = {}
    for edit in plan.edits:
        if edit.reader is None or edit.tensor not in hessians:
            continue
        (hessian,) = hessians[edit.tensor]
        (rows,) = as_rows(arrays[edit.tensor], edit.reader)
        rows[:, np.diag(hessian) == 0] = 0  # weights on inputs never seen non-zero add nothing, so cost nothing
        taps = rows.shape[1] // edit.layout.size
        damped = damped_hessian(hessian)
        energy = max(float(np.sum((rows @ damped) * rows)), np.finfo(np.float64).tiny)
        inverse = np.linalg.inv(damped)
        offset = 0
        for segment in edit.layout.segments:
            width = segment.repeat * taps
            root = root_of.get(segment.layer)
            if root is not None:
                start = offset * taps + np.arange(segment.size)[:, None] * width
                readers.setdefault(root, []).append(
                    _Reader(rows.copy(), inverse.copy(), start + np.arange(width)[None, :], energy)
                )
                sizes[root] = segment.size
            offset += segment.size * segment.repeat
    return {
        root: _greedy(group, sizes[root], min(int(most * sizes[root]), sizes[root] - 1))
        for root, group in readers.items()
    }


def _greedy(readers: list[_Reader], channels: int, steps: int) -> ChannelRanking:
    alive = np.ones(channels, dtype=bool)
    order: list[int] = []
    costs: list[float] = []
    # a few channels go per step: each step rewrites every reader's whole H⁻¹, which one channel at a time made a
    # captcha model's ranking take minutes
    per_step = max(1, -(-channels // CHANNEL_STEPS))
    while len(order) < steps:
        candidates = np.flatnonzero(alive)
        total = np.zeros(len(candidates))
        for reader in readers:
            features = reader.features[candidates]
            weights = reader.rows[:, features].transpose(1, 0, 2)  # [channels, outputs, features]
            blocks = reader.inverse[features[:, :, None], features[:, None, :]]
            solved = np.linalg.solve(blocks, weights.transpose(0, 2, 1))
            total += np.einsum("cof,cfo->c", weights, solved) / reader.energy
        # among equally cheap channels the later ones go, as with weight norms, so results are reproducible
        cheapest = np.argsort(total[::-1], kind="stable")[: min(per_step, steps - len(order))]
        picked = len(candidates) - 1 - cheapest
        chosen = candidates[picked]
        for reader in readers:
            features = reader.features[chosen].reshape(-1)
            step = np.linalg.solve(reader.inverse[np.ix_(features, features)], reader.inverse[features])
            reader.rows -= reader.rows[:, features] @ step
            reader.inverse -= reader.inverse[:, features] @ step
        alive[chosen] = False
        order.extend(int(c) for c in chosen)
        for cost in total[picked]:
            costs.append(max(float(cost), costs[-1] if costs else 0.0))
    rest = np.flatnonzero(alive)
    return ChannelRanking(np.concatenate([np.array(order, dtype=np.int64), rest]), np.array(costs))


def cuts_by_cost(ranking: dict[str, ChannelRanking], ratio: float) -> dict[str, int]:
    """Channels to remove per ranked group so that ``ratio`` of all their channels go, more from groups whose
    channels cost less (``share_by_cost``); no group loses more than it ranked."""
    sizes = {root: len(r.order) for root, r in ranking.items()}
    shares = share_by_cost({root: r.costs for root, r in ranking.items()}, sizes, ratio)
    return {root: min(round(count), len(ranking[root].costs)) for root, count in shares.items()}


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
