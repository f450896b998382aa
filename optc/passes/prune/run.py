"""The ``prune`` pass: picks the method, runs it at a fixed sparsity or searches one, and writes the report details."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort

from optc.data import input_specs, stream_batches
from optc.errors import NotApplicable, OptcError, PassError
from optc.measure.providers import check_options
from optc.messages import exception_reason
from optc.model_facts import parameter_count, reader_counts, weight_sparsity
from optc.passes.exclude import excluded_nodes
from optc.passes.prune.channel import prune_channels, rank_channels
from optc.passes.prune.channel_groups import ChannelPlan, trace_channels
from optc.passes.prune.config import PruneConfig
from optc.passes.prune.layers import WeightedLayer, selected_layers, weighted_layer
from optc.passes.prune.magnitude import layer_costs, prune_magnitude
from optc.passes.prune.outputs import keep_outputs
from optc.passes.prune.reconstruct import HESSIAN_BYTES, Hessians, hessian_bytes, layer_hessians
from optc.passes.prune.search import CandidateMeter, bisect_sparsity, confirmed_on_whole, gzip_size
from optc.passes.prune.split_layers import split_conv_parts
from optc.passes.quantize_keep_float import blow_up_readers
from optc.passes.quantize_prepare import (
    constants_to_initializers,
    drop_initializer_inputs,
    name_unnamed_nodes,
    subgraph_nodes,
)
from optc.passes.registry import PassContext, PassOutcome, register
from optc.tensors import tensor_values

MAGNITUDE_NOTE = (
    "unstructured sparsity: tensors keep their shapes, so ONNX Runtime's dense kernels do the same work and latency "
    "does not change; the gain is the size compressed with zip/gzip"
)
CHANNEL_NOTE = (
    "structured pruning: whole channels are cut out of the graph, so tensors and the work per inference shrink"
)

RECONSTRUCT_SAMPLES = 64  # calibration samples whose layer inputs make each layer's Hessian

Pruner = Callable[[float], tuple[onnx.ModelProto, dict]]


@register(PruneConfig)
def run_prune(model: onnx.ModelProto, config: PruneConfig, context: PassContext) -> PassOutcome:
    if config.method == "outputs":
        return _prune_outputs(model, config, context)
    model, _ = constants_to_initializers(model)  # paddle2onnx and tf2onnx keep weights in Constant nodes
    make_pruner = _magnitude_pruner if config.method == "magnitude" else _channel_pruner
    pruner, warnings = make_pruner(model, config, context)
    if config.sparsity == "auto":
        outcome = _search(model, pruner, config, context)
    else:
        pruned, details = pruner(config.sparsity)
        outcome = PassOutcome(model=pruned, details=details)
    outcome.warnings[:0] = warnings
    return outcome


def _magnitude_layers(
    model: onnx.ModelProto, config: PruneConfig, context: PassContext
) -> tuple[list[WeightedLayer], list[str]]:
    """The layers to prune and the names of those kept dense as first or last."""
    layers = selected_layers(model.graph, config, context.label)
    dense: list[str] = []
    if config.dense_first_last and layers and not config.nodes:  # nodes named outright are pruned as asked
        weights = list(dict.fromkeys(layer.weight for layer in layers))
        first_last = {weights[0], weights[-1]}
        dense = [layer.node.name for layer in layers if layer.weight in first_last]
        layers = [layer for layer in layers if layer.weight not in first_last]
    if not layers:
        raise NotApplicable(
            context.label,
            f"no {'/'.join(config.op_types)} node with a constant float weight is left to prune"
            + (f" (kept dense as first/last layer: {', '.join(dense)})" if dense else "")
            + _out_of_reach(model, config),
            hint="check op_types, nodes and exclude" + (", or set dense_first_last: false" if dense else ""),
        )
    return layers, dense


def _out_of_reach(model: onnx.ModelProto, config: PruneConfig) -> str:
    """What a refusal adds where the layers sit in If/Loop/Scan bodies (Silero VAD keeps its network in two)."""
    nested = subgraph_nodes(model, set(config.op_types))
    return (
        f"; {nested} {'/'.join(config.op_types)} node(s) sit inside If/Loop/Scan bodies, which pruning does not reach"
        if nested
        else ""
    )


@dataclass
class Refit:
    """What ``reconstruct`` fits to: input Hessians by weight (None: nothing is fitted), the layers left as they are
    with the reason, and the warnings to pass on."""

    hessians: Hessians | None = None
    left_alone: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def details(self, data: Path | None) -> dict:
        if self.hessians is None:
            return {}
        return {"reconstructed_on": str(data), **({"not_refitted": self.left_alone} if self.left_alone else {})}


def _refit(model: onnx.ModelProto, layers: list[WeightedLayer], config: PruneConfig, context: PassContext) -> Refit:
    """For ``reconstruct``: the input Hessian of each of ``layers`` on the calibration data, or nothing with a warning
    when there is none. Only --calibration-data is used: fitting the weights to the evaluation data would let the
    fidelity gate grade the model on the inputs it was fitted to. A layer whose output reaches a ``Log``, a
    ``Reciprocal`` or a ``Div`` denominator value for value is left unfitted: a least-squares fit spends its error
    where outputs are large, and there a small output that moves towards zero blows up (a mel filterbank before a log
    went from cosine 0.9997 unfitted to 0.954 fitted)."""
    if not config.reconstruct:
        return Refit()
    if context.calibration_data is None:
        how = "by magnitude" if config.method == "magnitude" else "by weight norm"
        return Refit(
            warnings=[
                f"{context.label}: reconstruct needs calibration data (--calibration-data); without it the weights "
                f"were pruned {how} alone, which costs more accuracy"
            ]
        )
    left_alone = blow_up_readers(model.graph)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for layer in layers:
        size = hessian_bytes(layer, shapes[layer.weight])
        if size > HESSIAN_BYTES:
            left_alone.setdefault(layer.node.name, f"its input Hessian would take {size / 2**30:.1f} GiB")
    left_alone = {layer.node.name: left_alone[layer.node.name] for layer in layers if layer.node.name in left_alone}
    fitted = [layer for layer in layers if layer.node.name not in left_alone]
    path, specs = context.calibration_data, input_specs(model)
    hessians = layer_hessians(
        model, fitted, lambda: stream_batches(path, specs, 1, RECONSTRUCT_SAMPLES), context.workdir
    )
    return Refit(hessians, left_alone)


def _magnitude_pruner(model: onnx.ModelProto, config: PruneConfig, context: PassContext) -> tuple[Pruner, list[str]]:
    layers, dense = _magnitude_layers(model, config, context)
    refit = _refit(model, layers, config, context)
    costs = None
    if config.scope == "global" and refit.hessians:  # once: a search tries several sparsities on the same costs
        costs = layer_costs({t.name: t for t in model.graph.initializer}, layers, refit.hessians)
    gzip_before = gzip_size(model)

    def prune(sparsity: float) -> tuple[onnx.ModelProto, dict]:
        store = context.workdir / "pruned_weights.data"
        pruned, rows = prune_magnitude(model, layers, sparsity, config.scope, store, refit.hessians, costs)
        zeros, weights = sum(r["zeros"] for r in rows), sum(r["weights"] for r in rows)
        gzip_after = gzip_size(pruned)
        return pruned, {
            "sparsity": round(sparsity, 4),
            "scope": config.scope,
            "overall_sparsity": round(zeros / weights, 4),
            "model_weight_sparsity": round(weight_sparsity(pruned), 4),
            "layers": rows,
            "dense_layers": dense,
            **refit.details(context.calibration_data),
            "gzip_bytes_before": gzip_before,
            "gzip_bytes_after": gzip_after,
            "gzip_ratio": round(gzip_after / gzip_before, 4),
            "note": MAGNITUDE_NOTE,
        }

    return prune, refit.warnings


def _channel_pruner(model: onnx.ModelProto, config: PruneConfig, context: PassContext) -> tuple[Pruner, list[str]]:
    model = _surgery_form(model)
    producers = {layer.node.name for layer in selected_layers(model.graph, config, context.label)}
    plan = trace_channels(model, producers, excluded_nodes(model.graph, config.exclude, context.label))
    groups = plan.groups()
    if all(plan.reasons(members) for members in groups.values()):
        reasons = "; ".join(dict.fromkeys(r for members in groups.values() for r in plan.reasons(members)))
        raise NotApplicable(
            context.label,
            "no channel group can be pruned"
            + (f": {reasons[:400]}" if reasons else " (no prunable layer found)")
            + _out_of_reach(model, config),
            hint="channel pruning needs Conv/Gemm/MatMul layers with constant weights whose outputs feed ops optc "
            "can shrink",
        )
    parameters_before = parameter_count(model)
    refit = _refit(model, _refitted_layers(model, plan), config, context)
    ranking = {}
    if refit.hessians:  # ranked once up to the most any ratio asks for: the order does not depend on it
        most = config.range_searched()[1] if config.sparsity == "auto" else min(1.0, 2 * config.sparsity)
        arrays = {t.name: tensor_values(t) for t in model.graph.initializer}
        ranking = rank_channels(plan, arrays, refit.hessians, most)

    def prune(ratio: float) -> tuple[onnx.ModelProto, dict]:
        pruned = prune_channels(model, plan, ratio, config.norm, refit.hessians, ranking)
        checked = _shapes_and_session(pruned.model, context.label)
        return checked, {
            "ratio": round(ratio, 4),
            "norm": config.norm,
            "channels_removed": sum(r["channels"] - r["kept"] for r in pruned.layers),
            "parameters_before": parameters_before,
            "parameters_after": parameter_count(checked),
            "layers": pruned.layers,
            "left_alone": pruned.left_alone,
            **refit.details(context.calibration_data),
            "note": CHANNEL_NOTE,
        }

    return prune, refit.warnings


def _refitted_layers(model: onnx.ModelProto, plan: ChannelPlan) -> list[WeightedLayer]:
    """Every node applying a weight that loses input channels: a weight shared by several nodes is fitted to them all,
    though the plan cuts it through one."""
    cut = {edit.tensor for edit in plan.edits if edit.reader is not None}
    initializers = {t.name: t for t in model.graph.initializer}
    layers = (weighted_layer(node, initializers) for node in model.graph.node)
    return [layer for layer in layers if layer is not None and layer.weight in cut]


def _surgery_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model in the form channel surgery can edit: weights in ``Constant`` nodes (paddle2onnx, tf2onnx)
    become initializers, initializers drop out of the graph inputs (IR < 4, whose declared shapes would contradict
    the shrunk weights) and every node gets a unique name (the plan keys layers by name: unnamed Convs would all be
    one layer)."""
    model, _ = constants_to_initializers(model)
    model, _ = drop_initializer_inputs(model)
    return split_conv_parts(_own_reshape_targets(name_unnamed_nodes(model)))


