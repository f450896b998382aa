"""``type: quantize`` with ``mode: weight_only``: MatMul weights stored in 4 (or 8) bits, blockwise; activations stay
float, so there is nothing to calibrate for plain round-to-nearest. Conv and recurrent-cell (LSTM/GRU/RNN) weights
go to 8 bits for float compute (``quantize_stored_weights``); where a fidelity target asks, a MatMul is raised to 8
bits and a Conv or a cell to float.

Output formats: ONNX Runtime's ``MatMulNBits`` (its fast CPU and CUDA kernels; ``accuracy_level`` from the target:
4, int8 compute, on CPUs — 4x faster than level 0 at batch 1 on AVX2, see the README), or standard ONNX
``DequantizeLinear`` (opset 21, blockwise int4) before each MatMul, which any runtime reads and ONNX Runtime fuses
back into MatMulNBits when it loads the model.

By default the first and the last quantized layers (in a decoder: the q/k/v projections of layer 0 and the output
projection, lm_head) stay at 8 bits: int4 there is what makes small models repeat themselves. Embedding tables can be
block-quantized too (``GatherBlockQuantized``). ``algorithm: awq`` scales each weight's input channels by the
activation magnitudes seen on calibration data before quantizing (Lin et al. 2023), so the channels that matter keep
more precision; the inverse scale becomes a Mul on the activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from optc.data import input_specs
from optc.errors import OptcError, PassError
from optc.model_facts import all_nodes, reader_counts
from optc.passes.blockwise import Blockwise, by_column_chunks, hqq, matmulnbits_tensors, qdq_tensors, rtn
from optc.passes.calibration import CalibrationConfig
from optc.passes.channel_scaling import divided_input
from optc.passes.exclude import excluded_nodes
from optc.passes.fallback import probe_of
from optc.passes.fuse.rewrites.subgraph_bodies import fold_body_constants
from optc.passes.quantize_awq import awq_scales
from optc.passes.quantize_fallback import all_kept_in_float, meet_fidelity_targets, refuse_no_smaller
from optc.passes.quantize_keep_float import blow_up_readers
from optc.passes.quantize_prepare import (
    constants_to_initializers,
    drop_initializer_inputs,
    gemm_to_matmul,
    name_unnamed_nodes,
    normalize_opsets,
)
from optc.passes.quantize_stored_weights import (
    CONV_OP_TYPES,
    RECURRENT_OP_TYPES,
    int8_stored_weights,
    nested_weight_nodes,
    nothing_to_quantize,
    store_weights_int8,
    stored_weight_nodes,
)
from optc.passes.registry import PassContext, PassOutcome
from optc.tensors import tensor_values

if TYPE_CHECKING:
    from optc.passes.quantize import QuantizeConfig

CONTRIB = "com.microsoft"
QDQ_OPSET = 21  # blockwise DequantizeLinear and int4 types
# accuracy_level by target: 4 (int8 compute) has kernels on every x86 CPU with AVX2 and on arm64; the CUDA kernels
# ignore the attribute.
ACCURACY_LEVEL = {"cuda": None}
DEFAULT_ACCURACY_LEVEL = 4
INT8_COMPUTE = 4  # the accuracy_level at which MatMulNBits quantizes its input


class WeightOnlyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bits: Literal[4, 8] = Field(default=4, description="Bits per weight.")
    block_size: int = Field(
        default=32,
        description="Weights per scale along the input dimension: a power of two from 16 to 256. 32 measured the "
        "most accurate at the same speed at batch 1 (larger blocks are smaller and faster for long prompts).",
    )
    symmetric: bool = Field(default=False, description="No zero points: the middle code is zero.")
    algorithm: Literal["rtn", "hqq", "awq"] = Field(
        default="rtn",
        description="rtn: round to nearest. hqq: zero points fitted per block, no data. awq: input channels "
        "scaled by activation magnitude on calibration data first (data-aware).",
    )
    format: Literal["matmulnbits", "qdq"] = Field(
        default="matmulnbits",
        description="matmulnbits: ONNX Runtime's MatMulNBits. qdq: standard blockwise DequantizeLinear (opset 21) "
        "before each MatMul, portable; ONNX Runtime fuses it back.",
    )
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        default=None,
        description="MatMulNBits compute type (4: int8, 1: fp32). Default from the target: 4 on CPUs, unset for cuda.",
    )
    eight_bit: Literal["first_last", "none"] | list[str] = Field(
        default="first_last",
        description="Layers kept at 8 bits: first_last (the first and the last quantized layers, e.g. an LLM's "
        "lm_head), none, or a list of node names.",
    )
    embeddings: bool = Field(
        default=False,
        description="Also block-quantize embedding tables (Gather of a constant) to GatherBlockQuantized.",
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="For algorithm awq: the data activations are measured on."
    )

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if size < 16 or size > 256 or size & (size - 1):
            raise ValueError(f"must be a power of two from 16 to 256 (ONNX Runtime's kernels), got {size}")
        return size


@dataclass(frozen=True)
class Candidate:
    node: onnx.NodeProto
    weight: str  # initializer name, [K, N]


def run_weight_only(model: onnx.ModelProto, config: QuantizeConfig, context: PassContext) -> PassOutcome:
    settings = config.weights or WeightOnlyConfig()
    if settings.format == "qdq" and settings.embeddings:
        raise OptcError(f"{context.label}.weights.embeddings: only with format: matmulnbits (GatherBlockQuantized)")
    excluded = excluded_nodes(model.graph, config.exclude, context.label)
    # Gemm has no weight-only kernel; as MatMul + Add (under the Gemm's name) its weight can be quantized.
    # Weights listed as graph inputs (IR < 4) are not constants to the quantizer: a face detector was refused for having
    # no Conv with constant weights. Weights as constants, as in run_dynamic:
    model = drop_initializer_inputs(fold_body_constants(constants_to_initializers(model)[0]))[0]
    model = name_unnamed_nodes(normalize_opsets(gemm_to_matmul(model)))
    accuracy_level = settings.accuracy_level
    if accuracy_level is None and settings.format == "matmulnbits":
        accuracy_level = ACCURACY_LEVEL.get(context.target, DEFAULT_ACCURACY_LEVEL)
    candidates = _candidates(model, excluded)
    in_float = (
        _blow_up_readers(model, candidates) if config.keep_float_sensitive and accuracy_level == INT8_COMPUTE else {}
    )
    candidates = [c for c in candidates if c.node.name not in in_float]
    # 8 bits, not 4: 4-bit round-to-nearest Conv weights (blocks of 32) took a DBNet text detector to cosine 0.92
    # and a CAPTCHA detector to 0.68, where 8 bits per channel kept both above 0.997
    convs = set() if config.conv_weights == "float" else stored_weight_nodes(model, CONV_OP_TYPES)
    # An LSTM wake-word head and two EEG detectors kept most of their weights float in their recurrent cells.
    # MatMuls inside bodies (a tf2onnx LSTM unrolled into a Loop) have no MatMulNBits there: int8 for float compute
    nested = nested_weight_nodes(model, ("MatMul",))
    stored = (convs | stored_weight_nodes(model, RECURRENT_OP_TYPES) | nested) - excluded
    if not candidates and not stored:
        raise nothing_to_quantize(model, context.label, "MatMul", "weight-only quantization", config.conv_weights)
    eight_bit = _eight_bit_layers(model, candidates, settings.eight_bit, context.label)
    scales, calibrated_on = {}, None
    scaled = [c for c in candidates if c.node.name not in eight_bit] if settings.bits == 4 else candidates
    if settings.algorithm == "awq" and scaled:
        batches, calibrated_on = _calibration_batches(model, settings, context)
        scales = awq_scales(model, scaled, batches, settings, context.workdir)
    if settings.format == "qdq" and _opset(model) < QDQ_OPSET:
        model = _upgraded(model, context.label)

    def convert(upgraded: set[str]) -> onnx.ModelProto:
        """Upgraded MatMuls go to 8 bits without their AWQ scaling, upgraded stored weights (already at 8) to float."""
        at_8 = set(eight_bit) | upgraded
        kept_scales = _scales_for(scales, candidates, at_8) if settings.bits == 4 else scales
        quantized = quantize_weights(model, candidates, settings, accuracy_level, at_8, kept_scales)
        return store_weights_int8(quantized, stored - upgraded) if stored - upgraded else quantized

    full = convert(set())
    kept = {name: {"reason": reason} for name, reason in eight_bit.items()}
    probe = probe_of(context.dataset.batches(context.dataset.feed_batch_size(input_specs(model), context.batch_size)))
    result, details = meet_fidelity_targets(
        model,
        model,
        convert,
        full,
        kept,
        probe,
        lambda n: n.name in {c.node.name for c in candidates} | stored,
        config,
        context,
        context.batch_size,
        unranked=stored - {node.name for node in model.graph.node},
    )
    if details:  # MatMuls the targets asked for go to 8 bits, not to float (Convs, at 8 already, do)
        for row in details.get("sensitivity", []):
            if row.get("node") not in stored:
                row["kept_at_8_bits"] = row.pop("kept_in_float")
    stored_float = {name: kept.pop(name) for name in stored & set(kept)}
    if not candidates and len(stored_float) == len(stored):
        raise all_kept_in_float(context.label, [n.op_type for n in all_nodes(model.graph) if n.name in stored])
    refuse_no_smaller(
        model,
        result,
        context.label,
        f"{settings.bits}-bit",
        hint="weight-only quantization stores MatMul weights in fewer bits and Conv and LSTM/GRU/RNN weights in "
        "int8; embedding tables only with weights.embeddings: true (the int8-dynamic recipe stores them in int8)",
    )
    four_bit = [c.node.name for c in candidates if c.node.name not in kept] if settings.bits == 4 else []
    return PassOutcome(
        model=result,
        details={
            "weights_quantized": len(candidates),
            "weights_stored_int8": int8_stored_weights(result),
            "bits": settings.bits,
            "four_bit_layers": len(four_bit),
            "block_size": settings.block_size,
            "symmetric": settings.symmetric,
            "algorithm": settings.algorithm,
            "format": settings.format,
            "accuracy_level": accuracy_level,
            "embeddings": settings.embeddings,
            "eight_bit_layers": [{"node": name, **facts} for name, facts in sorted(kept.items())],
            "stored_kept_in_float": [{"node": name, **facts} for name, facts in sorted(stored_float.items())],
            "kept_in_float": [{"node": name, "reason": reason} for name, reason in sorted(in_float.items())],
            "awq_scaled_inputs": len(_scales_for(scales, candidates, set(kept)) if settings.bits == 4 else scales),
            **details,
        },
        calibrated_on=calibrated_on,
    )


def _scales_for(scales: dict[str, np.ndarray], candidates: list[Candidate], at_8: set[str]) -> dict[str, np.ndarray]:
    """The AWQ scales of the inputs that still feed a 4-bit MatMul. Scaling is for 4-bit rounding; where
    ``MatMulNBits`` computes in int8 it also rounds the scaled input, and a channel divided by a small scale can swamp
    its block: a wake-word head stayed at cosine 0.91 with its AWQ-scaled layer raised to 8 bits, 0.9996 unscaled."""
    four_bit_inputs = {c.node.input[0] for c in candidates if c.node.name not in at_8}
    return {name: scale for name, scale in scales.items() if name in four_bit_inputs}


def _candidates(model: onnx.ModelProto, excluded: set[str]) -> list[Candidate]:
    initializers = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.name in excluded:
            continue
        weight = initializers.get(node.input[1])
        if weight is not None and len(weight.dims) == 2 and weight.data_type in FLOAT_TYPES:
            found.append(Candidate(node, weight.name))
    return found


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def _blow_up_readers(model: onnx.ModelProto, candidates: list[Candidate]) -> dict[str, str]:
    """MatMul candidates whose output reaches, through elementwise ops, a ``Log``, ``Reciprocal`` or ``Div``
    denominator, with the reason: at accuracy_level 4 ``MatMulNBits`` quantizes its input to int8 per block, and a
    value rounded to zero there becomes infinite after it (a log-mel front-end's filterbank MatMul, 8 bits or 4,
    went to cosine 0.978 with errors of 59 in log space; in float its Convs' 8-bit weights alone kept 1.0000)."""
    sensitive = blow_up_readers(model.graph)
    return {c.node.name: sensitive[c.node.name] for c in candidates if c.node.name in sensitive}


def _eight_bit_layers(
    model: onnx.ModelProto, candidates: list[Candidate], rule: str | list[str], label: str
) -> dict[str, str]:
    """Node name → why it stays at 8 bits."""
    names = {c.node.name for c in candidates}
    if isinstance(rule, list):
        unknown = [n for n in rule if n not in names]
        if unknown:
            raise OptcError(f"{label}.weights.eight_bit: no quantizable MatMul named {', '.join(map(repr, unknown))}")
        return dict.fromkeys(rule, "eight_bit")
    if rule == "none":
        return {}
    upstream, downstream = _candidate_reach(model, names)
    kept = {name: "first quantized layer (8 bits by default)" for name in names if not upstream[name]}
    kept |= {
        name: "last quantized layer, e.g. the output projection (8 bits by default)"
        for name in names
        if not downstream[name]
    }
    return kept


def _candidate_reach(model: onnx.ModelProto, names: set[str]) -> tuple[dict[str, bool], dict[str, bool]]:
    """For each candidate node: whether another candidate lies upstream of it, and whether one lies downstream."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    feeds_candidate: dict[str, bool] = {}  # tensor → a candidate reads it, directly or further down
    for node in reversed(nodes):  # readers come later in a graph's order, so they are done first
        for out in node.output:
            feeds_candidate[out] = any(
                reader.name in names or any(feeds_candidate.get(o, False) for o in reader.output)
                for reader in consumers.get(out, [])
            )
    from_candidate: dict[str, bool] = {}  # tensor → a candidate computed it or something it depends on
    for node in nodes:
        flag = node.name in names or any(from_candidate.get(i, False) for i in node.input)
        for out in node.output:
            from_candidate[out] = flag
    upstream = {n.name: any(from_candidate.get(i, False) for i in n.input) for n in nodes if n.name in names}
    downstream = {n.name: any(feeds_candidate.get(o, False) for o in n.output) for n in nodes if n.name in names}
    return upstream, downstream


def _calibration_batches(model: onnx.ModelProto, settings: WeightOnlyConfig, context: PassContext):
    from optc.data import stream_batches

    path = context.calibration_data or (
        context.resolve(settings.calibration.data) if settings.calibration.data else None
    )
    specs, samples = input_specs(model), settings.calibration.samples or 64
    if path is not None:
        return list(stream_batches(path, specs, 1, samples)), str(path)
    return list(probe_of(context.dataset.batches(1), samples, least_feeds=1)), "synthetic" if (
        context.dataset.synthetic
    ) else context.dataset.source


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _upgraded(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    try:
        converted = version_converter.convert_version(model, QDQ_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise PassError(
            label,
            f"format qdq needs opset {QDQ_OPSET} (blockwise DequantizeLinear), and this opset {_opset(model)} model "
            f"could not be converted: {exc}",
            hint="use format: matmulnbits",
        ) from exc
    converted.ir_version = max(converted.ir_version, 10)
    return converted


def quantize_weights(
    model: onnx.ModelProto,
    candidates: list[Candidate],
    settings: WeightOnlyConfig,
    accuracy_level: int | None,
    eight_bit: set[str] | dict,
    scales: dict[str, np.ndarray],
) -> onnx.ModelProto:
    """``model`` with every candidate's weight quantized (8 bits for those in ``eight_bit``), a pure rewrite."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    readers = reader_counts(graph)  # a float weight stays while anything else reads it, an If branch included
    replaced: dict[str, list[onnx.NodeProto]] = {}
    new_initializers: list[onnx.TensorProto] = []
    scaled_inputs: dict[str, str] = {}
    for candidate in candidates:
        node = candidate.node
        weight_proto = initializers[candidate.weight]
        dtype = helper.tensor_dtype_to_np_dtype(weight_proto.data_type)
        weight = tensor_values(weight_proto).astype(np.float32, copy=False)
        source = node.input[0]
        if source in scales:
            weight = weight * scales[source][:, None]
            if source not in scaled_inputs:
                scaled_inputs[source] = f"{source}_awq_scaled"
                mul, inverse = divided_input(source, scales[source], dtype, "awq", scaled_inputs[source])
                new_initializers.append(inverse)
                replaced.setdefault(node.name, []).append(mul)
            source = scaled_inputs[source]
        bits = 8 if node.name in eight_bit else settings.bits
        quantized = _quantize(weight, bits, settings)
        del weight  # one float copy of one weight at a time
        nodes, tensors = (
            _matmulnbits(node, source, quantized, dtype, accuracy_level)
            if settings.format == "matmulnbits"
            else _dequantize_then_matmul(node, source, quantized, dtype)
        )
        replaced.setdefault(node.name, []).extend(nodes)
        new_initializers += tensors
        readers[candidate.weight] -= 1
    rebuilt = []
    for node in graph.node:
        rebuilt.extend(replaced.get(node.name, [node]) if node.name in replaced else [node])
    del graph.node[:]
    graph.node.extend(rebuilt)
    kept = [t for t in graph.initializer if readers.get(t.name, 0) > 0 or t.name not in {c.weight for c in candidates}]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)
    if settings.format == "matmulnbits" and not any(o.domain == CONTRIB for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(CONTRIB, 1))
    if settings.embeddings:
        _quantize_embeddings(out, settings)
    return out


