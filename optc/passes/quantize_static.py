"""``type: quantize`` with ``mode: static``: int8 weights and activations, activation ranges calibrated on data.

The flow: make exported models quantizable (``quantize_prepare``), run ONNX Runtime's pre-processing (shape
inference; graph optimization, which folds BatchNormalization into Conv so it is not quantized separately), decide
what stays in float (the user's ``exclude`` plus ``quantize_keep_float``), calibrate in one streaming pass
(``calibration``), then let ``onnxruntime.quantization.quantize_static`` write the QDQ/QOperator graph from those
ranges. With an ``accuracy_budget`` the most sensitive nodes are kept in float until the budget holds
(``sensitivity``).

Types, per-channel and reduce_range the recipe leaves unset come from the target's row in ``quantize_defaults``.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

from optc.data import SYNTHETIC_SAMPLES, Dataset, input_specs, stream_batches, synthetic_dataset
from optc.errors import NotApplicable, OptcError, PassError
from optc.messages import exception_reason
from optc.model_facts import QUANTIZED_OP_TYPES, all_nodes, default_opset, in_topological_order
from optc.modelio import adopt_model
from optc.passes.calibration import calibrate, collector_for, tensors_to_calibrate, write_calibration_cache
from optc.passes.exclude import ExcludeSpec, excluded_nodes
from optc.passes.fallback import evaluation_probe, probe_of, rank_by_damage
from optc.passes.fuse.rewrites.subgraph_bodies import fold_body_constants
from optc.passes.ort_tools import inside, quiet_root_logger, save_for_tool
from optc.passes.quantize_defaults import with_target_defaults
from optc.passes.quantize_fallback import (
    COMPUTE_OPS,
    LITTLE_QUANTIZED_SHARE,
    int8_share,
    largest_readers,
    meet_fidelity_targets,
    refuse_no_smaller,
)
from optc.passes.quantize_keep_float import float_sensitive_nodes
from optc.passes.quantize_prepare import (
    PER_CHANNEL_OPSET,
    constants_to_initializers,
    drop_initializer_inputs,
    gemm_bias_columns,
    name_unnamed_nodes,
    normalize_opsets,
    subgraph_nodes,
    unprefixed_initializer_names,
    upgrade_opset,
)
from optc.passes.quantize_stored_weights import (
    CONV_OP_TYPES,
    RECURRENT_OP_TYPES,
    STORED_WEIGHT_OP_TYPES,
    int8_stored_weights,
    nested_weight_nodes,
    store_weights_int8,
    stored_weight_nodes,
)
from optc.passes.registry import PassContext, PassOutcome

if TYPE_CHECKING:
    from optc.passes.quantize import QuantizeConfig

QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
# Ops that only move or clip int8 values: they reuse their input's scale, so they add no error of their own.
PASS_THROUGH_OPS = frozenset(
    {
        "Relu",
        "Clip",
        "MaxPool",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Gather",
        "Slice",
        "Split",
        "Resize",
        "Pad",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
    }
)
# Static int8 fixes every scale ahead of time, so outputs do not depend on the batch size: evaluate in large batches.
STATIC_EVAL_BATCH = 32


@dataclass
class Prepared:
    model: onnx.ModelProto  # pre-processed float model, every node named, shapes inferred
    kept_in_float: dict[str, str]  # node name -> reason
    per_channel: bool
    notes: list[str] = field(default_factory=list)  # rewrites applied, for the report


@dataclass
class CalibrationBatches:
    open: Callable[[], Iterator[dict[str, np.ndarray]]]
    source: str  # a path, or "synthetic"
    warnings: list[str]


def refuse_without_onnx_ops(model: onnx.ModelProto, label: str) -> None:
    if not any(node.domain in ("", "ai.onnx") for node in model.graph.node):
        domains = ", ".join(sorted({node.domain for node in model.graph.node}))
        raise OptcError(
            f"{label}: the model has only {domains} operators, none of which int8 can quantize",
            hint="there is nothing for this recipe to do on this model",
        )


def run_static(model: onnx.ModelProto, config: QuantizeConfig, context: PassContext) -> PassOutcome:
    refuse_without_onnx_ops(model, context.label)
    prepared = prepare(model, config, context)
    batches = calibration_batches(prepared.model, config, context)
    quantize_qdq, calibration = calibrated_quantizer(prepared, config, context, batches)
    cells = _recurrent_cells(prepared)

    def quantize(excluded: set[str]) -> onnx.ModelProto:
        """QDQ around everything not ``excluded``; the recurrent cells compute in float either way, with their
        weights in int8 unless ``excluded`` names them."""
        quantized = quantize_qdq(excluded | cells)
        # ONNX Runtime's optimizer may fold a body's weights only now, reading constants of an enclosing scope
        stored = (cells | nested_weight_nodes(quantized, STORED_WEIGHT_OP_TYPES)) - excluded
        return store_weights_int8(quantized, stored) if stored else quantized

    kept = {name: {"reason": reason} for name, reason in prepared.kept_in_float.items() if name not in cells}
    unranged = set(calibration.unranged)
    for node in prepared.model.graph.node:
        if unranged & {*node.input, *node.output}:
            kept.setdefault(node.name, {"reason": "touches a tensor with no finite value on the calibration data"})
    full = quantize(set(kept))
    quantized_in_full = _ranked_candidate(full)
    result, details = meet_fidelity_targets(
        prepared.model,
        model,
        quantize,
        full,
        kept,
        _fidelity_probe(prepared.model, context, batches),
        lambda node: quantized_in_full(node) or node.name in cells,
        config,
        context,
        STATIC_EVAL_BATCH,
        unranked=cells - {node.name for node in prepared.model.graph.node},
    )
    quantized = quantized_op_counts(result)
    if not quantized and not int8_stored_weights(result):
        raise NotApplicable(context.label, _nothing_quantized(model, config, kept))
    _refuse_larger(model, result, prepared.model, context.label)
    ops = {n.name: n.op_type for n in all_nodes(prepared.model.graph)}
    share, left_by_op = int8_share(prepared.model, result, COMPUTE_OPS)
    return PassOutcome(
        model=result,
        details={
            "ops_quantized": sum(quantized.values()),
            "quantized_op_types": dict(quantized),
            "compute_weights_int8_share": round(share, 4),
            "format": config.format,
            "activation_type": config.activation_type,
            "weight_type": config.weight_type,
            "per_channel": prepared.per_channel,
            "reduce_range": config.reduce_range,
            "calibration": {
                "method": config.calibration.method,
                "data": batches.source,
                "samples": calibration.samples,
                "tensors": len(calibration.ranges),
            },
            "rewrites": prepared.notes,
            "kept_in_float": [
                {"node": name, "op_type": ops.get(name, "?"), **facts}
                for name, facts in sorted({**_cells_with_int8_weights(prepared, cells - set(kept)), **kept}.items())
            ],
            **details,
        },
        warnings=batches.warnings
        + ([_little_quantized(context.label, share, left_by_op)] if share < LITTLE_QUANTIZED_SHARE else []),
        calibrated_on=batches.source,
    )


def _refuse_larger(model: onnx.ModelProto, result: onnx.ModelProto, prepared: onnx.ModelProto, label: str) -> None:
    """Static int8 that keeps nearly every weight in float adds Quantize/Dequantize pairs and stores nothing
    smaller (an LSTM wake-word head, a word segmenter). A graph of a few kB can grow by the pairs alone with half its
    weights int8: only a mostly float result is refused, and only then is it serialized to tell."""
    if int8_share(prepared, result)[0] < LITTLE_QUANTIZED_SHARE:
        refuse_no_smaller(
            model,
            result,
            label,
            "int8",
            hint="the int8-dynamic recipe quantizes MatMul, LSTM and embedding weights without calibration, and "
            "stores Conv weights in int8",
        )


def _little_quantized(label: str, share: float, left_by_op: dict[str, int]) -> str:
    """Static int8 whose fidelity target kept most of the compute in float: all-MiniLM-L6 came out with its 36
    MatMuls float (0.94x fp32's speed), where int8-dynamic runs them at 1.5x within the same cosine."""
    amount = f"{share:.1%}" if share >= 0.001 else "under 0.1%"
    advice = []
    if left_by_op.get("MatMul", 0) + left_by_op.get("Gemm", 0):
        advice.append(
            "MatMul/Gemm inputs with a few outlier channels (transformer activations) cannot share one calibrated "
            "range: the int8-dynamic recipe quantizes them per call, with smoothing"
        )
    if left_by_op.get("Conv", 0) + left_by_op.get("ConvTranspose", 0):
        advice.append("the int8-dynamic recipe stores Conv weights in int8 (about 4x smaller) and computes in float")
    return (
        f"{label}: only {amount} of the MatMul/Gemm/Conv weights came out int8 (the float rest is read by "
        f"{largest_readers(left_by_op)}; kept_in_float lists what the fidelity target kept), so the model will run "
        "about as fast as before; " + "; ".join(advice)
    )


def sensitivity_of_nodes(model: onnx.ModelProto, calibration_data: Path | None, target: str) -> list[dict]:
    """``optc inspect --sensitivity``: the default static int8 recipe's ranking for ``target``, every candidate
    node, most sensitive first (calibrated on ``calibration_data``, else on seeded synthetic inputs)."""
    from optc.passes.quantize import QuantizeConfig, refuse_quantized

    label = "inspect --sensitivity"
    refuse_quantized(model, label)
    config, _ = with_target_defaults(QuantizeConfig(type="quantize", mode="static"), target)
    with tempfile.TemporaryDirectory(prefix="optc-") as tmp:
        context = PassContext(
            label=label,
            workdir=Path(tmp),
            seed=0,
            dataset=Dataset(inputs={}, labels=None, source="unused"),
            calibration_data=calibration_data,
            target=target,
        )
        return measure_sensitivity(model, config, context)


def _fidelity_probe(model: onnx.ModelProto, context: PassContext, batches: CalibrationBatches) -> list[dict]:
    """What the fidelity search checks: the evaluation data where it is given, as the gates do. The calibration data
    fits the ranges, so it cannot show what they clip: a Thai word segmenter at full 8-bit weights (VNNI) scored
    cosine 0.992 on it, passed its 0.99 target with nothing in float, and came out at 0.936 on the evaluation data
    (gate failed, exit 1). Without evaluation data, the calibration data is all there is."""
    if context.dataset.synthetic:
        return probe_of(batches.open())
    return evaluation_probe(model, context.dataset, context.batch_size)


def measure_sensitivity(model: onnx.ModelProto, config: QuantizeConfig, context: PassContext) -> list[dict]:
    """The sensitivity table alone: every quantized node, the most damaging first."""
    prepared = prepare(model, config, context)
    batches = calibration_batches(prepared.model, config, context)
    quantize, _ = calibrated_quantizer(prepared, config, context, batches)
    kept = set(prepared.kept_in_float)
    full = quantize(kept)
    candidate = _ranked_candidate(full)
    probe = probe_of(batches.open())
    ranking = rank_by_damage(
        prepared.model, full, probe, context.workdir, lambda n: n.name not in kept and candidate(n)
    )
    return [d.as_row() for d in ranking]


def prepare(model: onnx.ModelProto, config: QuantizeConfig, context: PassContext) -> Prepared:
    notes = []
    model = normalize_opsets(model)
    model, moved = constants_to_initializers(model)
    model = fold_body_constants(model)
    if moved:
        notes.append(f"{moved} Constant node(s) turned into initializers")
    model, dropped = drop_initializer_inputs(model)
    if dropped:
        notes.append(f"{dropped} initializer(s) removed from the graph inputs")
    model, renamed = unprefixed_initializer_names(model)
    if renamed:
        notes.append(f"{renamed} initializer(s) renamed: each name began another tensor's, which ONNX Runtime confuses")
    per_channel = config.per_channel
    opset = default_opset(model)
    upgraded = upgrade_opset(model)
    if upgraded is None:
        per_channel = False
        notes.append(
            f"opset {opset} cannot be converted to {PER_CHANNEL_OPSET}, which per-channel weights need: "
            "weights quantized per tensor"
        )
    elif upgraded is not model:
        model = upgraded
        notes.append(f"opset upgraded from {opset} to {PER_CHANNEL_OPSET} (per-channel DequantizeLinear needs it)")
    model = name_unnamed_nodes(model)
    excluded_nodes(model.graph, config.exclude, context.label)  # names refer to the user's graph: check them there
    if config.preprocess:
        model, failure = preprocess(model, context.workdir)
        if failure:
            notes.append(f"ONNX Runtime pre-processing failed ({failure}); quantized without it")
    else:
        model = onnx.shape_inference.infer_shapes(model)
    model = name_unnamed_nodes(gemm_bias_columns(model))
    spec = _surviving(config.exclude, model.graph)
    kept = {name: "exclude" for name in excluded_nodes(model.graph, spec, context.label)}
    if config.keep_float_sensitive:
        for name, reason in float_sensitive_nodes(model.graph, outputs=True).items():
            kept.setdefault(name, reason)
    return Prepared(model=model, kept_in_float=kept, per_channel=per_channel, notes=notes)


def preprocess(model: onnx.ModelProto, workdir: Path) -> tuple[onnx.ModelProto, str | None]:
    """ONNX Runtime's ``quant_pre_process``; symbolic shape inference fails on some exporters' graphs, so it is
    retried without it. Returns the model and, when pre-processing could not run at all, why."""
    source, target = workdir / "preprocess_in.onnx", workdir / "preprocess_out.onnx"
    large = save_for_tool(model, source)
    failure = None
    for skip_symbolic_shape in (False, True):
        try:
            with quiet_root_logger(), inside(workdir):
                quant_pre_process(
                    str(source), str(target), skip_symbolic_shape=skip_symbolic_shape, save_as_external_data=large
                )
            return adopt_model(target), None
        except Exception as exc:  # noqa: BLE001 - any failure falls back; the reason goes into the report
            failure = f"{type(exc).__name__}: {exception_reason(exc)}"
    return onnx.shape_inference.infer_shapes(model), failure


def calibration_batches(model: onnx.ModelProto, config: QuantizeConfig, context: PassContext) -> CalibrationBatches:
    settings = config.calibration
    specs = input_specs(model)
    fixed = [s.shape[0] for s in specs if not s.batch_is_symbolic and s.shape]
    batch = int(fixed[0]) if fixed else settings.batch_size
    path = context.calibration_data or (context.resolve(settings.data) if settings.data else None)
    if path is not None:
        return CalibrationBatches(lambda: stream_batches(path, specs, batch, settings.samples), str(path), [])
    # The evaluation set is synthetic too when no data was given; it honours --input-shape, so it is reused. Real
    # evaluation data is not calibrated on (it measures the result), but its sizes are the model's: a guessed 32x32
    # stands in for no image a detector serves.
    dataset = (
        context.dataset
        if context.dataset.synthetic
        else synthetic_dataset(
            model, specs, context.seed, context.dataset.sample_shapes(), samples=settings.samples or SYNTHETIC_SAMPLES
        )
    )
    warning = (
        f"{context.label}: no calibration data (calibration.data or --calibration-data): activation ranges come "
        "from seeded synthetic inputs, so accuracy may suffer; calibrate on a few hundred real samples"
    )
    return CalibrationBatches(lambda: dataset.batches(batch), "synthetic", [warning])


def calibrated_quantizer(prepared: Prepared, config: QuantizeConfig, context: PassContext, batches: CalibrationBatches):
    """Calibrate once; return a function that quantizes with those ranges given the nodes to keep in float."""
    op_types = [op for op in config.op_types if op not in config.exclude.op_types] if config.op_types else None
    tensors = tensors_to_calibrate(prepared.model, set(op_types) if op_types else None)
    symmetric = config.activation_symmetric
    calibration = calibrate(
        prepared.model, tensors, batches.open(), collector_for(config.calibration, symmetric), context.workdir
    )
    if calibration.samples == 0:
        raise PassError(context.label, f"the calibration data {batches.source} yielded no samples")
    cache = context.workdir / "calibration.json"
    write_calibration_cache(calibration.ranges, cache)
    source, target = context.workdir / "static_in.onnx", context.workdir / "static_out.onnx"
    large = save_for_tool(prepared.model, source)

    def quantize(excluded: set[str]) -> onnx.ModelProto:
        with quiet_root_logger(), inside(context.workdir):
            quantize_static(
                str(source),
                str(target),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=op_types,
                per_channel=prepared.per_channel,
                reduce_range=config.reduce_range,
                activation_type=QUANT_TYPES[config.activation_type],
                weight_type=QUANT_TYPES[config.weight_type],
                nodes_to_exclude=sorted(excluded),
                use_external_data_format=large,
                calibration_cache_path=str(cache),
                extra_options={
                    "ActivationSymmetric": config.activation_symmetric,
                    "WeightSymmetric": config.weight_symmetric,
                },
            )
        return in_topological_order(adopt_model(target))

    return quantize, calibration


def quantized_op_counts(model: onnx.ModelProto) -> Counter:
    """Op type -> how many nodes run quantized (QLinear*/integer ops, or QDQ nodes)."""
    return Counter(node.op_type for node in quantized_nodes(model))


def quantized_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """QLinear*/integer nodes, and float nodes in QDQ form: fed by DequantizeLinear with their weights dequantized or
    their output quantized (a node kept in float may still read a dequantized input; it does not count)."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    requantized = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    constants = {t.name for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        dequantized = [
            producers[i] for i in node.input if i in producers and producers[i].op_type == "DequantizeLinear"
        ]
        weight_dequantized = any(dq.input[0] in constants for dq in dequantized)
        if node.op_type in QUANTIZED_OP_TYPES or (
            dequantized and (weight_dequantized or requantized & set(node.output))
        ):
            found.append(node)
    return found


def _recurrent_cells(prepared: Prepared) -> set[str]:
    """The nodes whose weights static int8 stores in int8 for float compute (all but those the user excluded):
    LSTM/GRU/RNN cells, whose compute stays float since quantized states would be rounded at every step (the rule
    that keeps them float) but whose weights need not (an LSTM wake-word head, all LSTM, was refused as no smaller
    than fp32, and four Thai segmenters came out at 0.80-0.86 of their size); and the Convs inside If/Loop/Scan
    bodies (and MatMuls there), which ONNX Runtime's quantizer does not reach (Silero VAD holds its whole network in
    two branches; tf2onnx unrolls a Keras LSTM into a Loop)."""
    excluded = {name for name, reason in prepared.kept_in_float.items() if reason == "exclude"}
    nested = nested_weight_nodes(prepared.model, (*CONV_OP_TYPES, "MatMul"))
    return (stored_weight_nodes(prepared.model, RECURRENT_OP_TYPES) | nested) - excluded


def _cells_with_int8_weights(prepared: Prepared, cells: set[str]) -> dict[str, dict]:
    """Report rows of the nodes that compute in float from int8 weights."""
    nested = cells - {node.name for node in prepared.model.graph.node}
    return {
        name: {
            "reason": f"{prepared.kept_in_float.get(name, 'inside a body' if name in nested else 'recurrent cell')}"
            "; weights stored in int8"
        }
        for name in cells
    }


def _ranked_candidate(quantized: onnx.ModelProto) -> Callable[[onnx.NodeProto], bool]:
    """Nodes the full int8 model quantized and that compute something (not merely pass int8 values through):
    keeping one of those in float can win back accuracy."""
    names = {n.name for n in quantized_nodes(quantized) if n.op_type not in PASS_THROUGH_OPS}
    return lambda node: node.name in names


def _surviving(spec: ExcludeSpec, graph: onnx.GraphProto) -> ExcludeSpec:
    """The exclusions that still match after pre-processing (which removes nodes, e.g. BatchNorm folded into Conv)."""
    names = [n.name for n in graph.node]
    op_types = {n.op_type for n in graph.node}
    return ExcludeSpec(
        nodes=[n for n in spec.nodes if n in set(names)],
        patterns=[p for p in spec.patterns if any(re.search(p, n) for n in names)],
        op_types=[o for o in spec.op_types if o in op_types],
    )


def _nothing_quantized(model: onnx.ModelProto, config: QuantizeConfig, kept: dict) -> str:
    op_types = set(config.op_types) if config.op_types else None
    nested = subgraph_nodes(model, op_types)
    message = "quantized 0 ops, so the model would come out unchanged"
    if nested:
        message += f"; {nested} candidate node(s) sit inside If/Loop/Scan subgraphs, which static quantization skips"
    if kept:
        message += f"; {len(kept)} node(s) were kept in float (see exclude and keep_float_sensitive)"
    return message
