"""Quantization passes: ``type: quantize`` with ``mode: dynamic`` or ``mode: static``.

Dynamic int8 (int8 weights, activations quantized at run time) goes through ``onnxruntime.quantization.
quantize_dynamic``. By default only MatMul/Gemm are quantized: a dynamically quantized Conv becomes ConvInteger, which
is slower than fp32 Conv on ONNX Runtime's CPU provider. ONNX Runtime has no integer Gemm, so Gemm nodes with constant
weights are first rewritten to MatMul + Add. Static int8 (activations calibrated ahead of time) lives in
``quantize_static``; both modes share this one config, whose static-only fields are refused in dynamic mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from pydantic import Field, model_validator

from optc.errors import OptcError, PassError
from optc.model_facts import QUANTIZED_OP_TYPES, is_quantized, op_histogram
from optc.passes.calibration import CalibrationConfig
from optc.passes.exclude import ExcludeSpec, excluded_nodes
from optc.passes.ort_tools import quiet_root_logger, save_for_tool
from optc.passes.quantize_defaults import with_target_defaults
from optc.passes.quantize_static import run_static
from optc.passes.registry import PassConfig, PassContext, PassOutcome, register

DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "Conv", "Attention", "LSTM", "Gather", "EmbedLayerNormalization")


STATIC_ONLY_FIELDS = (
    "format",
    "activation_type",
    "activation_symmetric",
    "weight_symmetric",
    "preprocess",
    "calibration",
    "keep_float_sensitive",
    "accuracy_budget",
)


class QuantizeConfig(PassConfig):
    type: Literal["quantize"]
    mode: Literal["dynamic", "static"] = Field(
        description="dynamic: int8 weights, activations quantized at run time (no data needed). static: activations "
        "quantized with ranges calibrated on data ahead of time (fastest on CPU, needs calibration data)."
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
        description="Op types to quantize. Default for dynamic: MatMul, Gemm (ConvInteger is slow on CPU); "
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
        description="static: keep in float what int8 cannot represent: the chains feeding Log/Sqrt/Pow/Reciprocal "
        "and Div denominators, and LSTM/GRU/RNN cells with their state readers.",
    )
    accuracy_budget: float | None = Field(
        default=None,
        ge=0,
        description="static: largest allowed drop of the recipe's metric (points). The most sensitive nodes are "
        "kept in float, as few as possible, until the drop fits.",
    )
    exclude: ExcludeSpec = Field(default_factory=ExcludeSpec)

    @model_validator(mode="after")
    def _fields_of_one_mode(self) -> QuantizeConfig:
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
        static_data = self.mode == "static" and self.calibration.data is not None
        return {"calibration.data": self.calibration.data} if static_data else {}

    def dynamic_op_types(self) -> list[str]:
        return list(self.op_types) if self.op_types is not None else ["MatMul", "Gemm"]


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
    config, target = with_target_defaults(config, context.target)
    outcome = run_static(model, config, context) if config.mode == "static" else run_dynamic(model, config, context)
    outcome.details["target"] = target
    return outcome


def run_dynamic(model: onnx.ModelProto, config: QuantizeConfig, context: PassContext) -> PassOutcome:
    excluded = excluded_nodes(model.graph, config.exclude, context.label)
    op_types = [op for op in config.dynamic_op_types() if op not in config.exclude.op_types]
    if "Gemm" in op_types:
        # ONNX Runtime's quantizer splits every Gemm into MatMul + Add under new names, which defeats exclusion by
        # name; splitting them here first keeps each Gemm's name on its MatMul.
        model = gemm_to_matmul(model)
        op_types = [op for op in op_types if op != "Gemm"] + (["MatMul"] if "MatMul" not in op_types else [])
    before = op_histogram(model)
    source = context.workdir / "quantize_in.onnx"
    target = context.workdir / "quantize_out.onnx"
    large = save_for_tool(model, source)
    with quiet_root_logger():
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=op_types,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
            nodes_to_exclude=sorted(excluded),
            use_external_data_format=large,
            extra_options={"MatMulConstBOnly": True},
        )
    result = onnx.load_model(str(target))
    after = op_histogram(result)
    quantized = sum(after.get(op, 0) - before.get(op, 0) for op in ("MatMulInteger", "ConvInteger", "QAttention"))
    candidates = sum(before.get(op, 0) for op in op_types)
    if quantized == 0:
        raise PassError(
            context.label,
            f"quantized 0 of {candidates} {'/'.join(op_types)} nodes, so the model would come out unchanged",
            hint="dynamic quantization needs constant weights; check op_types and exclude",
        )
    return PassOutcome(
        model=result,
        details={
            "ops_quantized": quantized,
            "candidates": candidates,
            "op_types": op_types,
            "excluded_nodes": sorted(excluded),
            "per_channel": config.per_channel,
            "weight_type": config.weight_type,
            "reduce_range": config.reduce_range,
        },
    )


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(A, B, C)`` with constant B (alpha = beta = 1, transA = 0) to ``MatMul(A, B') + C``.

    The MatMul keeps the Gemm's name, so exclusions by name still apply to it.
    """
    model_out = onnx.ModelProto()
    model_out.CopyFrom(model)
    graph = model_out.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rewritable = (
            node.op_type == "Gemm"
            and node.input[1] in initializers
            and attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and attrs.get("transA", 0) == 0
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in initializers)
        )
        if not rewritable:
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attrs.get("transB", 0):
            weight = np.ascontiguousarray(weight.T)
        weight_name = node.input[1]
        if attrs.get("transB", 0):
            weight_name = f"{node.input[1]}_matmul_{node.name or len(new_nodes)}"
            graph.initializer.append(numpy_helper.from_array(weight, weight_name))
            if consumers[node.input[1]] == 1:
                graph.initializer.remove(initializers[node.input[1]])
        has_bias = len(node.input) >= 3 and node.input[2]
        matmul_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], weight_name], [matmul_out], name=node.name))
        if has_bias:
            new_nodes.append(
                helper.make_node("Add", [matmul_out, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            )
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model_out