def _quantize(weight: np.ndarray, bits: int, settings: WeightOnlyConfig) -> Blockwise:
    if settings.algorithm == "hqq" and not settings.symmetric:
        return by_column_chunks(weight, lambda part: hqq(part, bits, settings.block_size))
    return by_column_chunks(weight, lambda part: rtn(part, bits, settings.block_size, settings.symmetric))


def _matmulnbits(node, source: str, quantized: Blockwise, dtype, accuracy_level):
    packed, scales, zero = matmulnbits_tensors(quantized)
    prefix = f"{node.name}_q{quantized.bits}"
    tensors = [
        numpy_helper.from_array(packed, f"{prefix}.weight"),
        numpy_helper.from_array(scales.astype(dtype).reshape(-1), f"{prefix}.scales"),
    ]
    inputs = [source, tensors[0].name, tensors[1].name]
    if zero is not None:
        tensors.append(numpy_helper.from_array(zero.reshape(-1), f"{prefix}.zero_points"))
        inputs.append(tensors[-1].name)
    attributes = {"K": quantized.k, "N": packed.shape[0], "bits": quantized.bits, "block_size": quantized.block_size}
    if accuracy_level is not None:
        attributes["accuracy_level"] = accuracy_level
    matmul = helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=CONTRIB, **attributes)
    return [matmul], tensors


