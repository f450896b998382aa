"""Quantization passes: ``type: quantize`` with ``mode: dynamic``, ``static`` or ``weight_only``.

Dynamic int8 (int8 weights, activations quantized at run time): MatMuls with constant weights are quantized by optc
(``quantize_matmul_dynamic``, inputs smoothed by ``quantize_smooth``), and so are embedding tables
(``quantize_gather``); other op types asked for go through ONNX Runtime's ``quantize_dynamic``. By default only
MatMul/Gemm/Gather/LSTM are quantized, and Conv and GRU/RNN weights are stored in int8 for float compute
(``quantize_stored_weights``):
a dynamically quantized Conv becomes ConvInteger, which is slower than fp32 Conv on ONNX Runtime's CPU provider.
ONNX Runtime has no integer Gemm, so Gemm nodes with
constant weights are first rewritten to MatMul + Add. Static int8 (activations calibrated ahead of time) lives in
``quantize_static``, weight-only in ``quantize_weights``; all modes share this one config, whose fields of one mode
are refused in another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic
from pydantic import Field, model_validator

from optc.data import input_specs, stream_batches
from optc.errors import OptcError
from optc.model_facts import (
    QUANTIZED_OP_TYPES,
    all_nodes,
    default_opset,
    in_topological_order,
    is_quantized,
    op_histogram,
)
from optc.modelio import adopt_model, tensor_bytes
from optc.passes.calibration import CalibrationConfig
from optc.passes.exclude import ExcludeSpec, excluded_nodes
from optc.passes.fallback import PROBE_SAMPLES, Convert, evaluation_probe
from optc.passes.fuse.rewrites.subgraph_bodies import fold_body_constants
from optc.passes.ort_tools import inside, quiet_root_logger, save_for_tool
from optc.passes.quantize_defaults import with_target_defaults
from optc.passes.quantize_fallback import (
    LITTLE_QUANTIZED_SHARE,
    CostlierConversion,
    all_kept_in_float,
    int8_share,
    largest_readers,
    meet_fidelity_targets,
)
from optc.passes.quantize_gather import embedding_gathers, int8_gathers, quantize_gathers
from optc.passes.quantize_keep_float import float_sensitive_nodes
from optc.passes.quantize_matmul_dynamic import quantize_matmuls, smoothing_facts
from optc.passes.quantize_prepare import (
    constants_to_initializers,
    drop_initializer_inputs,
    gemm_to_matmul,
    name_unnamed_nodes,
    normalize_opsets,
    upgrade_opset,
)
from optc.passes.quantize_smooth import smoothing
from optc.passes.quantize_static import refuse_without_onnx_ops, run_static
from optc.passes.quantize_stored_weights import (
    CONV_OP_TYPES,
    RECURRENT_OP_TYPES,
    int8_stored_weights,
    nested_weight_nodes,
    nothing_to_quantize,
    store_weights_int8,
    stored_weight_nodes,
)
from optc.passes.quantize_weights import WeightOnlyConfig, run_weight_only
from optc.passes.registry import PassConfig, PassContext, PassOutcome, register

DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Conv", "Attention", "LSTM", "GRU", "RNN", "Gather", "EmbedLayerNormalization")
# The fallback ranks nodes by their damage at the outputs, 8 runs per candidate of a model holding float and int8
# weights (all-MiniLM-L6: 38 candidates of 90 MB), while candidates × model bytes stay within this (a proxy
# for those runs' time); beyond it, in one pass.
OUTPUT_RANKING_BYTES = 8 * 2**30
DYNAMIC_QUANTIZE_OPSET = 11  # DynamicQuantizeLinear, which every dynamically quantized MatMul starts with
STORED_CELLS = ("GRU", "RNN")  # no int8 kernel: their weights are stored in int8 for float compute
# The rest of DYNAMIC_OP_TYPES goes through ONNX Runtime's quantize_dynamic.
QUANTIZED_BY_OPTC = ("MatMul", "Gather", *STORED_CELLS)
# One of each per quantized MatMul, Conv, fused Attention (embedding Gathers are counted by their int8 tables).
QUANTIZED_BY_DYNAMIC = ("MatMulInteger", "ConvInteger", "QAttention", "DynamicQuantizeLSTM")

WEIGHT_ONLY_FIELDS = {
    "type",
    "optional",
    "mode",
    "weights",
    "exclude",
    "min_cosine",
    "accuracy_budget",
    "conv_weights",
    "keep_float_sensitive",
}
STATIC_ONLY_FIELDS = (
    "format",
    "activation_type",
    "activation_symmetric",
    "weight_symmetric",
    "preprocess",
    "calibration",
)


class QuantizeConfig(PassConfig):
    type: Literal["quantize"]
    mode: Literal["dynamic", "static", "weight_only"] = Field(
        description="dynamic: int8 weights, activations quantized at run time (no data needed). static: activations "
        "quantized with ranges calibrated on data ahead of time (fastest on CPU, needs calibration data). "
        "weight_only: MatMul weights in 4 or 8 bits, blockwise (LLMs; settings under `weights`)."
    )
    weights: WeightOnlyConfig | None = Field(
        default=None, description="weight_only: bits, block size, algorithm, format (see the README)."
    )
    format: Literal["qdq", "qoperator"] = Field(
        default="qdq",
        description="static: QDQ (Quantize/DequantizeLinear around float ops; portable, ONNX Runtime fuses them) "
        "or QOperator (QLinearConv etc.). Both run at the same speed on ONNX Runtime's CPU provider.",
    )
    activation_type: Literal["uint8", "int8"] | None = Field(
        default=None,
        description="static: activation type. Default from the target: uint8 on x86 (ONNX Runtime's fast u8s8 "
        "kernels; int8 activations run s8s8 kernels, barely faster than fp32), int8 on arm64 and cuda.",
    )
    weight_type: Literal["int8", "uint8"] | None = Field(default=None, description="Default from the target: int8.")
    per_channel: bool | None = Field(
        default=None,
        description="One scale per output channel of each weight (more accurate than per-tensor). Default from the "
        "target: true.",
    )
    reduce_range: bool | None = Field(
        default=None,
        description="7-bit weights, which cannot saturate the 16-bit sums of x86 CPUs without VNNI. Default from "
        "the target: true for x86-avx2, x86-avx512 and portable, false elsewhere.",
    )
    activation_symmetric: bool | None = Field(
        default=None,
        description="static: zero point fixed at the middle. Default from the target: true for cuda (TensorRT), "
        "false elsewhere.",
    )
    weight_symmetric: bool = Field(default=True, description="static: symmetric weight ranges (zero point 0).")
    op_types: list[str] | None = Field(
        default=None,
        description="Op types to quantize. Default for dynamic: MatMul, Gemm, Gather (embedding tables stored in "
        "int8; ConvInteger is slow on CPU), LSTM (DynamicQuantizeLSTM), GRU and RNN (no int8 kernel: weights stored "
        "in int8 for float compute, as Conv weights are); "
        "for static: every op type ONNX Runtime's static quantizer supports.",
    )
    preprocess: bool = Field(
        default=True,
        description="static: run ONNX Runtime's quantization pre-processing first (shape inference, graph "
        "optimization such as folding BatchNormalization into Conv), as its docs advise.",
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    keep_float_sensitive: bool = Field(
        default=True,
        description="Keep in float what int8 cannot represent: the chains feeding Log/Sqrt/Pow/Reciprocal and Div "
        "denominators, and LSTM/GRU/RNN cells with their state readers. weight_only (int8 compute): the MatMuls "
        "feeding Log/Reciprocal and Div denominators through elementwise ops.",
    )
    conv_weights: Literal["int8", "float"] = Field(
        default="int8",
        description="dynamic and weight_only: Conv/ConvTranspose weights (unless op_types asks for ConvInteger) "
        "stored in int8, one scale per output channel, behind a Cast and a Mul that ONNX Runtime folds when it loads "
        "the model: about 4x smaller, computed in float at float speed. float leaves them alone.",
    )
    smooth: bool = Field(
        default=True,
        description="dynamic: SmoothQuant — divide each MatMul input's channels by a scale and multiply the weight "
        "rows by it, so activation outliers stop costing every other channel its precision. The scale is searched "
        "per input on the calibration data (else the evaluation data); inputs where it does not lower the error are "
        "left alone. Off without data: scales fitted to synthetic inputs broke real models.",
    )
    min_cosine: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Keep the most damaged nodes in float, as few as possible, until every output's cosine to the "
        "float model on a probe of 64 samples of the evaluation data (static int8 without it: the calibration data) is "
        "at least this.",
    )
    accuracy_budget: float | None = Field(
        default=None,
        ge=0,
        description="Largest allowed drop of the recipe's metric on the evaluation data (points): the most damaged "
        "nodes are kept in float, as few as possible, until the drop fits. Also a gate on the finished model.",
    )
    exclude: ExcludeSpec = Field(default_factory=ExcludeSpec)

    def refuse_input(self, model: onnx.ModelProto, label: str) -> None:
        refuse_quantized(model, label)
        if self.mode == "static":
            refuse_without_onnx_ops(model, label)

    @model_validator(mode="after")
    def _fields_of_one_mode(self) -> QuantizeConfig:
        if self.mode != "weight_only" and "weights" in self.model_fields_set:
            raise ValueError("weights only applies to mode: weight_only")
        if self.mode == "weight_only":
            misplaced = [name for name in self.model_fields_set if name not in WEIGHT_ONLY_FIELDS]
            if misplaced:
                raise ValueError(f"{', '.join(sorted(misplaced))} do not apply to mode: weight_only")
        if self.mode == "static" and "smooth" in self.model_fields_set:
            raise ValueError("smooth only applies to mode: dynamic")
        if self.mode == "static" and "conv_weights" in self.model_fields_set:
            raise ValueError("conv_weights only applies to modes dynamic and weight_only")
        if self.mode == "dynamic":
            misplaced = [name for name in STATIC_ONLY_FIELDS if name in self.model_fields_set]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)} only apply to mode: static")
            unknown = [op for op in self.op_types or [] if op not in DYNAMIC_OP_TYPES]
            if unknown:
                raise ValueError(
                    f"op_types {unknown} cannot be quantized dynamically "
                    f"(dynamic supports {', '.join(DYNAMIC_OP_TYPES)})"
                )
        return self

    def data_files(self) -> dict[str, Path]:
        if self.mode == "static" and self.calibration.data is not None:
            return {"calibration.data": self.calibration.data}
        if self.mode == "weight_only" and self.weights and self.weights.calibration.data is not None:
            return {"weights.calibration.data": self.weights.calibration.data}
        return {}

    def dynamic_op_types(self) -> list[str]:
        return list(self.op_types) if self.op_types is not None else ["MatMul", "Gemm", "Gather", *RECURRENT_OP_TYPES]

    def reads_lazy_weights(self) -> bool:
        return True


def refuse_quantized(model: onnx.ModelProto, label: str) -> None:
    """Quantizing a quantized model stacks Quantize/Dequantize pairs on integer tensors and breaks it."""
    if is_quantized(model):
        raise OptcError(
            f"{label}: the model is already quantized (it has "
            f"{', '.join(sorted(set(op_histogram(model)) & QUANTIZED_OP_TYPES))}); quantizing it again would "
            "break it",
            hint="start from the float model",
        )


@register(QuantizeConfig)
def run_quantize(model: onnx.ModelProto, config: QuantizeConfig, context: PassContext) -> PassOutcome:
    refuse_quantized(model, context.label)
    if config.mode == "weight_only":
        outcome = run_weight_only(model, config, context)
        outcome.details["target"] = context.target
        return outcome
    config, target = with_target_defaults(config, context.target)
    outcome = run_static(model, config, context) if config.mode == "static" else run_dynamic(model, config, context)
    outcome.details["target"] = target
    return outcome


def run_dynamic(model: onnx.ModelProto, config: QuantizeConfig, context: PassContext) -> PassOutcome:
    excluded = excluded_nodes(model.graph, config.exclude, context.label)
    # weights in Constant nodes (paddle2onnx, tf2onnx) or listed as inputs (IR < 4) would not count as constant
    model, _ = drop_initializer_inputs(fold_body_constants(constants_to_initializers(model)[0]))
    op_types = [op for op in config.dynamic_op_types() if op not in config.exclude.op_types]
    if "Gemm" in op_types:
        # ONNX Runtime's quantizer splits every Gemm into MatMul + Add under new names, which defeats exclusion by
        # name; splitting them here first keeps each Gemm's name on its MatMul.
        model = gemm_to_matmul(model)
        op_types = [op for op in op_types if op != "Gemm"] + (["MatMul"] if "MatMul" not in op_types else [])
    model = _with_dynamic_quantization_ops(name_unnamed_nodes(normalize_opsets(model)), context.label)
    stored = _stored_weights(model, config, op_types)
    weighted = _weighted_nodes(model, op_types) | stored
    if not weighted:
        conv_weights = "float" if "Conv" in op_types else config.conv_weights
        raise nothing_to_quantize(model, context.label, "/".join(op_types), "dynamic int8", conv_weights)
    kept = {name: {"reason": "exclude"} for name in excluded}
    if config.keep_float_sensitive:
        for name, reason in float_sensitive_nodes(model.graph, outputs=False).items():
            kept.setdefault(name, {"reason": reason})
    probe = evaluation_probe(model, context.dataset, context.batch_size)
    smoothed_on = _smoothing_data(context) if config.smooth and "MatMul" in op_types else None
    search = (
        None
        if smoothed_on is None
        else smoothing(
            model,
            weighted - set(kept),
            list(stream_batches(smoothed_on, input_specs(model), 1, PROBE_SAMPLES))
            if smoothed_on == context.calibration_data
            else probe,
            config.weight_type,
            config.per_channel,
            config.reduce_range,
            context.workdir,
        )
    )
    smoothed = search.scales(float_channels=False) if search else {}
    quantize = _dynamic_quantizer(model, config, op_types, stored, smoothed, context)
    full = quantize(set(kept))

    def with_float_channels() -> tuple[Convert, onnx.ModelProto] | None:
        scales = search.scales(float_channels=True)
        if not any(np.isinf(scale).any() for scale in scales.values()):
            return None  # no input gains enough from them: the smoothed conversion again
        converter = _dynamic_quantizer(model, config, op_types, stored, scales, context)
        return converter, converter(set(kept))

    result, details = meet_fidelity_targets(
        model,
        model,
        quantize,
        full,
        kept,
        probe,
        lambda node: node.name in weighted,
        config,
        context,
        context.batch_size,
        rank_at_outputs=len(weighted) * tensor_bytes(model) <= OUTPUT_RANKING_BYTES,
        costlier=CostlierConversion("smoothed", "channels in float", with_float_channels)
        if search is not None and search.has_dominant_channels
        else None,
        unranked=stored - {node.name for node in model.graph.node},
    )
    before, after = op_histogram(model), op_histogram(result)
    quantized = (
        int8_gathers(result)
        + int8_stored_weights(result)
        + sum(after.get(op, 0) - before.get(op, 0) for op in QUANTIZED_BY_DYNAMIC)
    )
    ops = {n.name: n.op_type for n in all_nodes(model.graph)}
    if quantized == 0:
        raise all_kept_in_float(context.label, [ops[name] for name in weighted])
    share, left_by_op = int8_share(model, result)
    return PassOutcome(
        model=result,
        warnings=[_little_quantized(context.label, share, left_by_op, config.conv_weights)]
        if share < LITTLE_QUANTIZED_SHARE
        else [],
        details={
            "ops_quantized": quantized,
            "weights_int8_share": round(share, 4),
            "candidates": len(weighted),
            "op_types": op_types,
            "per_channel": config.per_channel,
            "weight_type": config.weight_type,
            "reduce_range": config.reduce_range,
            "weights_stored_int8": int8_stored_weights(result),
            **smoothing_facts(result),
            "smoothed_on": None if smoothed_on is None else str(smoothed_on),
            "kept_in_float": [
                {"node": name, "op_type": ops.get(name, "?"), **facts} for name, facts in sorted(kept.items())
            ],
            **details,
        },
    )


def _with_dynamic_quantization_ops(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """``model`` at opset 11 or later, where DynamicQuantizeLinear exists: a tf2onnx ResNet-50 at opset 9 came out
    of dynamic int8 as an invalid model (exit 3)."""
    opset = default_opset(model)
    if opset >= DYNAMIC_QUANTIZE_OPSET:
        return model
    upgraded = upgrade_opset(model, DYNAMIC_QUANTIZE_OPSET)
    if upgraded is None:
        raise OptcError(
            f"{label}: the model's opset {opset} cannot be converted to {DYNAMIC_QUANTIZE_OPSET}, the first with "
            "DynamicQuantizeLinear, which dynamic int8 needs",
            hint="the int8 recipe (static int8, with --calibration-data) or int4 (weight-only) need no such op",
        )
    return upgraded


def _little_quantized(label: str, share: float, left_by_op: dict[str, int], conv_weights: str) -> str:
    readers = largest_readers(left_by_op)
    amount = f"{share:.1%}" if share >= 0.001 else "under 0.1%"
    return (
        f"{label}: only {amount} of the model's weights came out int8; the float rest is read by {readers} — the "
        "model will be about as large and as fast as before (kept_in_float lists what the fidelity target kept; "
        "for Conv networks, "
        + ("conv_weights: int8 stores their weights in int8 and " if conv_weights == "float" else "")
        + "the int8 recipe with --calibration-data quantizes the convolutions)"
    )


def _weighted_nodes(model: onnx.ModelProto, op_types: list[str]) -> set[str]:
    """Names of the ``op_types`` nodes with a constant weight (second input; a Gather's table, its first): what
    dynamic int8 can quantize."""
    constants = {t.name for t in model.graph.initializer}
    gathers = embedding_gathers(model) if "Gather" in op_types else set()
    return gathers | {
        n.name
        for n in model.graph.node
        if n.op_type in op_types and n.op_type != "Gather" and len(n.input) > 1 and n.input[1] in constants
    }


def _stored_weights(model: onnx.ModelProto, config: QuantizeConfig, op_types: list[str]) -> set[str]:
    """The nodes whose weights dynamic int8 stores in int8 for float compute: the Convs, unless ``conv_weights`` is
    float or op_types asks for ConvInteger, and the GRU/RNN cells op_types names (ONNX Runtime has no int8 kernel
    for them; the corpus's GRU encoders kept 90 % of their size); and inside If/Loop/Scan bodies, which ONNX
    Runtime's quantizer does not reach, the LSTMs and MatMuls too, and the Convs even where op_types asks for
    ConvInteger."""
    convs = () if config.conv_weights == "float" and "Conv" not in op_types else CONV_OP_TYPES
    cells = tuple(op for op in RECURRENT_OP_TYPES if op in op_types)
    everywhere = (*(() if "Conv" in op_types else convs), *(op for op in cells if op in STORED_CELLS))
    matmuls = ("MatMul",) if "MatMul" in op_types else ()
    return stored_weight_nodes(model, everywhere) | nested_weight_nodes(model, (*convs, *cells, *matmuls))


def _dynamic_quantizer(
    model: onnx.ModelProto,
    config: QuantizeConfig,
    op_types: list[str],
    stored: set[str],
    scales: dict[str, np.ndarray],
    context: PassContext,
) -> Convert:
    """A function from the node names to keep in float to the dynamically quantized model. MatMul (Gemm having
    become MatMul + Add) and Gather are quantized here one weight at a time, MatMul inputs smoothed by ``scales``,
    and the weights of ``stored`` stored in int8; other op types (a fused Attention, Conv as ConvInteger) then go
    through ONNX Runtime's ``quantize_dynamic``, which reads the whole model into memory."""
    matmuls = _weighted_nodes(model, ["MatMul"]) if "MatMul" in op_types else set()
    gathers = _weighted_nodes(model, ["Gather"]) if "Gather" in op_types else set()
    others = [op for op in op_types if op not in QUANTIZED_BY_OPTC]

    def quantize_by_optc(kept: set[str]) -> onnx.ModelProto:
        with_matmuls = quantize_matmuls(
            model, matmuls - kept, config.weight_type, config.per_channel, config.reduce_range, scales
        )
        with_gathers = quantize_gathers(with_matmuls, gathers - kept, config.per_channel)
        return store_weights_int8(with_gathers, stored - kept) if stored - kept else with_gathers

    if not others:
        return quantize_by_optc
    source = context.workdir / "quantize_in.onnx"
    target = context.workdir / "quantize_out.onnx"
    by_onnxruntime = _weighted_nodes(model, others)

    def quantize(kept: set[str]) -> onnx.ModelProto:
        ours = quantize_by_optc(kept)
        if by_onnxruntime <= kept:  # as when ranking converts a MatMul alone: nothing left for ONNX Runtime
            return ours
        large = save_for_tool(ours, source)
        with quiet_root_logger(), inside(context.workdir):
            quantize_dynamic(
                str(source),
                str(target),
                op_types_to_quantize=others,
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
                nodes_to_exclude=sorted(kept),
                use_external_data_format=large,
            )
        return in_topological_order(adopt_model(target))  # as after static int8: If branches' reads count

    return quantize


def _smoothing_data(context: PassContext) -> Path | str | None:
    """What smoothing measures activations on: the calibration data when given, else the evaluation data (the
    probe); None without either. Scales fitted to synthetic inputs amplify weight rows for channels real data uses
    differently: on the corpus, 10 models quantized cleanly without smoothing fell to held-out cosine 0.52-0.95."""
    if context.calibration_data is not None:
        return context.calibration_data
    return None if context.dataset.synthetic else context.dataset.source