def _own_reshape_targets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every Reshape its own target tensor: exporters share one constant such as [-1, 200] among Reshapes of
    different layers, whose channel counts then change differently."""
    readers = reader_counts(model.graph)
    initializers = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    shared = []  # every reader but the first gets a copy
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Reshape" and node.input[1] in initializers and readers[node.input[1]] > 1:
            if node.input[1] in seen:
                shared.append(index)
            seen.add(node.input[1])
    if not shared:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index in shared:
        node = out.graph.node[index]
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[node.input[1]])
        copy.name = f"{node.input[1]}__{node.name}"
        out.graph.initializer.append(copy)
        node.input[1] = copy.name
    return out


def _shapes_and_session(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Shape inference (strict, so a mismatched edit shows here by name) and an ONNX Runtime session on the result."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        ort.InferenceSession(inferred.SerializeToString(), check_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - whatever fails here, the surgery produced it
        problem = exception_reason(exc)
        raise PassError(label, f"channel surgery produced an inconsistent graph: {problem}") from exc
    return inferred


def _search(model: onnx.ModelProto, pruner: Pruner, config: PruneConfig, context: PassContext) -> PassOutcome:
    low, high = config.range_searched()
    feed = context.sample_inputs[0] if context.sample_inputs else context.dataset.first_batch(1)
    meter = CandidateMeter(model, context.dataset, context.metric, feed, context.workdir)
    step = meter.for_search()

    def build(sparsity: float) -> onnx.ModelProto:
        return pruner(sparsity)[0]

    result = bisect_sparsity(build, step, low, high, config.search_steps, config.accuracy_budget)
    if step is not meter:  # searched on a head of the data: the sparsity it found must fit on the whole
        result = confirmed_on_whole(result, build, meter, config.accuracy_budget)
    curve = [point.row() for point in result.curve]
    if result.sparsity is None:
        raise NotApplicable(
            context.label,
            f"even sparsity {low} drops accuracy by {result.curve[0].drop:.2f} points, over the budget of "
            f"{config.accuracy_budget}",
            hint="lower search_range's low end or raise accuracy_budget",
        )
    pruned, details = pruner(result.sparsity)
    warnings = []
    unpruned = details["channels_removed"] == 0 if config.method == "channel" else result.sparsity == 0
    if unpruned:  # prune-auto marks the pass optional: its int8 can still improve what pruning could not
        tried = next((p for p in result.curve if p.sparsity > result.sparsity), None)
        cost = f" (sparsity {tried.sparsity:.3g} cost {tried.drop:.2f} points)" if tried else ""
        raise NotApplicable(
            context.label,
            f"nothing could be pruned within the {config.accuracy_budget}-point budget{cost}",
            hint="raise accuracy_budget",
        )
    if context.dataset.synthetic:
        warnings.append(
            f"{context.label}: the sparsity search measured fidelity on synthetic inputs; give evaluation data "
            "(--data) to search against real accuracy"
        )
    search = {
        "chosen": round(result.sparsity, 4),
        "accuracy_budget": config.accuracy_budget,
        "metric": result.curve[0].metric,
        "range": [low, high],
        "steps": config.search_steps,
        "data": context.dataset.source,
    }
    return PassOutcome(model=pruned, details={**details, "search": search, "curve": curve}, warnings=warnings)


def _prune_outputs(model: onnx.ModelProto, config: PruneConfig, context: PassContext) -> PassOutcome:
    outputs = [o.name for o in model.graph.output]
    unknown = [name for name in config.keep if name not in outputs]
    if unknown:
        raise OptcError(
            f"{context.label}.keep: the model has no output named {', '.join(map(repr, unknown))}",
            hint=f"its outputs: {', '.join(outputs)}",
        )
    pruned = keep_outputs(model, config.keep)
    return PassOutcome(
        model=pruned.model,
        details={
            "kept_outputs": list(config.keep),
            "removed_outputs": pruned.removed_outputs,
            "removed_nodes": pruned.removed_nodes,
            "removed_inputs": pruned.removed_inputs,
            "removed_initializers": pruned.removed_initializers,
        },
    )