INT_TYPES = {(4, True): ml_dtypes.int4, (4, False): ml_dtypes.uint4, (8, True): np.int8, (8, False): np.uint8}


def _dequantize_then_matmul(node, source: str, quantized: Blockwise, dtype):
    codes, scales, zero = qdq_tensors(quantized)
    symmetric = zero is None
    code_type = INT_TYPES[(quantized.bits, symmetric)]
    prefix = f"{node.name}_q{quantized.bits}"
    tensors = [
        numpy_helper.from_array(codes.astype(code_type), f"{prefix}.weight"),
        numpy_helper.from_array(scales.astype(dtype), f"{prefix}.scales"),
    ]
    inputs = [tensors[0].name, tensors[1].name]
    if zero is not None:
        tensors.append(numpy_helper.from_array(zero.astype(code_type), f"{prefix}.zero_points"))
        inputs.append(tensors[-1].name)
    dequantized = f"{prefix}.dequantized"
    dq = helper.make_node(
        "DequantizeLinear",
        inputs,
        [dequantized],
        name=f"{prefix}.dequantize",
        axis=0,
        block_size=quantized.block_size,
    )
    matmul = helper.make_node("MatMul", [source, dequantized], list(node.output), name=node.name)
    return [dq, matmul], tensors


def _quantize_embeddings(model: onnx.ModelProto, settings: WeightOnlyConfig) -> None:
    """Gathers from a constant float table [V, H] become GatherBlockQuantized with blocks along H (in place)."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    for position, node in enumerate(list(graph.node)):
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2 or table.data_type not in FLOAT_TYPES:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis != 0 or table.dims[1] % settings.block_size:
            continue
        values = tensor_values(table)
        quantized = by_column_chunks(
            values.astype(np.float32).T, lambda part: rtn(part, 4, settings.block_size, symmetric=False)
        )
        codes = quantized.codes.reshape(quantized.codes.shape[0], -1)[:, : values.shape[1]]
        prefix = f"{node.name}_q4"
        tensors = [
            numpy_helper.from_array(codes.astype(ml_dtypes.uint4), f"{prefix}.table"),
            numpy_helper.from_array(quantized.scales.astype(values.dtype), f"{prefix}.scales"),
            numpy_helper.from_array(quantized.zero_points.astype(ml_dtypes.uint4), f"{prefix}.zero_points"),
        ]
        graph.initializer.extend(tensors)
        gathered = helper.make_node(
            "GatherBlockQuantized",
            [tensors[0].name, node.input[1], tensors[1].name, tensors[2].name],
            list(node.output),
            name=node.name,
            domain=CONTRIB,
            gather_axis=0,
            quantize_axis=1,
            block_size=settings.block_size,
        )
        graph.node.remove(graph.node[position])
        graph.node.insert(position, gathered)
        if sum(name == table.name for n in graph.node for name in n.input) == 0:
            graph.initializer.remove(table)
