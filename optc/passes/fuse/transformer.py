"""Transformer fusions through ONNX Runtime's transformer optimizer (``onnxruntime.transformers.optimizer``).

It rewrites attention blocks, residual LayerNorms and GELUs into ONNX Runtime contrib ops (Attention,
SkipLayerNormalization, BiasGelu/FastGelu, EmbedLayerNormalization). Its output needs two repairs before the rest of
optc (dynamic quantization in particular) can work on it:

- the contrib domain is used but not always declared in ``opset_import``, so ONNX shape inference refuses the model;
- ONNX shape inference knows no contrib op, so every tensor after the first fused node loses its type, and the
  quantizer stops with "Unable to find data type". ONNX Runtime's symbolic shape inference knows them: it fills
  ``value_info`` for every tensor (the pipeline drops it again before the model is measured and written).

For a CPU target, SkipLayerNormalization and BiasGelu are left unfused: ONNX Runtime's CPU kernels for them are
scalar loops. One SkipLayerNormalization over 128 × 384 floats takes 248 µs on one thread where the Add and
LayerNormalization it replaces take 39 µs (bench/RESULTS.md, transformers section); BiasGelu is slower than the Gelu
that ONNX Runtime fuses at load after a MatMul whose bias it folds. With them fused, bert-int8 ran a MiniLM at 1.97x
fp32 where int8-dynamic reached 2.42-2.47x (AVX-512 VNNI, 1 thread). The optimizer's attention fusion starts from a
SkipLayerNormalization, so on CPU targets attention stays as MatMuls: QAttention measured no faster than them there
(2.44x against 2.45x on paraphrase-MiniLM-L3), and dynamic int8 quantizes them per channel, with smoothing, where
QAttention's weights are per tensor.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.optimizer import optimize_model

from optc.errors import OptcError, PassError
from optc.model_facts import default_opset
from optc.passes.fuse.graph import GraphIndex, attribute, copy_model
from optc.passes.ort_tools import inside, quiet_root_logger

CONTRIB_DOMAIN = "com.microsoft"
# FusionOptions switches turned off for CPU targets (why: the module docstring).
SLOW_ON_CPU = ("enable_skip_layer_norm", "enable_bias_skip_layer_norm", "enable_bias_gelu")
LAYER_NORM_OPSET = 17  # the first ONNX opset with LayerNormalization
HEAD_SPLIT_PERM = [0, 2, 1, 3]  # [batch, seq, heads, head_dim] -> [batch, heads, seq, head_dim]
NOT_FOUND = (
    "transformer: auto found no BERT-like encoder (Softmax attention, LayerNorm and a Reshape splitting hidden "
    "states into heads), so no transformer fusion ran"
)


def detect_encoder(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(num_heads, hidden_size) of a BERT-like encoder, read from its head-splitting Reshape; None if not one.

    An encoder has Softmax attention and LayerNorm (fused or decomposed into ReduceMean) and splits hidden states
    into heads with a Reshape to [.., .., heads, head_dim] followed by a Transpose with perm 0,2,1,3.
    """
    ops = {n.op_type for n in model.graph.node}
    if "Softmax" not in ops or not ops & {"LayerNormalization", "ReduceMean"}:
        return None
    index = GraphIndex(model)
    for node in model.graph.node:
        if node.op_type != "Transpose" or list(attribute(node, "perm", [])) != HEAD_SPLIT_PERM:
            continue
        reshape = index.producers.get(node.input[0])
        if reshape is None or reshape.op_type != "Reshape":
            continue
        heads, head_dim = _head_split(reshape, index)
        if heads and head_dim:
            return heads, heads * head_dim
    return None


def _head_split(reshape: onnx.NodeProto, index: GraphIndex) -> tuple[int | None, int | None]:
    """(heads, head_dim) of a Reshape to [.., .., heads, head_dim]: from a constant target, or — where exporters
    compute the target from Shape/Gather/Concat chains — from the shape inference gives its output."""
    target = index.const(reshape.input[1])
    if target is not None and target.shape == (4,) and target[2] > 0 and target[3] > 0:
        return int(target[2]), int(target[3])
    shape = index.shape(reshape.output[0])
    if shape is not None and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return int(shape[2]), int(shape[3])
    return None, None


def fuse_transformer(
    model: onnx.ModelProto,
    model_type: str,
    num_heads: int | None,
    hidden_size: int | None,
    embed_layer_norm: bool,
    for_cpu: bool,
    label: str,
    workdir: Path,
) -> tuple[onnx.ModelProto, dict[str, int], dict]:
    """The fused model, the count of each fused op type, and the settings used (model type, heads, hidden size,
    fusions left out for the CPU). ``auto`` on a model with no encoder it recognises returns the model as it is,
    with settings that say why (``not_found``): a recipe such as bert-int8 still applies its other passes, as ONNX
    Runtime's optimizer would, where refusing stopped pipelines on every CNN and LSTM they met."""
    detected = False
    if model_type == "auto":
        found = detect_encoder(model)
        if found is None:
            return model, {}, {"model_type": None, "detected": False, "not_found": NOT_FOUND}
        model_type, detected = "bert", True
        num_heads, hidden_size = num_heads or found[0], hidden_size or found[1]
    if model_type == "gpt2" and not (num_heads and hidden_size):
        raise OptcError(f"{label}: transformer: gpt2 needs num_heads and hidden_size")
    # The optimizer logs producer mismatches and per-fusion chatter as warnings, and shape inference writes scratch
    # files into the working directory.
    options = FusionOptions(model_type)
    options.enable_embed_layer_norm = embed_layer_norm
    for switch in SLOW_ON_CPU if for_cpu else ():
        setattr(options, switch, False)
    if default_opset(model) < LAYER_NORM_OPSET:
        # The fused LayerNormalization would be invalid ONNX below opset 17 (a ViT-S at opset 14 was refused); it
        # used to be folded into SkipLayerNormalization, a contrib op. ONNX Runtime fuses the decomposed form at load.
        options.enable_layer_norm = False
    with quiet_root_logger(), inside(workdir):
        # opt_level 0: only the Python fusions; ONNX Runtime's own graph optimizations are the separate ort_level.
        optimizer = optimize_model(  # it edits the ModelProto it is given: hand it a copy
            copy_model(model),
            model_type=model_type,
            num_heads=num_heads or 0,
            hidden_size=hidden_size or 0,
            optimization_options=options,
            opt_level=0,
        )
    fused_ops = {op: n for op, n in optimizer.get_fused_operator_statistics().items() if n}
    result = optimizer.model
    if any(n.domain == CONTRIB_DOMAIN for n in result.graph.node) and not any(
        o.domain == CONTRIB_DOMAIN for o in result.opset_import
    ):
        result.opset_import.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
    try:
        with inside(workdir):
            result = SymbolicShapeInference.infer_shapes(result, auto_merge=True)
    except Exception as exc:  # noqa: BLE001 - without types the model still runs, but cannot be quantized
        raise PassError(label, f"typing the fused model failed: {type(exc).__name__}: {exc}") from exc
    settings = {
        "model_type": model_type,
        "num_heads": num_heads,
        "hidden_size": hidden_size,
        "detected": detected,
        "left_unfused_for_cpu": ["SkipLayerNormalization", "BiasGelu"] if for_cpu else [],
    }
    return result, fused_ops, settings
